package router

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/configmapfs"
	"github.com/kars-io/kars/internal/routerconfig"
)

// swapConfigMap writes c as a new ConfigMap generation and swaps the
// ..data symlink the way the kubelet's atomic writer does.
func swapConfigMap(t *testing.T, dir string, gen int, c *routerconfig.Config) {
	t.Helper()
	b, err := routerconfig.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := configmapfs.Publish(dir, gen, map[string][]byte{routerconfig.FileName: b}); err != nil {
		t.Fatal(err)
	}
}

// TestReloadUnderLoad swaps the mounted config 20 times while calls —
// streaming ones that straddle the swaps included — run continuously, and
// requires every call to succeed. The swaps are paced by completed calls,
// not by the clock, so the test does not depend on how fast a loaded
// machine is; bench/router measures the same at a fixed 1,000 rps.
func TestReloadUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		c.Models.Fallbacks = []routerconfig.Target{h.azureTarget("gpt-4.1-mini")}
		c.Budget = &routerconfig.Budget{Daily: 1 << 40}
	})
	cmDir := filepath.Join(h.dir, "configmap")
	if err := os.Mkdir(cmDir, 0o755); err != nil {
		t.Fatal(err)
	}
	swapConfigMap(t, cmDir, 0, h.cfg)
	w, err := routerconfig.NewWatcher(filepath.Join(cmDir, routerconfig.FileName), "")
	if err != nil {
		t.Fatal(err)
	}
	var applied atomic.Int64
	w.OnChange = func(_, cur *routerconfig.Snapshot) {
		if err := h.router.Apply(cur); err != nil {
			t.Errorf("apply: %v", err)
			return
		}
		applied.Add(1)
	}
	w.PollInterval = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)

	const swaps, callsPerSwap, workers = 20, 60, 16
	var done, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	for i := range workers {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				body := `{"model":"gpt-4.1","max_tokens":20,"messages":[{"role":"user","content":"load"}]}`
				if (i+n)%4 == 0 {
					body = `{"model":"gpt-4.1","stream":true,"max_tokens":20,"messages":[{"role":"user","content":"load #fake:slow=1ms"}]}`
				}
				resp, err := client.Post(h.agent.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
				if err != nil {
					failed.Add(1)
					t.Errorf("call failed: %v", err)
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || strings.Contains(string(b), `"error"`) {
					failed.Add(1)
					t.Errorf("call failed: %d %s", resp.StatusCode, b)
				}
				done.Add(1)
			}
		})
	}
	for gen := 1; gen <= swaps; gen++ {
		for target := int64(gen * callsPerSwap); done.Load() < target; {
			time.Sleep(time.Millisecond)
		}
		c := *h.cfg
		c.Models.Primary, c.Models.Fallbacks = h.cfg.Models.Fallbacks[0], []routerconfig.Target{h.cfg.Models.Primary}
		if gen%2 == 0 {
			c.Models = h.cfg.Models
		}
		c.Budget = &routerconfig.Budget{Daily: 1<<40 + int64(gen)} // a distinct digest every time
		swapConfigMap(t, cmDir, gen, &c)
		deadline := time.Now().Add(30 * time.Second)
		for applied.Load() < int64(gen) {
			if time.Now().After(deadline) {
				t.Fatalf("swap %d not applied", gen)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for target := done.Load() + callsPerSwap; done.Load() < target; {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d calls across %d swaps, %d failed", done.Load(), applied.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d calls failed during reloads", failed.Load())
	}
	if applied.Load() != swaps {
		t.Fatalf("applied %d swaps, want %d", applied.Load(), swaps)
	}
	want, _ := routerconfig.Digest(w.Current().Config)
	if got := h.router.Snapshot().Digest; got != want {
		t.Fatalf("router enforces %s, the mounted config is %s", got, want)
	}
}
