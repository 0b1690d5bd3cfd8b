package router

import (
	"bytes"
	"github.com/kars-io/kars/internal/inference/fakeprovider"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
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

// cannedTransport answers every request in memory with one recorded
// upstream answer, after reading the request body: the pipeline benchmark
// then measures the router's own work and none of an upstream's.
type cannedTransport struct {
	header http.Header
	body   []byte
}

func (t *cannedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	return &http.Response{StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: t.header.Clone(), Body: io.NopCloser(bytes.NewReader(t.body)), ContentLength: int64(len(t.body)), Request: req}, nil
}

// discardWriter is a ResponseWriter that drops what it is sent.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.status = code }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) Flush()                      {}

// BenchmarkRouterPipeline is the router's own per-call cost, without
// sockets or an upstream: the agent's chat call goes through the router's
// handler (with the bench harness's governance policy, budget, content
// safety floors and audit log — on tmpfs when /dev/shm exists, so that the
// disk's sync is not measured) to an in-memory transport that answers
// with the fake Azure OpenAI upstream's recorded answer. "bare" is the
// standard library's reverse proxy on the same transport, the same-run
// baseline. Besides ns/op and allocs/op it reports cpu-ns/op: the
// process's user+system CPU time per call, which other load on a shared
// machine disturbs far less than wall-clock time.
func BenchmarkRouterPipeline(b *testing.B) {
	fake := fakeprovider.New()
	rec := httptest.NewRecorder()
	sample := httptest.NewRequest("POST", "/openai/deployments/gpt-4.1-dep/chat/completions?api-version=2024-10-21", strings.NewReader(benchBody))
	sample.Header.Set("Api-Key", fake.APIKey)
	sample.Header.Set("Content-Type", "application/json")
	fake.ServeHTTP(rec, sample)
	if rec.Code != http.StatusOK {
		b.Fatalf("fake upstream: %d %s", rec.Code, rec.Body)
	}
	canned := &cannedTransport{header: rec.Result().Header, body: rec.Body.Bytes()}
	run := func(b *testing.B, h http.Handler, path string, hdr http.Header) {
		b.SetParallelism(8) // several calls in flight, as under load: group commit batches
		b.ReportAllocs()
		b.ResetTimer()
		cpu0 := processCPU()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req := httptest.NewRequest("POST", path, strings.NewReader(benchBody))
				for k, v := range hdr {
					req.Header[k] = v
				}
				w := &discardWriter{h: http.Header{}}
				h.ServeHTTP(w, req)
				if w.status != http.StatusOK {
					b.Errorf("status %d", w.status)
					return
				}
			}
		})
		b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
	}
	b.Run("bare", func(b *testing.B) {
		u, _ := url.Parse("http://upstream.invalid")
		p := httputil.NewSingleHostReverseProxy(u)
		p.Transport = canned
		run(b, p, "/openai/deployments/gpt-4.1-dep/chat/completions?api-version=2024-10-21",
			http.Header{"Api-Key": {fake.APIKey}, "Content-Type": {"application/json"}})
	})
	b.Run("kars", func(b *testing.B) {
		h := newHarness(b, func(h *harness, c *routerconfig.Config) {
			c.Budget = &routerconfig.Budget{PerRequest: 100_000, Daily: 1 << 50, Monthly: 1 << 50}
			c.ContentSafety = &routerconfig.ContentSafety{Hate: "Low", SelfHarm: "Low", Sexual: "Low", Violence: "Low"}
			c.Governance = &governance.Policy{Name: "bench", Rules: []governance.Rule{
				{Name: "no-shell", Effect: governance.EffectDeny, Actions: []string{"shell:*"}, Priority: 100},
				{Name: "no-preview-models", Effect: governance.EffectDeny, Actions: []string{"inference:*:*-preview"}, Priority: 50},
				{Name: "inference", Effect: governance.EffectAllow, Actions: []string{"inference:*:gpt-4.1*"}},
			}}
			if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
				dir, err := os.MkdirTemp("/dev/shm", "kars-router-bench-")
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { os.RemoveAll(dir) })
				c.Audit.Dir = dir
			}
		}, func(o *Options) { o.Transport = canned })
		run(b, h.router.AgentHandler(), "/v1/chat/completions",
			http.Header{"Authorization": {"Bearer sk-agent"}, "Content-Type": {"application/json"}})
	})
}
