package a2ainterop

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/a2a/a2atest"
	"github.com/kars-io/kars/internal/a2a/rpc"
	"github.com/kars-io/kars/internal/controlplane"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/devenv/devlock"
	"github.com/kars-io/kars/internal/inference/fakeprovider"
)

// kars runs the CLI built for the test.
type kars struct {
	t   *testing.T
	bin string
	env []string
}

func (k *kars) run(args ...string) (string, int) {
	k.t.Helper()
	return k.runStdin("", args...)
}

func (k *kars) runStdin(stdin string, args ...string) (string, int) {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(k.bin, "kars"), args...)
	cmd.Env, cmd.Stdin = k.env, strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		k.t.Fatalf("kars %v: %v", args, err)
	}
	k.t.Logf("$ kars %s  (exit %d)\n%s", strings.Join(args, " "), code, out.String())
	return out.String(), code
}

func (k *kars) must(args ...string) string {
	k.t.Helper()
	out, code := k.run(args...)
	if code != 0 {
		k.t.Fatalf("kars %s exited %d:\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// build compiles the kars programs outside /tmp (the agent's /tmp is its
// own tmpfs), readable by the pods' UIDs.
func build(t *testing.T) string {
	t.Helper()
	root, _ := filepath.Abs("../../..")
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	bin, err := os.MkdirTemp(filepath.Join(root, "bin"), "a2a-interop-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(bin) })
	cmd := exec.Command("go", "build", "-o", bin+"/", "./cmd/kars", "./cmd/kars-router", "./cmd/kars-agent")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, d := range []string{bin, filepath.Dir(bin)} {
		os.Chmod(d, 0o755)
	}
	return bin
}

// hostAddr is an address of this host a pod's router reaches.
func hostAddr(t *testing.T) string {
	t.Helper()
	ifs, _ := net.InterfaceAddrs()
	for _, a := range ifs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() && !strings.HasPrefix(ipn.IP.String(), "10.213.") {
			return ipn.IP.String()
		}
	}
	skip(t, "no non-loopback IPv4 address for the fake upstream")
	return ""
}

// slowUpstream holds a request whose prompt carries slowText before the
// fake answers it, so that an A2A task stays in progress long enough to
// be canceled.
type slowUpstream struct{ *fakeprovider.Server }

func (s slowUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(b))
	if bytes.Contains(b, []byte(slowText)) {
		select {
		case <-time.After(20 * time.Second):
		case <-r.Context().Done():
			return
		}
	}
	s.Server.ServeHTTP(w, r)
}

// TestUnderKarsDev is scenario 5 under `kars dev`: a sandbox exposed with
// `kars a2a expose`, the official Python and JavaScript SDKs calling it
// through the local kars-a2a-gateway over A2A 1.0 and 0.3; every refusal
// leaving the model (so the agent) untouched; and a revocation under a
// 50 calls/s load, timed.
func TestUnderKarsDev(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	if os.Geteuid() != 0 {
		skip(t, "kars dev's local sandboxes need root (CI runs as root)")
	}
	dir, _ := filepath.Abs(".")
	for _, c := range clients {
		require(t, c)
	}
	// test/e2e starts kars dev too, and `go test ./...` runs packages in
	// parallel: wait for it (before the cleanup that stops kars dev).
	devlock.Hold(t, 40*time.Minute)
	assets, err := controlplane.AssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	os.Chmod(home, 0o711)
	k := &kars{t: t, bin: build(t)}
	k.env = append(os.Environ(), "KARS_HOME="+home, "KUBECONFIG=", "OPENAI_API_KEY=", "AZURE_OPENAI_ENDPOINT=", "GITHUB_TOKEN=", "OLLAMA_HOST=")
	paths := devenv.Paths{Dir: filepath.Join(home, "dev")}
	t.Cleanup(func() {
		k.run("dev", "down")
		os.RemoveAll(paths.PodRoot())
	})
	if out, code := k.run("dev", "--assets", assets); code != 0 {
		if strings.Contains(out, "address already in use") {
			skip(t, "another kars dev holds the fixed ports: %s", out)
		}
		t.Fatalf("kars dev: %s", out)
	}

	// The sandbox's model is a fake OpenAI-compatible upstream on this
	// host: every turn the agent takes reaches it, so its request count
	// tells whether a refused call reached the agent.
	fake := fakeprovider.New()
	l, err := net.Listen("tcp", net.JoinHostPort(hostAddr(t), "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: slowUpstream{fake}, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	endpoint := "http://" + l.Addr().String() + "/v1"
	k.must("add", "a2a-bot", "--runtime", "kars-agent", "--provider", "OpenAICompatible", "--endpoint", endpoint, "--model", "m1")
	if out, code := k.runStdin(fake.APIKey+"\n", "credentials", "set", "a2a-bot", "--provider", "OpenAICompatible",
		"--endpoint", endpoint, "--model", "m1", "--api-key-stdin"); code != 0 {
		t.Fatalf("credentials set: %s", out)
	}

	// One caller per purpose: refusals cost a caller trust (a rate-limited
	// call 20 points, a bad card or a denied skill 50).
	py, js, gocaller, low, stranger := newCaller(t, "py"), newCaller(t, "js"), newCaller(t, "go"), newCaller(t, "low"), newCaller(t, "stranger")
	load := newCaller(t, "load")
	expose := func(extra ...string) {
		t.Helper()
		args := []string{"a2a", "expose", "a2a-bot", "--skill", "search.web=Web search", "--skill", "summarize.text",
			"--caller", py.id.Thumbprint(t) + "=py-partner", "--caller", js.id.Thumbprint(t) + "=js-partner",
			"--caller", gocaller.id.Thumbprint(t) + "=go-partner", "--caller", low.id.Thumbprint(t) + "=low-trust",
			"--caller", load.id.Thumbprint(t) + "=load",
			"--streaming", "--min-trust", "450", "--body-cap", "4096"}
		k.must(append(args, extra...)...)
	}
	// The patch first as a server-side dry run, then for real.
	expose("--expires", "2h", "--rpm", "120", "--burst", "30", "--dry-run")
	expose("--expires", "2h", "--rpm", "120", "--burst", "30")
	waitExposed(t, k, "a2a-bot", "True/Exposed")
	schema := k.must("a2a", "schema", "a2a-bot")
	m := regexp.MustCompile(`Card key\s+(sha256:[0-9a-f]{64})`).FindStringSubmatch(schema)
	if m == nil {
		t.Fatalf("kars a2a schema shows no card key:\n%s", schema)
	}
	cardKey, url, ca := m[1], devenv.A2AGatewayURL+"/a2a/kars-a2a-bot/a2a-bot", paths.A2AGatewayCert()

	t.Run("sdks", func(t *testing.T) {
		for _, c := range clients {
			caller := map[string]callerFiles{"python": py, "js": js}[c.name]
			for _, v := range []string{"1.0", "0.3"} {
				r := run(t, c, dir, caller, url, ca, cardKey, v, slowText)
				judge(t, c, v, r, func(s string) bool { return s != "" && !strings.HasPrefix(s, "task:") })
				if r.CardName != "a2a-bot" {
					t.Errorf("card name %q", r.CardName)
				}
			}
		}
	})

	gw := gatewayClient(t, ca)
	t.Run("refusals", func(t *testing.T) {
		// The bad cards come from the low-trust caller: each costs it 50
		// points of trust, which the trust check below relies on.
		unsigned := func() []byte {
			var m map[string]any
			json.Unmarshal(a2atest.CallerCard(t, low.id, "low-trust"), &m)
			delete(m, "signatures")
			b, _ := json.Marshal(m)
			return b
		}()
		goCard := a2atest.CallerCard(t, gocaller.id, "go-partner")
		for _, tc := range []struct {
			name   string
			id     *a2atest.Identity
			card   []byte
			body   []byte
			status int
			reason string
		}{
			{"unsigned caller card", low.id, unsigned, sendBody("search.web", 1), 401, "kars_caller_card_invalid"},
			{"wrongly signed caller card", low.id, a2atest.CallerCard(t, stranger.id, "low-trust"), sendBody("search.web", 1), 401, "kars_caller_card_key_mismatch"},
			{"thumbprint not allowed", stranger.id, a2atest.CallerCard(t, stranger.id, "stranger"), sendBody("search.web", 1), 403, "kars_caller_not_allowed"},
			{"skill not advertised", gocaller.id, goCard, sendBody("delete.everything", 1), 200, "kars_skill_not_advertised"},
			{"body over the cap", gocaller.id, goCard, sendBody("search.web", 5000), 413, "kars_body_too_large"},
		} {
			before := fake.Requests.Load()
			status, out := gw(url, tc.id, tc.card, tc.body)
			if status != tc.status || !strings.Contains(out, tc.reason) {
				t.Errorf("%s: %d %s, want %d %s", tc.name, status, out, tc.status, tc.reason)
			}
			if fake.Requests.Load() != before {
				t.Errorf("%s: the agent took a turn", tc.name)
			}
		}
		// Trust: the two bad cards cost the low-trust caller 100 points,
		// below the floor of 450; its good calls are refused now.
		before := fake.Requests.Load()
		if status, out := gw(url, low.id, a2atest.CallerCard(t, low.id, "low-trust"), sendBody("search.web", 1)); status != 403 || !strings.Contains(out, "kars_trust_too_low") {
			t.Errorf("trust: %d %s", status, out)
		}
		if fake.Requests.Load() != before {
			t.Error("trust: the agent took a turn")
		}
		// Rate: 30 at once, then 2 a second.
		var limited bool
		for range 45 {
			if status, _ := gw(url, gocaller.id, goCard, sendBody("search.web", 1)); status == 429 {
				limited = true
				break
			}
		}
		if !limited {
			t.Error("the rate limit never refused")
		}
	})

	t.Run("revocation under load", func(t *testing.T) {
		expose("--expires", "2h", "--rpm", "100000", "--burst", "1000")
		time.Sleep(2 * time.Second) // the raised limit reaches the gateway and the router
		loadCard := a2atest.CallerCard(t, load.id, "load")
		type outcome struct {
			at     time.Time
			status int
		}
		var mu sync.Mutex
		var outcomes []outcome
		stop := make(chan struct{})
		var wg sync.WaitGroup
		tick := time.NewTicker(20 * time.Millisecond) // 50 calls a second
		wg.Go(func() {
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					wg.Go(func() {
						status, _ := gw(url, load.id, loadCard, sendBody("search.web", 1))
						mu.Lock()
						outcomes = append(outcomes, outcome{time.Now(), status})
						mu.Unlock()
					})
				}
			}
		})
		time.Sleep(3 * time.Second)
		revoked := time.Now()
		k.must("a2a", "revoke", "a2a-bot")
		time.Sleep(8 * time.Second)
		close(stop)
		wg.Wait()
		var lastOK time.Time
		var okBefore, okAfter, refusedAfter int
		firstRefused := time.Time{}
		for _, o := range outcomes {
			switch {
			case o.status == 200 && o.at.Before(revoked):
				okBefore++
			case o.status == 200:
				okAfter++
				if o.at.After(lastOK) {
					lastOK = o.at
				}
			case o.at.After(revoked):
				refusedAfter++
				if firstRefused.IsZero() || o.at.Before(firstRefused) {
					firstRefused = o.at
				}
			}
		}
		statuses := map[string]int{}
		for _, o := range outcomes {
			when := "before"
			if o.at.After(revoked) {
				when = "after"
			}
			statuses[fmt.Sprintf("%s:%d", when, o.status)]++
		}
		t.Logf("statuses: %v", statuses)
		if okBefore < 100 || refusedAfter == 0 {
			t.Fatalf("load: %d accepted before the revocation, %d refused after", okBefore, refusedAfter)
		}
		for _, o := range outcomes {
			if o.status == 200 && !firstRefused.IsZero() && o.at.After(firstRefused.Add(time.Second)) {
				t.Errorf("a call was accepted %s after the first refusal", o.at.Sub(firstRefused))
			}
		}
		lastAccepted := time.Duration(0)
		if !lastOK.IsZero() {
			lastAccepted = lastOK.Sub(revoked)
		}
		t.Logf("revocation under %d calls/s: %d accepted before, %d after (the last %s after `kars a2a revoke` started), first refusal %s after it; goal < 5s",
			50, okBefore, okAfter, lastAccepted.Round(time.Millisecond), firstRefused.Sub(revoked).Round(time.Millisecond))
		waitExposed(t, k, "a2a-bot", "") // no longer listed: enabled is false
	})

	t.Run("expired window", func(t *testing.T) {
		expose("--expires", "15s", "--rpm", "600", "--burst", "50")
		waitExposed(t, k, "a2a-bot", "True/Exposed")
		loadCard := a2atest.CallerCard(t, load.id, "load")
		if status, out := gw(url, load.id, loadCard, sendBody("search.web", 1)); status != 200 {
			t.Fatalf("inside the window: %d %s", status, out)
		}
		waitExposed(t, k, "a2a-bot", "False/Expired")
		before := fake.Requests.Load()
		if status, out := gw(url, load.id, loadCard, sendBody("search.web", 1)); status != 404 || !strings.Contains(out, "kars_no_route") {
			t.Errorf("after the window: %d %s", status, out)
		}
		if fake.Requests.Load() != before {
			t.Error("a call after the window reached the agent")
		}
		// 31 days ahead is refused by the CLI before it reaches the API.
		if out, code := k.run("a2a", "expose", "a2a-bot", "--skill", "search.web", "--caller", gocaller.id.Thumbprint(t), "--expires", "31d"); code == 0 || !strings.Contains(out, "capped at 30 days") {
			t.Errorf("31 days: exit %d %s", code, out)
		}
	})
}

// waitExposed waits until `kars a2a list-exposed` shows the sandbox in
// state, or (state "") no longer lists it.
func waitExposed(t *testing.T, k *kars, name, state string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		out, _ := k.run("a2a", "list-exposed")
		listed := false
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "/"+name+" ") {
				listed = true
				if state != "" && strings.Contains(line, state) {
					return
				}
			}
		}
		if state == "" && !listed {
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("%s not %s within 3m", name, state)
}

func sendBody(skill string, n int) []byte {
	return []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"messageId":"m","role":"ROLE_USER","parts":[{"text":%q}],"metadata":{"skill":%q}}}}`,
		strings.Repeat("x", n), skill))
}

// gatewayClient returns a function that posts body to url as the caller
// with identity id and card, over A2A 1.0.
func gatewayClient(t *testing.T, ca string) func(url string, id *a2atest.Identity, cardRaw, body []byte) (int, string) {
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	var mu sync.Mutex
	clients := map[*a2atest.Identity]*http.Client{}
	return func(url string, id *a2atest.Identity, cardRaw, body []byte) (int, string) {
		mu.Lock()
		c, ok := clients[id]
		if !ok {
			c = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64,
				TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{id.TLS}}}}
			clients[id] = c
		}
		mu.Unlock()
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(rpc.HeaderVersion, "1.0")
		req.Header.Set(rpc.HeaderCallerCard, a2atest.CardHeader(cardRaw))
		resp, err := c.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
}
