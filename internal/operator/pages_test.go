package operator

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kars-io/kars/internal/audit"
)

var botKey = types.NamespacedName{Namespace: "kars-bot", Name: "bot"}

// auditFixture is what a router's audit tail answers, oldest first.
func auditFixture() []audit.Entry {
	e := func(seq uint64, action, decision, rule, reason string, attrs ...string) audit.Entry {
		en := audit.Entry{Seq: seq, Time: t0.Add(time.Duration(seq) * time.Second),
			Record: audit.Record{Sandbox: "kars-bot/bot", Agent: "kars-bot/bot", Action: action, Decision: decision, Rule: rule, Reason: reason}}
		if len(attrs) > 0 {
			en.Attrs = map[string]string{"op": "egress", "step": attrs[0]}
		}
		return en
	}
	return []audit.Entry{
		e(40, "egress:pastebin.com:443", "deny", "blocklist", "listed", "blocklist"),
		e(41, "inference:gpt-4.1", "allow", "", ""),
		e(42, "egress:api.github.com:443", "allow", "allowlist", "", "allowlist"),
		e(43, "tool:read_file", "allow", "read-only", ""),
		e(44, "egress:198.51.100.11:80", "deny", "default", "no rule allows it", "default"),
		e(45, "shell:rm -rf /", "deny", "no-shell", "matched deny rule"),
	}
}

// meshFixture is bot's router's mesh status: one peer admitted, one
// refused for its trust.
func meshFixture() MeshMsg {
	st := MeshStatus{DID: "did:key:z6MkbotExample", Connected: true, Threshold: 700}
	var worker, stranger MeshPeer
	worker.Name, worker.Sandbox, worker.Admitted = "worker", "kars-worker/worker", true
	worker.Trust.Score, worker.Trust.Tier, worker.Trust.MeetsThreshold = 820, "trusted", true
	stranger.Name, stranger.Sandbox, stranger.Refusal = "stranger", "kars-x/stranger", "kars-mesh-trust: score 450 below 700"
	stranger.Trust.Score, stranger.Trust.Tier = 450, "standard"
	st.Peers = []MeshPeer{worker, stranger}
	return MeshMsg{Sandbox: botKey, Status: st}
}

// Each page of the selected sandbox, wide, narrow and tiny: the frame
// fits the terminal and matches its golden.
func TestPageFrames(t *testing.T) {
	for _, c := range []struct {
		name string
		w, h int
		keys []string
	}{
		{"policy", 120, 34, []string{"down", "2"}},
		{"trust", 120, 30, []string{"down", "3"}},
		{"trust-narrow", 60, 24, []string{"down", "3"}},
		{"memory-evals", 120, 30, []string{"down", "4"}},
		{"audit", 120, 30, []string{"down", "5"}},
		{"audit-focus", 120, 30, []string{"down", "5", "tab", "down"}},
		{"policy-narrow", 60, 20, []string{"down", "right"}},
		{"evals-narrow", 60, 16, []string{"down", "left", "left"}},
		{"audit-tiny", 40, 8, []string{"down", "5"}},
		{"analyst-policy", 120, 24, []string{"up", "2"}}, // no tool policy, no MCP server, one inbound edge
	} {
		t.Run(c.name, func(t *testing.T) {
			m := fixture(t, c.w, c.h, &recorder{})
			send(m, key(c.keys[0]))
			send(m, AuditMsg{Sandbox: botKey, Entries: auditFixture(), At: t0})
			send(m, meshFixture())
			for _, k := range c.keys[1:] {
				send(m, key(k))
			}
			frame := m.View()
			checkSize(t, frame, c.w, c.h)
			golden(t, c.name, frame)
		})
	}
}

// Without colour (NO_COLOR, a dumb terminal) no page emits an escape
// sequence, and under a colour profile the refused entries and a drifted
// eval are coloured.
func TestPagesWithoutColour(t *testing.T) {
	for p := range pages {
		m := fixture(t, 120, 30, nil)
		send(m, key("down"))
		send(m, AuditMsg{Sandbox: botKey, Entries: auditFixture(), At: t0})
		send(m, key(fmt.Sprint(int(p)+1)))
		if f := m.View(); strings.Contains(f, "\x1b[") {
			t.Fatalf("page %s: escape sequences under the ASCII profile:\n%q", pageNames[p], f)
		}
	}
	r := lipgloss.NewRenderer(io.Discard)
	r.SetColorProfile(termenv.ANSI256)
	m := fixture(t, 120, 30, nil)
	m.styles = newStyles(r)
	send(m, key("down"))
	send(m, AuditMsg{Sandbox: botKey, Entries: auditFixture(), At: t0})
	send(m, key("5"))
	if f := m.View(); !strings.Contains(f, "\x1b[31m") {
		t.Fatal("refused audit entries are not coloured under a colour profile")
	}
}

// The audit page follows the selection: another sandbox's entries are
// never shown, an error is, and a stale message is dropped.
func TestAuditTailFollowsTheSelection(t *testing.T) {
	m := fixture(t, 120, 30, nil)
	send(m, key("down"))
	send(m, key("5"))
	if f := m.View(); !strings.Contains(f, "reaching the router…") {
		t.Fatalf("before the first message:\n%s", f)
	}
	send(m, AuditMsg{Sandbox: botKey, Entries: auditFixture(), At: t0})
	if f := m.View(); !strings.Contains(f, "egress:198.51.100.11:80") {
		t.Fatalf("entries not shown:\n%s", f)
	}
	send(m, key("up")) // analyst
	if f := m.View(); strings.Contains(f, "egress:198.51.100.11:80") || !strings.Contains(f, "reaching the router…") {
		t.Fatalf("bot's entries shown for analyst:\n%s", f)
	}
	send(m, AuditMsg{Sandbox: botKey, Entries: auditFixture(), At: t0}) // stale
	send(m, AuditMsg{Sandbox: types.NamespacedName{Namespace: "kars-analyst", Name: "analyst"}, Err: fmt.Errorf("sandbox kars-analyst/analyst is not running locally yet"), At: t0})
	send(m, meshFixture()) // bot's, stale
	send(m, key("3"))
	if f := m.View(); strings.Contains(f, "worker") && strings.Contains(f, "admitted") || !strings.Contains(f, "reaching the router…") {
		t.Fatalf("bot's mesh shown for analyst:\n%s", f)
	}
	send(m, MeshMsg{Sandbox: types.NamespacedName{Namespace: "kars-analyst", Name: "analyst"}, Off: true})
	if f := m.View(); !strings.Contains(f, "the router runs no mesh endpoint") {
		t.Fatalf("mesh off:\n%s", f)
	}
	send(m, key("5"))
	if f := m.View(); strings.Contains(f, "egress:198.51.100.11:80") || !strings.Contains(f, "cannot read the audit log: sandbox kars-analyst/analyst is not running locally yet") {
		t.Fatalf("after an error:\n%s", f)
	}
	// New entries keep the selected one selected.
	send(m, key("down"))
	send(m, AuditMsg{Sandbox: botKey, Entries: auditFixture(), At: t0})
	send(m, key("tab"))
	send(m, key("down")) // 44, the refused egress
	more := append(auditFixture(), audit.Entry{Seq: 46, Time: t0.Add(46 * time.Second), Record: audit.Record{Action: "inference:gpt-4.1", Decision: "allow"}})
	send(m, AuditMsg{Sandbox: botKey, Entries: more, At: t0})
	if m.auditEntries()[m.auditSel].Seq != 44 {
		t.Fatalf("selection moved to %d", m.auditEntries()[m.auditSel].Seq)
	}
}

// "a" on a refused egress entry asks, then creates the approval; on any
// other entry it refuses; "n" changes nothing.
func TestApproveRefusedEgress(t *testing.T) {
	rec := &recorder{}
	m := fixture(t, 120, 30, rec)
	send(m, key("down"))
	send(m, AuditMsg{Sandbox: botKey, Entries: auditFixture(), At: t0})
	send(m, key("5"))
	send(m, key("tab")) // 45: shell, refused but not egress
	send(m, key("a"))
	if m.confirm != nil || !strings.Contains(m.View(), "entry 45 is not an egress destination refused for want of a rule") {
		t.Fatalf("offered to approve a shell command:\n%s", m.View())
	}
	send(m, key("down")) // 44
	send(m, key("a"))
	f := m.View()
	if !strings.Contains(f, "approve egress to 198.51.100.11:80 for kars-bot/bot for 24h (creates an EgressApproval)? [y/N]") {
		t.Fatalf("no prompt:\n%s", f)
	}
	golden(t, "confirm-egress", f)
	send(m, key("n"))
	if len(rec.calls) != 0 {
		t.Fatalf("calls after n: %v", rec.calls)
	}
	send(m, key("a"))
	send(m, key("y"))
	want := "egress kars-bot/bot 198.51.100.11:80 approved in kars operator after audit entry 44 (default)"
	if strings.Join(rec.calls, ";") != want || !strings.Contains(m.View(), "done: approve egress to 198.51.100.11:80 for kars-bot/bot") {
		t.Fatalf("calls %q:\n%s", rec.calls, m.View())
	}
	send(m, key("down")) // 43: an allowed tool call
	send(m, key("a"))
	if m.confirm != nil {
		t.Fatal("offered to approve an allowed entry")
	}
	for range 3 {
		send(m, key("down")) // 40: a blocklisted host
	}
	send(m, key("a"))
	if m.confirm != nil || !strings.Contains(m.View(), "entry 40 was refused by the blocklist step: an EgressApproval does not lift that") {
		t.Fatalf("offered to approve a blocklisted host:\n%s", m.View())
	}
	// Leaving the audit page leaves its focus.
	send(m, key("1"))
	if m.focus != paneSandboxes {
		t.Fatalf("focus %v on the activity page", m.focus)
	}
}

func TestRefusedEgress(t *testing.T) {
	for _, c := range []struct {
		action, decision, step string
		host                   string
		port                   int32
	}{
		{"egress:198.51.100.11:80", "deny", "default", "198.51.100.11", 80},
		{"egress:api.github.com:443", "deny", "default", "api.github.com", 443},
		{"egress:[2001:db8::1]:443", "deny", "default", "2001:db8::1", 443},
		{"egress:api.github.com:443", "deny", "governance", "", 0},
		{"egress:api.github.com:443", "deny", "blocklist", "", 0},
		{"egress:api.github.com:443", "deny", "", "", 0},
		{"egress:api.github.com:443", "allow", "default", "", 0},
		{"egress:api.github.com", "deny", "default", "", 0},
		{"egress::443", "deny", "default", "", 0},
		{"egress:a.example:0", "deny", "default", "", 0},
		{"egress:a.example:70000", "deny", "default", "", 0},
		{"egress:a b:80", "deny", "default", "", 0},
		{"tool:egress:x:1", "deny", "default", "", 0},
	} {
		h, p, ok := refusedEgress(audit.Entry{Record: audit.Record{Action: c.action, Decision: c.decision, Attrs: map[string]string{"op": "egress", "step": c.step}}})
		if h != c.host || p != c.port || ok != (c.host != "") {
			t.Errorf("%s %s: %q %d %v", c.action, c.decision, h, p, ok)
		}
	}
}

// FuzzRefusedEgress: an audit entry comes from a router, which a
// compromised sandbox may influence; whatever it says, a host offered for
// approval has no port, path or space in it and a port in range.
func FuzzRefusedEgress(f *testing.F) {
	for _, s := range []string{"egress:198.51.100.11:80", "egress:[::1]:443", "egress:a:b:c:1", "egress:", "egress:x:99999", "tool:x"} {
		f.Add(s, "deny")
	}
	f.Fuzz(func(t *testing.T, action, decision string) {
		h, p, ok := refusedEgress(audit.Entry{Record: audit.Record{Action: action, Decision: decision, Attrs: map[string]string{"op": "egress", "step": "default"}}})
		if !ok {
			return
		}
		if decision == "allow" || h == "" || p < 1 || p > 65535 || strings.ContainsAny(h, " /\\@") || !strings.HasPrefix(action, "egress:") {
			t.Fatalf("%q %q → %q %d", action, decision, h, p)
		}
	})
}
