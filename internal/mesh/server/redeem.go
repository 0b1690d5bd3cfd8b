package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/kars-io/kars/internal/mesh/federation"
	"github.com/kars-io/kars/internal/pairing"
	"github.com/kars-io/kars/internal/ratelimit"
	"github.com/kars-io/kars/internal/strictjson"
)

// redeemRate bounds redemptions across all callers: a token is 128 bits
// of nonce under a signature, so this is not what stops guessing; it
// bounds the API-server load anyone on the network can cause.
var redeemRate = ratelimit.Limit{Events: 60, Per: time.Minute, Burst: 60}

// redeemHandler serves POST /v1/pairings/redeem with a Redemption body.
// redeem tries this mesh's pairings and then its federation peers'.
// Answers: 200 Result; 400 malformed or bad proof; 403 a token this
// cluster did not sign; 404 no such pairing; 409 already redeemed by
// another identity; 410 expired or revoked; 429 over the rate.
func redeemHandler(redeem func(context.Context, pairing.Redemption) (*pairing.Result, error), log *slog.Logger) http.Handler {
	bucket := ratelimit.NewBucket(redeemRate)
	clock := ratelimit.NewClock()
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		reply := func(status int, v any) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			json.NewEncoder(w).Encode(v)
		}
		fail := func(status int, msg string) { reply(status, map[string]string{"detail": msg}) }
		if ok, retry := bucket.Allow(clock.Now()); !ok {
			w.Header().Set("Retry-After", retry.Round(time.Second).String())
			fail(http.StatusTooManyRequests, "too many redemptions; retry later")
			return
		}
		raw, err := io.ReadAll(http.MaxBytesReader(w, req.Body, 16<<10))
		if err != nil {
			fail(http.StatusBadRequest, "could not read the body: "+err.Error())
			return
		}
		var r pairing.Redemption
		if err := strictjson.Validate(raw); err != nil {
			fail(http.StatusBadRequest, "the body must be strict JSON: "+err.Error())
			return
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			fail(http.StatusBadRequest, "the body must be a redemption {token, did, public_key, timestamp, signature}: "+err.Error())
			return
		}
		res, err := redeem(req.Context(), r)
		switch status := federation.StatusOf(err); status {
		case http.StatusOK:
			log.Info("pairing redeemed", "pairing", res.Pairing, "did", r.DID)
			reply(http.StatusOK, res)
		case http.StatusInternalServerError:
			log.Error("pairing redemption failed", "err", err)
			fail(status, "the redemption could not be recorded; retry")
		default:
			fail(status, err.Error())
		}
	})
}
