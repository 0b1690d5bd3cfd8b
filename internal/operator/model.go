package operator

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kars-io/kars/internal/audit"
)

// ObjectMsg is one watch event: Obj was added or updated, or (Deleted)
// removed.
type ObjectMsg struct {
	Obj     client.Object
	Deleted bool
}

// SyncedMsg says every watch has listed what exists: until then the
// operator says it is loading rather than showing an empty cluster.
type SyncedMsg struct {
	// Unwatched names the kinds the user may not list (or the cluster does
	// not serve), with why; their panels say so.
	Unwatched map[string]string
}

// ErrMsg reports a watch that failed.
type ErrMsg struct{ Err error }

// actionDoneMsg reports the end of a confirmed action.
type actionDoneMsg struct {
	what string
	err  error
}

// pane is which list the selection keys move in.
type pane int

const (
	paneSandboxes pane = iota
	paneSRE
	paneAudit
)

// page is which of the selected sandbox's detail pages is shown.
type page int

const (
	pageActivity page = iota // SRE actions, egress approvals, pairings, events
	pagePolicy               // inference, tool policy, egress, MCP servers
	pageTrust                // trust threshold, trust graph edges, peers and pairings
	pageMemory               // memory binding and evaluations
	pageAudit                // the router's live audit tail
	pages
)

var pageNames = [pages]string{"activity", "policy", "trust", "memory/evals", "audit"}

// confirmation is an action waiting for y/n.
type confirmation struct {
	prompt string
	run    func(context.Context) error
	what   string
}

// FPS is the frame rate the operator's program renders at: a watch event
// reaches the screen within 1/FPS s, and bubbletea's renderer, which wakes
// FPS times a second even when idle, stays cheap.
const FPS = 20

// Model is the operator's bubbletea model. It changes only in Update, on
// the program's goroutine; watches reach it as messages.
type Model struct {
	state   *State
	actions Actions
	styles  styles
	title   string

	width, height int
	synced        bool
	unwatched     map[string]string
	watchErr      error

	focus  pane
	page   page
	sel    types.NamespacedName // selected sandbox
	sreSel int
	// The audit tail of the selected sandbox, from its router.
	admin    AdminDialer
	send     func(tea.Msg)
	ctx      context.Context
	tailKey  types.NamespacedName // the sandbox followed
	stopTail context.CancelFunc
	auditFor types.NamespacedName // whose entries these are
	auditLog []audit.Entry        // newest first
	auditErr error
	auditAt  time.Time
	auditSel int
	meshFor  types.NamespacedName // whose mesh status mesh is
	mesh     MeshMsg
	confirm  *confirmation
	status   string
	// input, when not nil, is the model name being typed after "m".
	input *string
}

// Options configure a Model.
type Options struct {
	// Actions changes objects; nil makes the operator read-only.
	Actions Actions
	// Renderer decides colours (its colour profile, NO_COLOR); nil means
	// lipgloss's default renderer for standard output.
	Renderer *lipgloss.Renderer
	// Title is shown in the header (the cluster or context name).
	Title string
	// Admin opens a sandbox's router admin API for the audit tail; nil
	// shows no audit tail. Send delivers the tail's messages to the
	// program (tea.Program.Send) and Context bounds it; both are needed
	// with Admin.
	Admin   AdminDialer
	Send    func(tea.Msg)
	Context context.Context
}

// New returns a Model over an empty State, sized 80×24 until the terminal
// says otherwise.
func New(o Options) *Model {
	r := o.Renderer
	if r == nil {
		r = lipgloss.DefaultRenderer()
	}
	ctx := o.Context
	if ctx == nil {
		ctx = context.Background()
	}
	return &Model{state: NewState(), actions: o.Actions, styles: newStyles(r), title: o.Title, width: 80, height: 24,
		admin: o.Admin, send: o.Send, ctx: ctx}
}

// State is what the model knows.
func (m *Model) State() *State { return m.state }

// Init implements tea.Model. The model needs no timer: every redraw is
// caused by a watch event or a key, so an idle operator uses no CPU.
func (m *Model) Init() tea.Cmd { return nil }

// Update implements tea.Model.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case ObjectMsg:
		m.state.Apply(msg.Obj, msg.Deleted)
		m.clampSelection()
	case SyncedMsg:
		m.synced, m.unwatched = true, msg.Unwatched
		m.clampSelection()
	case AuditMsg:
		m.applyAudit(msg)
	case MeshMsg:
		if msg.Sandbox == m.sel {
			m.meshFor, m.mesh = msg.Sandbox, msg
		}
	case ErrMsg:
		m.watchErr = msg.Err
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case actionDoneMsg:
		if msg.err != nil {
			m.status = "failed: " + msg.what + ": " + msg.err.Error()
		} else {
			m.status = "done: " + msg.what
		}
	case tea.KeyMsg:
		cmd := m.key(msg.String())
		m.follow()
		return m, cmd
	}
	m.follow()
	return m, nil
}

func (m *Model) key(k string) tea.Cmd {
	if m.input != nil {
		m.typeModel(k)
		return nil
	}
	if m.confirm != nil {
		c := m.confirm
		m.confirm = nil
		if k != "y" && k != "Y" {
			m.status = "cancelled: " + c.what
			return nil
		}
		m.status = "working: " + c.what
		return func() tea.Msg {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return actionDoneMsg{what: c.what, err: c.run(ctx)}
		}
	}
	switch k {
	case "q", "ctrl+c":
		return tea.Quit
	case "tab":
		switch {
		case m.focus != paneSandboxes:
			m.focus = paneSandboxes
		case m.page == pageActivity && len(m.sreActions()) > 0:
			m.focus = paneSRE
		case m.page == pageAudit && len(m.auditEntries()) > 0:
			m.focus = paneAudit
		}
	case "right", "l":
		m.setPage((m.page + 1) % pages)
	case "left", "h":
		m.setPage((m.page + pages - 1) % pages)
	case "1", "2", "3", "4", "5":
		m.setPage(page(k[0] - '1'))
	case "up", "k":
		m.move(-1)
	case "down", "j":
		m.move(1)
	case "s":
		m.askSuspend()
	case "a":
		if m.focus == paneAudit {
			m.askApproveEgress()
		} else {
			m.askDecision("Approved")
		}
	case "r":
		m.askDecision("Rejected")
	case "m":
		if m.state.Sandbox(m.sel) == nil {
			return nil
		}
		if m.actions == nil {
			m.status = "read-only: no actions"
			return nil
		}
		m.input = new(string)
	}
	return nil
}

// typeModel edits the model name being typed; enter asks to confirm the
// switch, esc abandons it.
func (m *Model) typeModel(k string) {
	switch k {
	case "esc", "ctrl+c":
		m.input, m.status = nil, "cancelled: switch model"
	case "backspace":
		if r := []rune(*m.input); len(r) > 0 {
			*m.input = string(r[:len(r)-1])
		}
	case "enter":
		model := strings.TrimSpace(*m.input)
		m.input = nil
		if model == "" {
			m.status = "cancelled: switch model"
			return
		}
		key, act := m.sel, m.actions
		m.confirm = &confirmation{
			prompt: fmt.Sprintf("switch %s to model %s? [y/N]", key, model),
			what:   "switch " + key.String() + " to " + model,
			run:    func(ctx context.Context) error { return act.SetModel(ctx, key, model) },
		}
	default:
		// Model and deployment names: letters, digits and . _ - : / only.
		for _, r := range k {
			if len(*m.input) >= 128 || !(r == '.' || r == '_' || r == '-' || r == ':' || r == '/' || unicode.IsLetter(r) || unicode.IsDigit(r)) {
				return
			}
		}
		*m.input += k
	}
}

func (m *Model) move(d int) {
	if m.focus == paneSRE {
		m.sreSel = max(0, min(m.sreSel+d, len(m.sreActions())-1))
		return
	}
	if m.focus == paneAudit {
		m.auditSel = max(0, min(m.auditSel+d, len(m.auditEntries())-1))
		return
	}
	order := m.state.Sandboxes()
	if len(order) == 0 {
		return
	}
	i := m.selectedIndex() + d
	m.sel = order[max(0, min(i, len(order)-1))]
	m.sreSel = 0
}

// selectedIndex is the selected sandbox's place in the list (0 when it is
// gone).
func (m *Model) selectedIndex() int {
	for i, k := range m.state.Sandboxes() {
		if k == m.sel {
			return i
		}
	}
	return 0
}

// clampSelection keeps a selection on an existing sandbox and action.
func (m *Model) clampSelection() {
	order := m.state.Sandboxes()
	if len(order) == 0 {
		m.sel, m.focus = types.NamespacedName{}, paneSandboxes
		return
	}
	if m.state.Sandbox(m.sel) == nil {
		m.sel = order[0]
	}
	n := len(m.sreActions())
	if n == 0 && m.focus == paneSRE {
		m.focus = paneSandboxes
	}
	m.sreSel = max(0, min(m.sreSel, n-1))
}

func (m *Model) askSuspend() {
	sb := m.state.Sandbox(m.sel)
	if sb == nil {
		return
	}
	if m.actions == nil {
		m.status = "read-only: no actions"
		return
	}
	verb, to := "suspend", true
	if sb.Spec.Suspended {
		verb, to = "resume", false
	}
	key, act := m.sel, m.actions
	m.confirm = &confirmation{
		prompt: fmt.Sprintf("%s sandbox %s? [y/N]", verb, key),
		what:   verb + " " + key.String(),
		run:    func(ctx context.Context) error { return act.SetSuspended(ctx, key, to) },
	}
}

func (m *Model) askDecision(state string) {
	if m.focus != paneSRE {
		m.status = "select an SRE action first (tab on the activity page), or a refused egress entry (tab on the audit page)"
		return
	}
	as := m.sreActions()
	if m.sreSel >= len(as) {
		return
	}
	if m.actions == nil {
		m.status = "read-only: no actions"
		return
	}
	a := as[m.sreSel]
	if !open(a) {
		m.status = fmt.Sprintf("%s is already %s", a.Name, a.Spec.Approval.State)
		return
	}
	verb := map[string]string{"Approved": "approve", "Rejected": "reject"}[state]
	key, act := types.NamespacedName{Namespace: a.Namespace, Name: a.Name}, m.actions
	m.confirm = &confirmation{
		prompt: fmt.Sprintf("%s %s (%s on %s)? [y/N]", verb, key, a.Spec.Action, a.Spec.Target.Name),
		what:   verb + " " + key.String(),
		run:    func(ctx context.Context) error { return act.DecideSRE(ctx, key, state) },
	}
}

// setPage shows page p; the focus goes back to the sandbox list when the
// pane it was in is not on p.
func (m *Model) setPage(p page) {
	if p < 0 || p >= pages {
		return
	}
	m.page = p
	if (m.focus == paneSRE && p != pageActivity) || (m.focus == paneAudit && p != pageAudit) {
		m.focus = paneSandboxes
	}
}

// follow keeps the audit tail on the selected sandbox: a new selection
// stops the old tail and starts one for it.
func (m *Model) follow() {
	if m.admin == nil || m.send == nil || m.tailKey == m.sel {
		return
	}
	if m.stopTail != nil {
		m.stopTail()
		m.stopTail = nil
	}
	m.tailKey = m.sel
	if m.sel == (types.NamespacedName{}) {
		return
	}
	ctx, cancel := context.WithCancel(m.ctx)
	m.stopTail = cancel
	go FollowAudit(ctx, m.admin, m.sel, AuditPoll, m.send)
}

// applyAudit keeps the entries of the selected sandbox, newest first; a
// message about another sandbox (a tail stopped after it sent) is dropped.
func (m *Model) applyAudit(msg AuditMsg) {
	if msg.Sandbox != m.sel {
		return
	}
	if m.auditFor != msg.Sandbox {
		m.auditFor, m.auditLog, m.auditSel = msg.Sandbox, nil, 0
	}
	m.auditErr, m.auditAt = msg.Err, msg.At
	if msg.Err != nil {
		return
	}
	// Keep the selected entry selected as new ones arrive above it.
	var selSeq uint64
	if m.auditSel < len(m.auditLog) {
		selSeq = m.auditLog[m.auditSel].Seq
	}
	m.auditLog = m.auditLog[:0]
	for i := len(msg.Entries) - 1; i >= 0; i-- {
		m.auditLog = append(m.auditLog, msg.Entries[i])
	}
	m.auditSel = 0
	for i, e := range m.auditLog {
		if e.Seq == selSeq {
			m.auditSel = i
		}
	}
	if len(m.auditLog) == 0 && m.focus == paneAudit {
		m.focus = paneSandboxes
	}
}

// auditEntries are the selected sandbox's audit entries, newest first.
func (m *Model) auditEntries() []audit.Entry {
	if m.auditFor != m.sel {
		return nil
	}
	return m.auditLog
}

// askApproveEgress offers to approve the destination a selected audit
// entry refused: creating an EgressApproval is the approval
// (docs/egress.md), for its default 24 h.
func (m *Model) askApproveEgress() {
	es := m.auditEntries()
	if m.auditSel >= len(es) {
		return
	}
	if m.actions == nil {
		m.status = "read-only: no actions"
		return
	}
	e := es[m.auditSel]
	host, port, ok := refusedEgress(e)
	if !ok {
		m.status = fmt.Sprintf("entry %d is not an egress destination refused for want of a rule: only those can be approved here", e.Seq)
		if step := e.Attrs["step"]; e.Attrs["op"] == "egress" && e.Decision != "allow" {
			m.status = fmt.Sprintf("entry %d was refused by the %s step: an EgressApproval does not lift that", e.Seq, step)
		}
		return
	}
	key, act := m.sel, m.actions
	reason := fmt.Sprintf("approved in kars operator after audit entry %d (%s)", e.Seq, orDash(e.Rule))
	m.confirm = &confirmation{
		prompt: fmt.Sprintf("approve egress to %s:%d for %s for 24h (creates an EgressApproval)? [y/N]", host, port, key),
		what:   fmt.Sprintf("approve egress to %s:%d for %s", host, port, key),
		run:    func(ctx context.Context) error { return act.ApproveEgress(ctx, key, host, port, reason) },
	}
}
