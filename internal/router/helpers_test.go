package router

import (
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/budget"
	"github.com/kars-io/kars/internal/inference/fakeprovider"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
	"github.com/kars-io/kars/internal/trust"
)

// quiesce waits until no call is in progress: a call's settlement and
// audit entry follow its last byte, so a client can finish first.
func (h *harness) quiesce() {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for h.router.InFlight() != 0 {
		if time.Now().After(deadline) {
			h.t.Fatal("calls still in flight after 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// auditRecords reads back the inference entries the real audit writer
// made durable (skipping the log's own audit:open entry).
func (h *harness) auditRecords() []audit.Entry {
	h.t.Helper()
	h.quiesce()
	all, err := AuditTail(h.cfg.Audit.Dir, 1<<20)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []audit.Entry
	for _, e := range all {
		if e.Action != audit.ActionOpen {
			out = append(out, e)
		}
	}
	return out
}

// harness is a router in front of a fake upstream.
type harness struct {
	t       testing.TB
	fake    *fakeprovider.Server
	cfg     *routerconfig.Config
	router  *Router
	agent   *httptest.Server // the agent API
	sink    *audit.Writer
	trust   *trust.Store
	dir     string
	keyFile string
}

// azureTarget is an Azure OpenAI target at the fake with an API key file.
func (h *harness) azureTarget(model string) routerconfig.Target {
	return routerconfig.Target{Provider: routerconfig.ProviderAzureOpenAI, Model: model, Deployment: model + "-dep",
		Endpoint: h.fake.URL(), Auth: &routerconfig.Auth{Mode: routerconfig.AuthAPIKey, KeyFile: h.keyFile}}
}

func newHarness(t testing.TB, mutate func(h *harness, c *routerconfig.Config), options ...func(*Options)) *harness {
	t.Helper()
	fake := fakeprovider.New()
	fake.Start()
	t.Cleanup(fake.Close)
	dir := t.TempDir()
	h := &harness{t: t, fake: fake, dir: dir}
	h.keyFile = filepath.Join(dir, "upstream-key")
	if err := os.WriteFile(h.keyFile, []byte(fake.APIKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "admin-token"), []byte("admin-secret-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &routerconfig.Config{
		SchemaVersion: routerconfig.SchemaVersion,
		Sandbox:       routerconfig.Sandbox{Namespace: "kars-test", Name: "bot", AgentID: "kars-test/bot"},
		Models:        routerconfig.Models{Primary: h.azureTarget("gpt-4.1")},
		Audit:         routerconfig.Audit{Dir: filepath.Join(dir, "audit")},
		Admin:         routerconfig.Admin{TokenFile: filepath.Join(dir, "admin-token")},
		StateDir:      filepath.Join(dir, "state"),
	}
	if mutate != nil {
		mutate(h, c)
	}
	h.cfg = c
	snap := routerconfigtest.Snapshot(t, c)
	led, err := budget.Open(c.StateDir, budget.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	sink, err := audit.Open(audit.Options{Dir: c.Audit.Dir, Sandbox: c.Sandbox.Name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	h.sink = sink
	ts, err := trust.Open(filepath.Join(dir, "trust.json"), trust.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ts.Close() })
	h.trust = ts
	opts := Options{Audit: h.sink, Ledger: led, Trust: TrustStore{Store: ts},
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))}
	for _, o := range options {
		o(&opts)
	}
	r, err := New(snap, opts)
	if err != nil {
		t.Fatal(err)
	}
	h.router = r
	h.agent = httptest.NewServer(r.AgentHandler())
	t.Cleanup(h.agent.Close)
	return h
}

// ledgerState is the ledger once every call has settled.
func (h *harness) ledgerState() budget.State {
	h.quiesce()
	return h.router.Ledger().State()
}
