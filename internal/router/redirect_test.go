package router

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kars-io/kars/internal/routerconfig"
)

// TestUpstreamRedirectNotFollowed: the router sends a call only to the
// endpoint the config names. An upstream's redirect is relayed to the agent
// as it is; following it would carry the target's key to whatever host the
// Location names.
func TestUpstreamRedirectNotFollowed(t *testing.T) {
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"choices":[]}`)
	}))
	defer other.Close()
	var keys atomic.Value
	redirecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		keys.Store(r.Header.Get("Api-Key"))
		http.Redirect(w, r, other.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	defer redirecting.Close()
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		c.Models.Primary.Endpoint = redirecting.URL
	})
	resp, err := http.Post(h.agent.URL+"/v1/chat/completions", "application/json", strings.NewReader(benchBody))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if k, _ := keys.Load().(string); k != h.fake.APIKey {
		t.Fatalf("the configured endpoint got key %q", k)
	}
	if n := elsewhere.Load(); n != 0 {
		t.Fatalf("the redirect's target was called %d times", n)
	}
	if resp.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("agent got %d, want the upstream's 307 relayed", resp.StatusCode)
	}
}
