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
)

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

	focus   pane
	sel     types.NamespacedName // selected sandbox
	sreSel  int
	confirm *confirmation
	status  string
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
}

// New returns a Model over an empty State, sized 80×24 until the terminal
// says otherwise.
func New(o Options) *Model {
	r := o.Renderer
	if r == nil {
		r = lipgloss.DefaultRenderer()
	}
	return &Model{state: NewState(), actions: o.Actions, styles: newStyles(r), title: o.Title, width: 80, height: 24}
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
		return m, m.key(msg.String())
	}
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
		if m.focus == paneSandboxes && len(m.sreActions()) > 0 {
			m.focus = paneSRE
		} else {
			m.focus = paneSandboxes
		}
	case "up", "k":
		m.move(-1)
	case "down", "j":
		m.move(1)
	case "s":
		m.askSuspend()
	case "a":
		m.askDecision("Approved")
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
	if n == 0 {
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
		m.status = "select an SRE action first (tab)"
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
