package server

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kars-io/kars/internal/pairing"
)

// The redemption endpoint answers each outcome with its own status and
// refuses bodies that are not one strict redemption object.
func TestRedeemEndpoint(t *testing.T) {
	var outcome error
	s, err := Open(Options{Dir: t.TempDir(), Redeem: func(context.Context, pairing.Redemption) (*pairing.Result, error) {
		if outcome != nil {
			return nil, outcome
		}
		return &pairing.Result{Pairing: "ns/p"}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	hs := httptest.NewServer(s.RegistryHandler())
	defer hs.Close()
	post := func(body string) int {
		resp, err := http.Post(hs.URL+pairing.RedeemPath, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	const ok = `{"token":"t","did":"d","public_key":"k","timestamp":"ts","signature":"s"}`
	for _, c := range []struct {
		err  error
		want int
	}{
		{nil, 200}, {pairing.ErrMalformed, 400}, {pairing.ErrProof, 400}, {pairing.ErrSignature, 403},
		{pairing.ErrUnknownToken, 404}, {pairing.ErrAlreadyRedeemed, 409}, {pairing.ErrExpired, 410}, {pairing.ErrRevoked, 410},
		{fmt.Errorf("etcd is down"), 500},
	} {
		outcome = c.err
		if got := post(ok); got != c.want {
			t.Errorf("%v: %d, want %d", c.err, got, c.want)
		}
	}
	outcome = nil
	for _, bad := range []string{`{"token":"t","token":"u"}`, `{"token":"t","extra":1}`, `[]`, `{"token":"t"} {}`} {
		if got := post(bad); got != 400 {
			t.Errorf("%s: %d, want 400", bad, got)
		}
	}
}
