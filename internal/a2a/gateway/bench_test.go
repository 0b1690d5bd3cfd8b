package gateway

import (
	"bytes"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/a2a/routes"
	"github.com/kars-io/kars/internal/a2a/rpc"
)

// BenchmarkSendMessage measures what the front edge adds to a call: a
// SendMessage through the gateway (public TLS with the caller's client
// certificate, the caller card's JWS verified, trust, rate, body cap, an
// audit entry) and the router's ingress (pinned mTLS, the card verified
// again, governance, the A2A SDK's task machinery, an audit entry), against
// the same turn posted straight to the agent's contract endpoint, in the
// same run. Connections are kept alive on both paths, as a partner's
// client and the gateway's transport keep them. It reports p50 and p99
// per call; the goal is p50 overhead below 1 ms.
//
// Both audit logs sync each entry to disk before the answer (as kars does
// in production), so the filesystem under the test's temporary directory
// shapes the result.
func BenchmarkSendMessage(b *testing.B) {
	s := newStack(b, 0, routes.RateLimit{RPM: 1 << 30, Burst: 1 << 20})
	direct := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	directBody := []byte(`{"session":"bench","message":"hello"}`)
	via := s.callerClient(s.caller, s.card)
	viaBody := rawSend("search.web", 5)
	run := func(b *testing.B, do func() error) {
		lat := make([]time.Duration, 0, b.N)
		for range 20 { // warm the connections
			if err := do(); err != nil {
				b.Fatal(err)
			}
		}
		b.ResetTimer()
		for range b.N {
			start := time.Now()
			if err := do(); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		b.StopTimer()
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
	b.Run("direct", func(b *testing.B) {
		run(b, func() error {
			resp, err := direct.Post(s.agent.URL+"/v1/chat", "application/json", bytes.NewReader(directBody))
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return nil
		})
	})
	b.Run("gateway+router", func(b *testing.B) {
		run(b, func() error {
			req, _ := http.NewRequest(http.MethodPost, s.URL(), bytes.NewReader(viaBody))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set(rpc.HeaderVersion, "1.0")
			resp, err := via.Do(req)
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("status %d", resp.StatusCode)
			}
			return nil
		})
	})
}
