package operator

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite the golden frames in testdata/")

func TestMain(m *testing.M) {
	// Golden frames show clock times: render them in one zone everywhere.
	time.Local = time.UTC
	os.Exit(m.Run())
}

// t0 is the fixtures' creation time.
var t0 = time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)

func sandbox(ns, name string, phase karsv1.SandboxPhase) *karsv1.KarsSandbox {
	return &karsv1.KarsSandbox{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: metav1.NewTime(t0)},
		Spec: karsv1.KarsSandboxSpec{Runtime: karsv1.RuntimeSpec{Kind: karsv1.RuntimeOpenClaw},
			InferenceRef: karsv1.LocalObjectReference{Name: name + "-inference"}},
		Status: karsv1.KarsSandboxStatus{Phase: phase},
	}
}

func inference(ns, name, model string, daily int64) *karsv1.InferencePolicy {
	ip := &karsv1.InferencePolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	ip.Spec.ModelPreference.Primary = karsv1.ModelTarget{Provider: karsv1.ProviderAzureOpenAI, Model: model}
	if daily > 0 {
		ip.Spec.TokenBudget = &karsv1.TokenBudget{Daily: daily}
	}
	return ip
}

func sre(ns, name string, action karsv1.SREActionType, target, state string) *karsv1.KarsSREAction {
	return &karsv1.KarsSREAction{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: metav1.NewTime(t0)},
		Spec: karsv1.KarsSREActionSpec{Action: action, Target: karsv1.SREActionTarget{Kind: "KarsSandbox", Name: target},
			Reason: "spend doubled in an hour", ProposedBy: "sre-agent", TTLMinutes: 30, Approval: karsv1.SREApproval{State: state}},
	}
}

func event(ns, name, typ, reason, kind, obj, note string, at time.Time) *eventsv1.Event {
	return &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(name), CreationTimestamp: metav1.NewTime(at)},
		EventTime:  metav1.NewMicroTime(at), Type: typ, Reason: reason, Note: note,
		Regarding: corev1.ObjectReference{Kind: kind, Name: obj, Namespace: ns},
	}
}

// recorder is an Actions that records calls (the real one, KubeActions, is
// tested against the API server in live_test.go).
type recorder struct {
	mu    sync.Mutex
	calls []string
	err   error
}

func (r *recorder) SetSuspended(_ context.Context, k types.NamespacedName, s bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf("suspend %s %v", k, s))
	return r.err
}

func (r *recorder) SetModel(_ context.Context, k types.NamespacedName, model string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf("model %s %s", k, model))
	return r.err
}

func (r *recorder) ApproveEgress(_ context.Context, k types.NamespacedName, host string, port int32, reason string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf("egress %s %s:%d %s", k, host, port, reason))
	return r.err
}

func (r *recorder) DecideSRE(_ context.Context, k types.NamespacedName, state string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf("decide %s %s", k, state))
	return r.err
}

func plain() *lipgloss.Renderer {
	r := lipgloss.NewRenderer(io.Discard)
	r.SetColorProfile(termenv.Ascii)
	return r
}

// fixture is a model over two sandboxes, one with a budget, SRE actions,
// an egress approval and events.
func fixture(t *testing.T, w, h int, a Actions) *Model {
	t.Helper()
	// An admin dialer but no Send: the audit tail is shown from the
	// AuditMsgs a test sends, and no goroutine polls anything.
	m := New(Options{Renderer: plain(), Actions: a, Title: "https://127.0.0.1:6443",
		Admin: func(context.Context, types.NamespacedName) (Admin, error) {
			return nil, fmt.Errorf("not dialled in frame tests")
		}})
	send(m, tea.WindowSizeMsg{Width: w, Height: h})
	bot := sandbox("kars-bot", "bot", karsv1.SandboxRunning)
	bot.Status.Model = "gpt-4.1"
	threshold := karsv1.TrustScore(700)
	bot.Spec.Governance = karsv1.GovernanceSpec{ToolPolicyRef: &karsv1.LocalObjectReference{Name: "bot-tools"}, TrustThreshold: &threshold, RegistryMode: "local"}
	bot.Spec.NetworkPolicy = karsv1.SandboxNetworkPolicy{EgressMode: karsv1.EgressStrict, AllowedHosts: []karsv1.Hostname{"api.github.com"},
		AllowlistRef: &karsv1.OCIArtifactReference{Registry: "127.0.0.1:16500", Repository: "policy/egress/bot", Digest: "sha256:5f1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff"}}
	bot.Status.Conditions = []metav1.Condition{{Type: karsv1.ConditionAllowlistVerified, Status: "True", Reason: "Verified"}}
	analyst := sandbox("kars-analyst", "analyst", karsv1.SandboxDegraded)
	analyst.Status.Conditions = []metav1.Condition{{Type: karsv1.ConditionReady, Status: "False", Reason: "RouterUnreachable", Message: "the router did not answer"}}
	ea := &karsv1.EgressApproval{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-bot", Name: "github", CreationTimestamp: metav1.NewTime(t0)},
		Spec:   karsv1.EgressApprovalSpec{Sandbox: "bot", Hosts: []karsv1.Hostname{"api.github.com"}, Reason: "release notes"},
		Status: karsv1.EgressApprovalStatus{Phase: "Active", ExpiresAt: &metav1.Time{Time: t0.Add(24 * time.Hour)}}}
	done := sre("kars-bot", "restart-bot", karsv1.SRERestartSandbox, "bot", "Approved")
	done.Status.Phase = "Succeeded"
	done.CreationTimestamp = metav1.NewTime(t0.Add(-time.Hour))
	for _, o := range []ObjectMsg{
		{Obj: bot}, {Obj: analyst},
		{Obj: inference("kars-bot", "bot-inference", "gpt-4.1", 200_000)},
		{Obj: inference("kars-analyst", "analyst-inference", "gpt-4.1-mini", 0)},
		{Obj: sre("kars-bot", "suspend-bot", karsv1.SRESuspendSandbox, "bot", "Pending")},
		{Obj: done}, {Obj: ea},
		{Obj: &karsv1.KarsPairing{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-bot", Name: "bot-to-worker"},
			Spec: karsv1.KarsPairingSpec{SandboxRef: &karsv1.LocalObjectReference{Name: "bot"}, PeerSandbox: "kars-worker/worker",
				Capabilities: []karsv1.PairingCapability{karsv1.CapabilityOffload}, ExpiresAt: metav1.NewTime(t0.Add(72 * time.Hour))},
			Status: karsv1.KarsPairingStatus{Phase: "Redeemed"}}},
		{Obj: event("kars-bot", "e1", "Normal", "SREActionExecuted", "KarsSREAction", "restart-bot", "RestartSandbox KarsSandbox/bot: pod restarted", t0.Add(-50*time.Minute))},
		{Obj: event("kars-bot", "e2", "Warning", "ApplyFailed", "KarsSandbox", "bot", "quota exceeded", t0.Add(-10*time.Minute))},
		{Obj: event("kars-bot", "e3", "Normal", "Pulled", "Pod", "bot-abc", "not a kars object", t0)},
		{Obj: &karsv1.ToolPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-bot", Name: "bot-tools"},
			Spec: karsv1.ToolPolicySpec{Rules: []karsv1.ToolRule{
				{Name: "read-only", Effect: karsv1.EffectAllow, Priority: 10, Actions: []string{"tool:read_*", "mcp:docs.*"}},
				{Name: "no-shell", Effect: karsv1.EffectDeny, Priority: 100, Actions: []string{"shell:*"}},
				{Name: "pay", Effect: karsv1.EffectRequireApproval, Actions: []string{"tool:pay"}}},
				Approval: &karsv1.ToolApproval{Mode: karsv1.ApprovalAboveThreshold}, RateLimit: &karsv1.ToolRateLimit{RequestsPerMinute: 120}},
			Status: karsv1.PolicyStatus{Phase: "Ready"}}},
		{Obj: &karsv1.McpServer{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-bot", Name: "docs"},
			Spec:   karsv1.McpServerSpec{URL: "https://mcp.example.com/mcp", Sandboxes: []string{"bot"}, Tools: []string{"search", "fetch"}},
			Status: karsv1.McpServerStatus{Phase: "Ready", Endpoint: "https://mcp.example.com/mcp"}}},
		{Obj: &karsv1.McpServer{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-bot", Name: "other"}, Spec: karsv1.McpServerSpec{Sandboxes: []string{"not-bot"}}}},
		{Obj: &karsv1.KarsMemory{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-bot", Name: "bot-memory"},
			Spec: karsv1.KarsMemorySpec{SandboxRef: karsv1.LocalObjectReference{Name: "bot"}, Scope: "user", RetentionDays: 90,
				Foundry: karsv1.FoundryMemoryStore{Endpoint: "https://contoso.services.ai.azure.com/api/projects/agents", StoreName: "bot-memories"}},
			Status: karsv1.KarsMemoryStatus{Phase: "Failed", CommonStatus: karsv1.CommonStatus{Conditions: []metav1.Condition{
				{Type: karsv1.ConditionReady, Status: "False", Reason: "AuthMisconfigured", Message: "the store answered 401"}}}}}},
		{Obj: &karsv1.KarsEval{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-bot", Name: "banned-tools"},
			Spec: karsv1.KarsEvalSpec{SandboxRef: karsv1.LocalObjectReference{Name: "bot"}, PassThreshold: "0.9"},
			Status: karsv1.KarsEvalStatus{Phase: "Passed", Score: "0.90", PreviousScore: "1.00", CasesRun: 10, CasesPassed: 9,
				LastRunTime: &metav1.Time{Time: t0.Add(-2 * time.Hour)}, NextRunTime: &metav1.Time{Time: t0.Add(4 * time.Hour)},
				CommonStatus: karsv1.CommonStatus{Conditions: []metav1.Condition{
					{Type: "Drifted", Status: "True", Reason: "ScoreDropped", Message: "0.90 < previous 1.00"}}}}}},
		{Obj: &karsv1.KarsEval{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-bot", Name: "jailbreak"},
			Spec:   karsv1.KarsEvalSpec{SandboxRef: karsv1.LocalObjectReference{Name: "bot"}, PassThreshold: "0.2"},
			Status: karsv1.KarsEvalStatus{Phase: "Passed", Score: "0.25", CasesRun: 8, CasesPassed: 2}}},
		{Obj: &karsv1.TrustGraph{ObjectMeta: metav1.ObjectMeta{Name: "contoso"},
			Spec: karsv1.TrustGraphSpec{TrustDomain: "contoso.com", Edges: []karsv1.TrustEdge{
				{From: "kars-bot/bot", To: "kars-worker/worker", Score: 800, ExpiresAt: &metav1.Time{Time: t0.Add(48 * time.Hour)}},
				{From: "kars-analyst/analyst", To: "kars-bot/bot", Score: 650},
				{From: "kars-analyst/analyst", To: "kars-worker/worker", Score: 900}}},
			Status: karsv1.TrustGraphStatus{VerifiedEdges: 3}}},
	} {
		send(m, o)
	}
	send(m, SyncedMsg{})
	return m
}

// send delivers msg and runs the command it returns (an action), feeding
// its result back, as the bubbletea runtime does.
func send(m *Model, msg tea.Msg) {
	_, cmd := m.Update(msg)
	if cmd == nil {
		return
	}
	if out := cmd(); out != nil {
		if _, ok := out.(tea.QuitMsg); !ok {
			m.Update(out)
		}
	}
}

func key(s string) tea.KeyMsg {
	switch s {
	case "tab":
		return tea.KeyMsg{Type: tea.KeyTab}
	case "up":
		return tea.KeyMsg{Type: tea.KeyUp}
	case "down":
		return tea.KeyMsg{Type: tea.KeyDown}
	}
	return tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("frame %s differs from %s:\n--- got ---\n%s\n--- want ---\n%s", name, path, got, want)
	}
}

// checkSize asserts a frame fits the terminal: never more lines or wider
// lines than it has.
func checkSize(t *testing.T, frame string, w, h int) {
	t.Helper()
	lines := strings.Split(frame, "\n")
	if len(lines) != h {
		t.Errorf("%d lines, terminal has %d", len(lines), h)
	}
	for i, l := range lines {
		if n := lipgloss.Width(l); n > w {
			t.Errorf("line %d is %d wide, terminal has %d: %q", i, n, w, l)
		}
	}
}

func TestFrames(t *testing.T) {
	for _, c := range []struct {
		name string
		w, h int
		keys []string
	}{
		{"first-sandbox", 120, 30, []string{"up"}},
		{"second-sandbox", 120, 30, []string{"down"}},
		{"sre-focus", 120, 30, []string{"down", "tab"}},
		{"narrow", 60, 16, []string{"down"}},
		{"tiny", 30, 6, []string{"down"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := fixture(t, c.w, c.h, &recorder{})
			for _, k := range c.keys {
				send(m, key(k))
			}
			frame := m.View()
			checkSize(t, frame, c.w, c.h)
			golden(t, c.name, frame)
		})
	}
}

func TestLoadingAndEmpty(t *testing.T) {
	m := New(Options{Renderer: plain()})
	send(m, tea.WindowSizeMsg{Width: 100, Height: 8})
	if f := m.View(); !strings.Contains(f, "loading…") || strings.Contains(f, "no sandboxes yet") {
		t.Fatalf("before sync:\n%s", f)
	}
	send(m, SyncedMsg{Unwatched: map[string]string{"Event": "you may not list Event"}})
	f := m.View()
	checkSize(t, f, 100, 8)
	golden(t, "empty", f)
	if !strings.Contains(f, "(read-only)") {
		t.Fatal("a model without actions must say it is read-only")
	}
	// Keys that act do nothing without actions.
	send(m, key("s"))
	if m.confirm != nil {
		t.Fatal("asked to confirm with no sandbox and no actions")
	}
}

func TestColourOnlyWithAColourProfile(t *testing.T) {
	r := lipgloss.NewRenderer(io.Discard)
	r.SetColorProfile(termenv.ANSI256)
	m := New(Options{Renderer: r})
	send(m, SyncedMsg{})
	send(m, ObjectMsg{Obj: sandbox("ns", "bot", karsv1.SandboxFailed)})
	if !strings.Contains(m.View(), "\x1b[") {
		t.Fatal("no escape sequences under a colour profile")
	}
	if strings.Contains(fixture(t, 80, 24, nil).View(), "\x1b[") {
		t.Fatal("escape sequences under the ASCII profile (NO_COLOR)")
	}
}

// Every action asks first; "n" (or any key but y) changes nothing.
func TestActionsAreConfirmed(t *testing.T) {
	rec := &recorder{}
	m := fixture(t, 120, 30, rec)
	// The list is sorted: kars-analyst/analyst, then kars-bot/bot.
	send(m, key("down"))
	send(m, key("s"))
	if f := m.View(); !strings.Contains(f, "suspend sandbox kars-bot/bot? [y/N]") {
		t.Fatalf("no confirmation prompt:\n%s", f)
	}
	golden(t, "confirm-suspend", m.View())
	send(m, key("n"))
	if len(rec.calls) != 0 || !strings.Contains(m.View(), "cancelled: suspend kars-bot/bot") {
		t.Fatalf("calls %v after n:\n%s", rec.calls, m.View())
	}
	send(m, key("s"))
	send(m, key("y"))
	if strings.Join(rec.calls, ";") != "suspend kars-bot/bot true" || !strings.Contains(m.View(), "done: suspend kars-bot/bot") {
		t.Fatalf("calls %v:\n%s", rec.calls, m.View())
	}

	// A suspended sandbox offers resume.
	bot := m.State().Sandbox(types.NamespacedName{Namespace: "kars-bot", Name: "bot"}).DeepCopy()
	bot.Spec.Suspended = true
	send(m, ObjectMsg{Obj: bot})
	send(m, key("s"))
	send(m, key("y"))
	if rec.calls[len(rec.calls)-1] != "suspend kars-bot/bot false" {
		t.Fatalf("calls %v", rec.calls)
	}

	// SRE decisions: only with an action selected, open actions only.
	send(m, key("a"))
	if m.confirm != nil || !strings.Contains(m.View(), "select an SRE action first (tab on the activity page)") {
		t.Fatalf("approve without a selected action:\n%s", m.View())
	}
	send(m, key("tab"))
	send(m, key("a"))
	if f := m.View(); !strings.Contains(f, "approve kars-bot/suspend-bot (SuspendSandbox on bot)? [y/N]") {
		t.Fatalf("no approval prompt:\n%s", f)
	}
	send(m, key("y"))
	send(m, key("down")) // the finished restart-bot
	send(m, key("r"))
	if m.confirm != nil || !strings.Contains(m.View(), "restart-bot is already Approved") {
		t.Fatalf("offered to reject a decided action:\n%s", m.View())
	}
	send(m, key("up"))
	send(m, key("r"))
	send(m, key("y"))
	want := "decide kars-bot/suspend-bot Approved;decide kars-bot/suspend-bot Rejected"
	if got := strings.Join(rec.calls[2:], ";"); got != want {
		t.Fatalf("calls %q, want %q", got, want)
	}

	// A failed action says why.
	rec.err = fmt.Errorf("karssandboxes.kars.azure.com \"bot\" is forbidden")
	send(m, key("tab"))
	send(m, key("s"))
	send(m, key("y"))
	if !strings.Contains(m.View(), "failed: resume kars-bot/bot: karssandboxes.kars.azure.com \"bot\" is forbidden") {
		t.Fatalf("no failure shown:\n%s", m.View())
	}
}

// "m" takes a model name (only characters a model name has), enter asks to
// confirm, esc abandons; nothing changes before "y".
func TestSwitchModel(t *testing.T) {
	rec := &recorder{}
	m := fixture(t, 120, 30, rec)
	send(m, key("down"))
	send(m, key("m"))
	for _, k := range []string{"g", "p", "t", "-", "4", ".", "1", "x", " ", "q", "!"} {
		send(m, key(k))
	}
	send(m, tea.KeyMsg{Type: tea.KeyBackspace})
	send(m, tea.KeyMsg{Type: tea.KeyBackspace}) // "q" and "x" typed, "!" and " " refused
	if f := m.View(); !strings.Contains(f, "model for kars-bot/bot (enter to confirm, esc to cancel): gpt-4.1▏") {
		t.Fatalf("input line:\n%s", f)
	}
	golden(t, "model-input", m.View())
	send(m, key("-mini"))
	send(m, tea.KeyMsg{Type: tea.KeyEnter})
	if f := m.View(); !strings.Contains(f, "switch kars-bot/bot to model gpt-4.1-mini? [y/N]") || len(rec.calls) != 0 {
		t.Fatalf("calls %v:\n%s", rec.calls, f)
	}
	send(m, key("y"))
	if strings.Join(rec.calls, ";") != "model kars-bot/bot gpt-4.1-mini" {
		t.Fatalf("calls %v", rec.calls)
	}
	send(m, key("m"))
	send(m, key("o"))
	send(m, tea.KeyMsg{Type: tea.KeyEsc})
	send(m, key("q")) // quits, not typed: the input is gone
	if len(rec.calls) != 1 || m.input != nil || !strings.Contains(m.View(), "cancelled: switch model") {
		t.Fatalf("calls %v input %v:\n%s", rec.calls, m.input, m.View())
	}
}

// Watch events move the view: a deleted selected sandbox moves the
// selection, events are capped and newest first, non-kars events ignored.
func TestWatchEventsUpdateTheView(t *testing.T) {
	m := fixture(t, 120, 30, nil)
	send(m, key("down"))
	if m.sel.Name != "bot" {
		t.Fatalf("selected %v", m.sel)
	}
	send(m, ObjectMsg{Obj: sandbox("kars-bot", "bot", ""), Deleted: true})
	if m.sel.Name != "analyst" || strings.Contains(m.View(), "kars-bot/bot ") {
		t.Fatalf("selection %v after deleting the selected sandbox:\n%s", m.sel, m.View())
	}
	for i := range maxEvents + 10 {
		send(m, ObjectMsg{Obj: event("kars-analyst", fmt.Sprint("n", i), "Normal", "Tick", "KarsSandbox", "analyst", fmt.Sprint("note ", i), t0.Add(time.Duration(i)*time.Second))})
	}
	evs := m.State().Events("kars-analyst")
	if len(evs) != maxEvents || evs[0].Note != fmt.Sprint("note ", maxEvents+9) {
		t.Fatalf("%d events, newest %q", len(evs), evs[0].Note)
	}
	worker := sandbox("kars-worker", "worker", karsv1.SandboxRunning)
	if ps := m.State().Pairings(worker); len(ps) != 1 || ps[0].Name != "bot-to-worker" {
		t.Fatalf("the peer's pairings: %v", ps)
	}
	if ps := m.State().Pairings(sandbox("kars-bot", "other", "")); len(ps) != 0 {
		t.Fatalf("another sandbox's pairings: %v", ps)
	}
	if len(m.State().Events("kars-bot")) != 2 {
		t.Fatalf("kept a Pod's event: %d", len(m.State().Events("kars-bot")))
	}
}
