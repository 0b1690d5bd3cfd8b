package a2ainterop

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2aclient"

	"github.com/kars-io/kars/internal/a2a/a2atest"
	"github.com/kars-io/kars/internal/a2a/outbound"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/budget"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/router"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
)

// TestKarsCallsKars: sandbox A's agent calls a registered agent — here
// sandbox B of another kars, behind its own gateway — through A's router
// (a2a:call:b-agent): A's router presents A's card key as its TLS client
// key and A's signed card, B's gateway and router verify them against B's
// allowedCallers, and B's agent answers. The agent uses the official Go
// SDK pointed at its router; it holds no key.
func TestKarsCallsKars(t *testing.T) {
	dir := t.TempDir()
	aKey := a2atest.NewIdentity(t, "a-card-key")
	b := startLocalStack(t, aKey) // B allows A's card key
	os.MkdirAll(filepath.Join(dir, "state"), 0o700)
	if err := os.WriteFile(filepath.Join(dir, "state", router.A2ACardKeyFile), aKey.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(b.ca)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	c := routerconfigtest.Offline(t, dir)
	c.Sandbox = routerconfigtest.Sandbox("kars-a", "a")
	// A ToolPolicy that says nothing of A2A, and one that forbids the
	// other registered agent.
	c.Governance = &governance.Policy{Name: "tp", Rules: []governance.Rule{
		{Name: "no-c", Effect: governance.EffectDeny, Actions: []string{"a2a:call:c-agent"}},
	}}
	c.A2APeers = []routerconfig.A2APeer{
		{Name: "b-agent", Endpoint: b.url, ProtocolVersion: "1.0", Thumbprint: b.cardKey, Skills: []string{"search.web"}},
		{Name: "c-agent", Endpoint: b.url, ProtocolVersion: "1.0", Thumbprint: b.cardKey},
	}
	snap := routerconfigtest.Snapshot(t, c)
	sink, err := audit.Open(audit.Options{Dir: c.Audit.Dir, Sandbox: "kars-a/a"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	led, err := budget.Open(c.StateDir, budget.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(snap, router.Options{Audit: sink, Ledger: led, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}})
	if err != nil {
		t.Fatal(err)
	}
	mux := r.AgentHandler()
	mux.Handle(outbound.Prefix, r.A2AOutbound(c.StateDir))
	agentAPI := httptest.NewServer(mux)
	t.Cleanup(agentAPI.Close)

	ctx := context.Background()
	client := func(peer string) *a2aclient.Client {
		cl, err := a2aclient.NewFromEndpoints(ctx, []*a2a.AgentInterface{{URL: agentAPI.URL + outbound.Prefix + peer,
			ProtocolBinding: a2a.TransportProtocolJSONRPC, ProtocolVersion: "1.0"}}, a2aclient.WithJSONRPCTransport(http.DefaultClient))
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	send := func(cl *a2aclient.Client, skill string) (a2a.SendMessageResult, error) {
		m := a2a.NewMessage(a2a.MessageRoleUser, a2a.NewTextPart("hello from sandbox a"))
		m.Metadata = map[string]any{"skill": skill}
		return cl.SendMessage(ctx, &a2a.SendMessageRequest{Message: m})
	}
	res, err := send(client("b-agent"), "search.web")
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := res.(*a2a.Message); !ok || m.Parts[0].Text() != "echo: hello from sandbox a" {
		t.Fatalf("reply %+v", res)
	}
	turns := b.turns.Load()
	if _, err := send(client("b-agent"), "summarize.text"); err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Errorf("a skill the registration does not allow: %v", err)
	}
	if _, err := send(client("c-agent"), "search.web"); err == nil || !strings.Contains(err.Error(), "deny") {
		t.Errorf("a call the ToolPolicy denies: %v", err)
	}
	if _, err := send(client("nobody"), "search.web"); err == nil {
		t.Error("an unregistered agent was called")
	}
	if b.turns.Load() != turns {
		t.Error("a refused call reached the other sandbox's agent")
	}
	entries, err := router.AuditTail(c.Audit.Dir, 100)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range entries {
		if e.Attrs["op"] == "a2a-call" {
			got[e.Action+" "+e.Attrs["skill"]] = e.Decision
		}
	}
	for k, want := range map[string]string{
		"a2a:call:b-agent search.web": "allow", "a2a:call:b-agent summarize.text": "deny", "a2a:call:c-agent search.web": "deny", "a2a:call:nobody ": "refused",
	} {
		if got[k] != want {
			t.Errorf("A's audit: %s = %q, want %q (all: %v)", k, got[k], want, got)
		}
	}
	// B's router saw A by name, authenticated by A's card key.
	subjects := map[string]bool{}
	bEntries, _ := router.AuditTail(b.routerAudit, 100)
	for _, e := range bEntries {
		if e.Attrs["op"] == "a2a" {
			subjects[e.Attrs["caller_subject"]+" "+e.Attrs["caller_thumbprint"]] = true
		}
	}
	if !subjects["a "+aKey.Thumbprint(t)] {
		t.Errorf("B's router audited callers %v, want sandbox a by its card key", subjects)
	}
}
