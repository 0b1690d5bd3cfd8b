package router

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig"
)

const benchBody = `{"model":"gpt-4.1","max_tokens":16,"messages":[{"role":"system","content":"You are a benchmark."},{"role":"user","content":"Summarise the kars trust boundary in one sentence."}]}`

func benchCalls(b *testing.B, url, path string, hdr http.Header) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("POST", url+path, strings.NewReader(benchBody))
			for k, v := range hdr {
				req.Header[k] = v
			}
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}

// BenchmarkBareReverseProxy is the floor the router is measured against:
// the standard library's reverse proxy and transport in front of the same
// fake upstream.
func BenchmarkBareReverseProxy(b *testing.B) {
	h := newHarness(b, nil)
	u, _ := url.Parse(h.fake.URL())
	p := httputil.NewSingleHostReverseProxy(u)
	p.Transport = &http.Transport{MaxIdleConnsPerHost: 1024}
	srv := httptest.NewServer(p)
	defer srv.Close()
	benchCalls(b, srv.URL, "/openai/deployments/gpt-4.1-dep/chat/completions?api-version=2024-10-21",
		http.Header{"Api-Key": {h.fake.APIKey}, "Content-Type": {"application/json"}})
}

// BenchmarkRouterChat is the same call through kars-router with a
// governance policy, a budget and the audit log on.
func BenchmarkRouterChat(b *testing.B) {
	h := newHarness(b, func(h *harness, c *routerconfig.Config) {
		c.Budget = &routerconfig.Budget{Daily: 1 << 50}
		c.Governance = &governance.Policy{Name: "bench", Rules: []governance.Rule{
			{Name: "inference", Effect: governance.EffectAllow, Actions: []string{"inference:*:gpt-4.1*"}},
		}}
	})
	benchCalls(b, h.agent.URL, "/v1/chat/completions", http.Header{"Authorization": {"Bearer sk-agent"}, "Content-Type": {"application/json"}})
}
