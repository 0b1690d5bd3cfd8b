package router

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kars-io/kars/internal/inference"
	"github.com/kars-io/kars/internal/routerconfig"
)

// forwardStage is the terminal stage: it calls the candidates in failover
// order — healthy targets first, in InferencePolicy order — moving on when a
// target answers 429 or 5xx or cannot be reached, as long as nothing has been
// sent to the agent yet. It relays the answer through the content-safety
// checks and records the usage.
type forwardStage struct{ r *Router }

func (forwardStage) Name() string { return "forward" }

func (s forwardStage) Serve(c *Call, _ func(*Call)) {
	if c.Route.Op == inference.OpModels {
		serveModels(c)
		return
	}
	// Choosing the target is kept out of this frame, which stays on the
	// stack while a stream is relayed.
	if resp, secret := s.call(c); resp != nil {
		s.relay(c, resp, secret)
	}
}

// call tries the candidates in order and returns the response to relay and
// the credential sent with it, or refuses the call and returns nil.
func (s forwardStage) call(c *Call) (*http.Response, []byte) {
	order := healthOrder(c.Candidates, time.Now())
	var lastErr error
	for i, u := range order {
		last := i == len(order)-1
		resp, secret, err := s.try(c, u)
		if err != nil {
			lastErr = err
			u.health.fail(time.Now(), 0)
			s.r.metrics.upstreamErrors.WithLabelValues(u.ID(), "transport").Inc()
			if c.Context().Err() != nil {
				c.Status = 499 // the agent went away; nothing to answer
				return nil, nil
			}
			continue
		}
		if failover(resp.StatusCode) {
			u.health.fail(time.Now(), retryAfter(resp.Header))
			s.r.metrics.upstreamErrors.WithLabelValues(u.ID(), strconv.Itoa(resp.StatusCode)).Inc()
			if !last {
				io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
				resp.Body.Close()
				continue
			}
		} else {
			u.health.succeed()
		}
		c.Upstream = u.ID()
		return resp, secret
	}
	status := http.StatusBadGateway
	if errors.Is(lastErr, context.DeadlineExceeded) {
		status = http.StatusGatewayTimeout
	}
	msg := "kars-router could not reach any configured model"
	if lastErr != nil {
		msg += ": " + lastErr.Error()
	}
	c.Refuse(&inference.APIError{Status: status, Type: "server_error", Code: "kars_upstream_unavailable", Message: msg, Retryable: true})
	return nil, nil
}

// try sends the call to one target. It returns the credential it sent, to
// scrub it from anything echoed back.
func (s forwardStage) try(c *Call, u *upstream) (*http.Response, []byte, error) {
	c.Attempts++
	body, err := inference.UpstreamBody(c.Route.Op, c.Body, u.BodyModel(c.Route.Op), c.Req.Stream, outputCap(c))
	if err != nil {
		return nil, nil, err
	}
	ctx := c.R.Context()
	if c.Req.Stream {
		ctx = c.streamContext()
	}
	req, err := u.NewRequest(ctx, c.Route.Op, body, c.R.Header)
	if err != nil {
		return nil, nil, err
	}
	t0 := time.Now()
	resp, err := u.rt.RoundTrip(req)
	c.UpstreamLatency = time.Since(t0)
	u.latency.Observe(c.UpstreamLatency.Seconds())
	if err != nil {
		// As http.Client reports it: the method and URL, then the cause.
		return nil, nil, &url.Error{Op: "Post", URL: req.URL.Redacted(), Err: err}
	}
	if resp.Body == nil {
		resp.Body = http.NoBody
	}
	// The request (its body, headers and URL) is not kept for the
	// response's life, which for a stream is minutes.
	resp.Request = nil
	return resp, []byte(sentSecret(req)), nil
}

// failover reports statuses on which another target is worth trying.
func failover(status int) bool {
	return status == http.StatusTooManyRequests || status >= 500
}

// retryAfter reads Retry-After (seconds) or Azure's retry-after-ms.
func retryAfter(h http.Header) time.Duration {
	if v := h.Get("Retry-After-Ms"); v != "" {
		if ms, err := strconv.Atoi(v); err == nil && ms > 0 {
			return time.Duration(ms) * time.Millisecond
		}
	}
	if v := h.Get("Retry-After"); v != "" {
		if s, err := strconv.Atoi(v); err == nil && s > 0 {
			return time.Duration(s) * time.Second
		}
	}
	return 0
}

// healthOrder puts healthy targets first, keeping configured order within
// each group; if all are cooling down they are all still tried.
func healthOrder(us []*upstream, now time.Time) []*upstream {
	if len(us) == 1 {
		return us // one target is tried whatever its health
	}
	out := make([]*upstream, 0, len(us))
	for _, u := range us {
		if u.health.healthy(now) {
			out = append(out, u)
		}
	}
	for _, u := range us {
		if !u.health.healthy(now) {
			out = append(out, u)
		}
	}
	return out
}

// sentSecret returns the credential value on an upstream request.
func sentSecret(req *http.Request) string {
	if req == nil {
		return ""
	}
	for _, h := range []string{"Api-Key", "X-Api-Key"} {
		if v := req.Header.Get(h); v != "" {
			return v
		}
	}
	v, _ := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	return v
}

// serveModels answers /v1/models from the config: the router decides which
// model is called, so it lists the targets the policy allows. The offline
// model says so in its owner.
func serveModels(c *Call) {
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	var list []model
	seen := map[string]bool{}
	for _, u := range c.Candidates {
		t := u.Target
		if seen[t.Model] {
			continue
		}
		seen[t.Model] = true
		owner := "kars:" + strings.ToLower(string(t.Provider))
		if t.Provider == routerconfig.ProviderOffline {
			owner = "kars-offline (no inference credentials; deterministic replies)"
		}
		list = append(list, model{ID: t.Model, Object: "model", Created: c.Gen.snap.LoadedAt.Unix(), OwnedBy: owner})
	}
	var body []byte
	if id := c.Route.ModelID; id != "" {
		for _, m := range list {
			if m.ID == id {
				body, _ = json.Marshal(m)
			}
		}
		if body == nil {
			c.Refuse(&inference.APIError{Status: http.StatusNotFound, Type: "invalid_request_error", Code: "model_not_found",
				Message: "model " + id + " is not configured for this sandbox"})
			return
		}
	} else {
		body, _ = json.Marshal(map[string]any{"object": "list", "data": list})
	}
	c.Status = http.StatusOK
	if c.Commit() != nil {
		c.Refuse(errAuditUnavailable)
		return
	}
	c.written = true
	c.W.Header().Set("Content-Type", "application/json")
	c.W.Write(body)
}
