package operator

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"k8s.io/apimachinery/pkg/types"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/router"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
)

// httpAdmin reaches a router's admin API over plain HTTP with its bearer
// token (the real one, KarsSandbox → Secret → socket or port-forward, is
// the CLI's, exercised by the kars dev smoke test in test/e2e), counting
// the tail reads.
type httpAdmin struct {
	base, token string
	tails       *atomic.Int32
}

func (a httpAdmin) Get(ctx context.Context, path string, v any) error {
	return a.call(ctx, http.MethodGet, path, v)
}

func (a httpAdmin) Post(ctx context.Context, path string, v any) error {
	return a.call(ctx, http.MethodPost, path, v)
}

func (a httpAdmin) call(ctx context.Context, method, path string, v any) error {
	req, _ := http.NewRequestWithContext(ctx, method, a.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+a.token)
	if strings.HasPrefix(path, "/admin/v1/audit/tail") {
		a.tails.Add(1)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("%d %s", resp.StatusCode, b)
	}
	return json.Unmarshal(b, v)
}

func (httpAdmin) Close() {}

// startRouter runs a real kars-router (router.Serve) for sandbox
// kars-dev/demo: the offline model and Strict egress with an empty allow
// list, its egress listeners off (the explicit proxy on the agent port
// stays). It returns the agent and admin addresses.
func startRouter(t testing.TB, edit ...func(*routerconfig.Config)) (agent, admin string) {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "blocklist.txt"), []byte("blocked.test\n"), 0o600)
	c := routerconfigtest.Offline(t, dir)
	c.Egress = &routerconfig.Egress{Mode: "Strict",
		Blocklist: &routerconfig.Blocklist{Sources: []routerconfig.BlocklistSource{{File: filepath.Join(dir, "blocklist.txt")}}}}
	for _, f := range edit {
		f(c)
	}
	path := routerconfigtest.Write(t, dir, c)
	ctx, cancel := context.WithCancel(context.Background())
	addrs, done := make(chan map[string]string, 1), make(chan error, 1)
	go func() {
		done <- router.Serve(ctx, router.ServeOptions{ConfigPath: path, NoEgressListeners: true,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Ready: func(a map[string]string) { addrs <- a }})
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case a := <-addrs:
		return a["agent"], a["admin"]
	case err := <-done:
		t.Fatal(err)
	}
	return "", ""
}

// connectThrough asks the router's forward proxy for host:port and returns
// the status it answers.
func connectThrough(t testing.TB, agent, hostport string) int {
	t.Helper()
	c, err := net.Dial("tcp", agent)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", hostport, hostport)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// The audit page against a real router: its entries appear, a refused
// destination can be approved, a new call shows up without a key press,
// and an idle log is not read again (only its head is asked for).
func TestAuditTailFromARealRouter(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a router")
	}
	agent, admin := startRouter(t)
	// The blocklist loads asynchronously; until then egress fails closed
	// (503). Then an unlisted host is refused by the default rule.
	deadline := time.Now().Add(10 * time.Second)
	for code := connectThrough(t, agent, "unlisted.test:443"); code != http.StatusForbidden; code = connectThrough(t, agent, "unlisted.test:443") {
		if time.Now().After(deadline) {
			t.Fatalf("CONNECT unlisted.test:443: %d, want 403", code)
		}
		time.Sleep(20 * time.Millisecond)
	}

	var tails atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	msgs := make(chan tea.Msg, 64)
	rec := &recorder{}
	m := New(Options{Renderer: plain(), Actions: rec, Context: ctx,
		Admin: func(_ context.Context, key types.NamespacedName) (Admin, error) {
			if key != (types.NamespacedName{Namespace: "kars-dev", Name: "demo"}) {
				return nil, fmt.Errorf("no router for %s", key)
			}
			return httpAdmin{base: "http://" + admin, token: "admin-token", tails: &tails}, nil
		},
		Send: func(msg tea.Msg) {
			select {
			case msgs <- msg:
			case <-ctx.Done():
			}
		}})
	send(m, tea.WindowSizeMsg{Width: 140, Height: 30})
	send(m, ObjectMsg{Obj: sandbox("kars-dev", "demo", karsv1.SandboxRunning)})
	send(m, SyncedMsg{})
	send(m, key("5"))
	until := func(what string, ok func(string) bool) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for !ok(m.View()) {
			select {
			case msg := <-msgs:
				send(m, msg)
			case <-deadline:
				t.Fatalf("%s: not shown within 20 s:\n%s", what, m.View())
			}
		}
	}
	until("the refusal", func(f string) bool { return strings.Contains(f, "egress:unlisted.test:443") })
	if f := m.View(); !strings.Contains(f, "deny") || !strings.Contains(f, "rule default") {
		t.Fatalf("the refusal's decision and rule:\n%s", f)
	}

	// Pick the refusal and approve it.
	send(m, key("tab"))
	for i, e := range m.auditEntries() {
		if e.Action == "egress:unlisted.test:443" {
			m.auditSel = i
		}
	}
	send(m, key("a"))
	if f := m.View(); !strings.Contains(f, "approve egress to unlisted.test:443 for kars-dev/demo for 24h") {
		t.Fatalf("no prompt:\n%s", f)
	}
	send(m, key("y"))
	if len(rec.calls) != 1 || !strings.HasPrefix(rec.calls[0], "egress kars-dev/demo unlisted.test:443 ") {
		t.Fatalf("calls %v", rec.calls)
	}

	// This router runs no mesh: the trust page says so (its admin API
	// answers 404 for /admin/v1/mesh).
	send(m, key("3"))
	until("the mesh status", func(f string) bool { return strings.Contains(f, "the router runs no mesh endpoint") })
	send(m, key("5"))

	// Idle: three head polls, no tail read.
	before := tails.Load()
	time.Sleep(3*AuditPoll + AuditPoll/2)
	if n := tails.Load() - before; n != 0 {
		t.Fatalf("the tail was read %d times while the log did not change", n)
	}
	// A new entry arrives by itself.
	if code := connectThrough(t, agent, "blocked.test:443"); code != http.StatusForbidden {
		t.Fatalf("CONNECT blocked.test:443: %d", code)
	}
	until("a new entry", func(f string) bool { return strings.Contains(f, "egress:blocked.test:443") })
	if n := tails.Load() - before; n != 1 {
		t.Fatalf("%d tail reads for one new entry", n)
	}
}

// A tool call the router holds for a person's approval shows in the audit
// tail; approving it there (a, then y) posts the decision, as the
// operator's login name, and the held call is answered allow; a second
// held call is denied with r; an entry holding nothing offers nothing.
func TestAuditApprovesHeldCall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a router")
	}
	agent, admin := startRouter(t, func(c *routerconfig.Config) {
		c.Governance = &governance.Policy{Name: "tools", Rules: []governance.Rule{
			{Name: "shell-needs-a-human", Effect: governance.EffectRequireApproval, Actions: []string{"shell:*"}},
		}}
	})
	held := func(action string) <-chan string {
		out := make(chan string, 1)
		go func() {
			resp, err := http.Post("http://"+agent+router.DecidePath, "application/json",
				strings.NewReader(`{"action":"`+action+`","args":{"path":"/tmp/x"},"awaitApproval":true}`))
			if err != nil {
				out <- err.Error()
				return
			}
			defer resp.Body.Close()
			var d router.Decision
			json.NewDecoder(resp.Body).Decode(&d)
			out <- d.Decision
		}()
		return out
	}
	var tails atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	msgs := make(chan tea.Msg, 64)
	m := New(Options{Renderer: plain(), Actions: &recorder{}, Context: ctx, By: "alice",
		Admin: func(context.Context, types.NamespacedName) (Admin, error) {
			return httpAdmin{base: "http://" + admin, token: "admin-token", tails: &tails}, nil
		},
		Send: func(msg tea.Msg) {
			select {
			case msgs <- msg:
			case <-ctx.Done():
			}
		}})
	send(m, tea.WindowSizeMsg{Width: 160, Height: 30})
	send(m, ObjectMsg{Obj: sandbox("kars-dev", "demo", karsv1.SandboxRunning)})
	send(m, SyncedMsg{})
	send(m, key("5"))
	// pick waits for a pending entry of action and selects it.
	pick := func(action string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			for i, e := range m.auditEntries() {
				if _, ok := heldCall(e); ok && e.Action == action {
					send(m, key("tab"))
					m.focus, m.auditSel = paneAudit, i
					return
				}
			}
			select {
			case msg := <-msgs:
				send(m, msg)
			case <-deadline:
				t.Fatalf("no held %s in the tail:\n%s", action, m.View())
			}
		}
	}
	decided := func(got <-chan string, want string) {
		t.Helper()
		// The confirmed action runs as a command; run it as the program would.
		select {
		case d := <-got:
			if d != want {
				t.Fatalf("held call answered %q, want %q", d, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("held call not answered:\n%s", m.View())
		}
	}

	first := held("shell:rm")
	pick("shell:rm")
	cmd := m.key("a")
	if f := m.View(); cmd != nil || !strings.Contains(f, "approve the held call shell:rm (apv-") || !strings.Contains(f, "as alice? [y/N]") {
		t.Fatalf("no prompt:\n%s", f)
	}
	cmd = m.key("y")
	if cmd == nil {
		t.Fatal("confirming ran nothing")
	}
	if msg := cmd().(actionDoneMsg); msg.err != nil {
		t.Fatalf("approve: %v", msg.err)
	}
	decided(first, "allow")

	second := held("shell:ls")
	pick("shell:ls")
	m.key("r")
	if msg := m.key("y")().(actionDoneMsg); msg.err != nil {
		t.Fatalf("deny: %v", msg.err)
	}
	decided(second, "deny")
	// Deciding the same call again: the router answers 409, shown as a failure.
	if msg := func() actionDoneMsg { m.key("r"); return m.key("y")().(actionDoneMsg) }(); msg.err == nil || !strings.Contains(msg.err.Error(), "409") {
		t.Fatalf("second decision: %v", msg.err)
	}
}

// BenchmarkAuditPoll: what an idle audit tail costs per second (one head
// request) against what reading the tail every second would (the same-run
// baseline), on a real router whose log holds 2,000 entries.
func BenchmarkAuditPoll(b *testing.B) {
	agent, admin := startRouter(b)
	for range 2000 {
		connectThrough(b, agent, "unlisted.test:443")
	}
	var tails atomic.Int32
	a := httpAdmin{base: "http://" + admin, token: "admin-token", tails: &tails}
	ctx := context.Background()
	b.Run("head", func(b *testing.B) {
		for b.Loop() {
			var head struct{ Seq uint64 }
			if err := a.Get(ctx, "/admin/v1/audit/head", &head); err != nil || head.Seq < 2000 {
				b.Fatal(err, head.Seq)
			}
		}
	})
	b.Run("tail-baseline", func(b *testing.B) {
		for b.Loop() {
			var es []json.RawMessage
			if err := a.Get(ctx, fmt.Sprintf("/admin/v1/audit/tail?n=%d", AuditLines), &es); err != nil || len(es) != AuditLines {
				b.Fatal(err, len(es))
			}
		}
	})
}
