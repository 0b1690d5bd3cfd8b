package operator

import (
	"fmt"
	"strings"

	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
)

// styles are the operator's colours. Under a renderer without colour
// (NO_COLOR, a dumb terminal, a pipe) they render plain text, and nothing
// on screen depends on colour alone: the selection also has a "›" marker
// and warnings say "Warning".
type styles struct {
	header, selected, dim, warn, good, prompt lipgloss.Style
}

func newStyles(r *lipgloss.Renderer) styles {
	return styles{
		header:   r.NewStyle().Bold(true),
		selected: r.NewStyle().Reverse(true),
		dim:      r.NewStyle().Faint(true),
		warn:     r.NewStyle().Foreground(lipgloss.Color("1")),
		good:     r.NewStyle().Foreground(lipgloss.Color("2")),
		prompt:   r.NewStyle().Bold(true).Foreground(lipgloss.Color("3")),
	}
}

// narrow is the width under which the sandbox list drops its runtime and
// budget columns.
const narrow = 72

// View implements tea.Model: the whole frame, each line cut to the
// terminal's width and the frame to its height.
func (m *Model) View() string {
	w, h := max(m.width, 20), max(m.height, 6)
	var top, bottom []string
	line := func(dst *[]string, st *lipgloss.Style, s string) {
		s = ansi.Truncate(s, w, "…")
		if st != nil {
			s = st.Render(s)
		}
		*dst = append(*dst, s)
	}

	// Header.
	status := "loading…"
	if m.synced {
		status = "live"
	}
	if m.watchErr != nil {
		status = "watch failed: " + m.watchErr.Error()
	}
	order := m.state.Sandboxes()
	title := "kars operator"
	if m.title != "" {
		title += " · " + m.title
	}
	line(&top, &m.styles.header, fmt.Sprintf("%s · %d sandboxes · %d open SRE actions · %s", title, len(order), m.state.OpenSREActions(), status))

	// Footer: a pending confirmation, the last action's outcome, the keys.
	if m.input != nil {
		line(&bottom, &m.styles.prompt, fmt.Sprintf("model for %s (enter to confirm, esc to cancel): %s▏", m.sel, *m.input))
	} else if m.confirm != nil {
		line(&bottom, &m.styles.prompt, m.confirm.prompt)
	} else if m.status != "" {
		st := &m.styles.good
		if strings.HasPrefix(m.status, "failed") {
			st = &m.styles.warn
		}
		line(&bottom, st, m.status)
	}
	keys := "↑/↓ select · ←/→ or 1-5 page · tab SRE actions/audit · s suspend/resume · m model · a approve · r reject · q quit"
	if m.actions == nil {
		keys = "↑/↓ select · ←/→ or 1-5 page · tab SRE actions/audit · q quit (read-only)"
	}
	line(&bottom, &m.styles.dim, keys)

	room := h - len(top) - len(bottom)
	// The sandbox list takes at most half of what is left (at least 3
	// rows), the selected sandbox's panels the rest.
	listRows := min(len(order)+1, max(3, room/2))
	if len(order) == 0 {
		listRows = 1
	}
	body := m.sandboxList(w, listRows)
	body = append(body, m.panels(w, room-len(body))...)
	if len(body) > room {
		body = body[:max(room, 0)]
	}
	out := append(top, body...)
	for len(out) < h-len(bottom) {
		out = append(out, "")
	}
	return strings.Join(append(out, bottom...), "\n")
}

// sandboxList renders the header row and a window of the sandboxes that
// keeps the selected one visible.
func (m *Model) sandboxList(w, rows int) []string {
	order := m.state.Sandboxes()
	if len(order) == 0 {
		if !m.synced {
			return []string{""}
		}
		return []string{ansi.Truncate("no sandboxes yet: `kars add NAME` or `kars up --name NAME` creates one", w, "…")}
	}
	wide := w >= narrow
	row := func(mark, name, phase, runtime, model, trust, budget string) string {
		if wide {
			return fmt.Sprintf("%s %-28s %-12s %-14s %-20s %-6s %s", mark, name, phase, runtime, model, trust, budget)
		}
		return fmt.Sprintf("%s %-22s %-11s %s", mark, name, phase, model)
	}
	out := []string{m.styles.header.Render(ansi.Truncate(row(" ", "NAMESPACE/NAME", "PHASE", "RUNTIME", "MODEL", "TRUST", "BUDGET"), w, "…"))}
	visible := rows - 1
	sel := m.selectedIndex()
	first := max(0, min(sel-visible/2, len(order)-visible))
	for i := first; i < len(order) && i < first+visible; i++ {
		sb := m.state.Sandbox(order[i])
		mark := " "
		if i == sel {
			mark = "›"
		}
		phase := string(sb.Status.Phase)
		if phase == "" {
			phase = "Pending"
		}
		s := ansi.Truncate(row(mark, order[i].String(), phase, string(sb.Spec.Runtime.Kind), m.model(sb), fmt.Sprintf("≥%d", TrustThreshold(sb)), m.budget(sb)), w, "…")
		switch {
		case i == sel && m.focus == paneSandboxes:
			s = m.styles.selected.Render(s)
		case sb.Status.Phase == karsv1.SandboxFailed || sb.Status.Phase == karsv1.SandboxDegraded:
			s = m.styles.warn.Render(s)
		}
		out = append(out, s)
	}
	return out
}

func (m *Model) model(sb *karsv1.KarsSandbox) string {
	if sb.Status.Model != "" {
		return sb.Status.Model
	}
	if ip := m.state.Inference(sb); ip != nil {
		return ip.Spec.ModelPreference.Primary.Model
	}
	return "-"
}

func (m *Model) budget(sb *karsv1.KarsSandbox) string {
	ip := m.state.Inference(sb)
	if ip == nil || ip.Spec.TokenBudget == nil || ip.Spec.TokenBudget.Daily == 0 {
		return "-"
	}
	return tokens(ip.Spec.TokenBudget.Daily) + "/day"
}

// tokens abbreviates a token count.
func tokens(n int64) string {
	switch {
	case n >= 1_000_000 && n%100_000 == 0:
		return fmt.Sprintf("%gM", float64(n)/1e6)
	case n >= 1_000 && n%100 == 0:
		return fmt.Sprintf("%gk", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}

// sreActions are the selected sandbox's SRE actions.
func (m *Model) sreActions() []*karsv1.KarsSREAction {
	sb := m.state.Sandbox(m.sel)
	if sb == nil {
		return nil
	}
	return m.state.SREActions(sb)
}

// panels renders the selected sandbox's details, SRE actions, egress
// approvals and events into at most rows lines; later panels get what the
// earlier ones leave.
func (m *Model) panels(w, rows int) []string {
	sb := m.state.Sandbox(m.sel)
	if sb == nil || rows <= 1 {
		return nil
	}
	var out []string
	add := func(s string) { out = append(out, ansi.Truncate(s, w, "…")) }
	section := func(s string) {
		out = append(out, m.styles.header.Render(ansi.Truncate("── "+s+" "+strings.Repeat("─", max(0, w)), w, "")))
	}

	tabs := ""
	for p, name := range pageNames {
		if page(p) == m.page {
			tabs += fmt.Sprintf(" [%d %s]", p+1, name)
		} else {
			tabs += fmt.Sprintf(" %d %s", p+1, name)
		}
	}
	if lipgloss.Width(m.sel.String()+" ·"+tabs)+4 > w {
		// Too narrow for every tab: name the page shown.
		tabs = fmt.Sprintf(" %d/%d %s", m.page+1, pages, pageNames[m.page])
	}
	section(m.sel.String() + " ·" + tabs)
	detail := fmt.Sprintf("  phase %s · runtime %s · model %s · budget %s", orDash(string(sb.Status.Phase)), sb.Spec.Runtime.Kind, m.model(sb), m.budget(sb))
	if sb.Spec.Suspended {
		detail += " · suspended"
	}
	add(detail)
	for _, c := range sb.Status.Conditions {
		if c.Type == karsv1.ConditionReady && c.Status != "True" {
			out = append(out, m.styles.warn.Render(ansi.Truncate("  not ready: "+c.Reason+": "+c.Message, w, "…")))
		}
	}

	if m.page != pageActivity {
		out = append(out, m.page2(sb, w)...)
		if len(out) > rows {
			out = out[:rows]
		}
		return out
	}

	section("SRE actions")
	as := m.state.SREActions(sb)
	if len(as) == 0 {
		add("  none proposed")
	}
	if why, ok := m.unwatched["KarsSREAction"]; ok {
		add("  not watched: " + why)
	}
	for i, a := range as {
		exp := "expires " + controller.ExpiresAt(a).Local().Format("15:04")
		if !open(a) {
			exp = orDash(a.Status.Phase)
		}
		s := ansi.Truncate(fmt.Sprintf("  %s %-8s %-24s %-18s %s · by %s: %s", mark(m.focus == paneSRE && i == m.sreSel), orDash(a.Spec.Approval.State),
			a.Name, a.Spec.Action, exp, orDash(a.Spec.ProposedBy), a.Spec.Reason), w, "…")
		if m.focus == paneSRE && i == m.sreSel {
			s = m.styles.selected.Render(s)
		}
		out = append(out, s)
	}

	section("egress approvals")
	es := m.state.EgressApprovals(sb)
	if len(es) == 0 {
		add("  none")
	}
	if why, ok := m.unwatched["EgressApproval"]; ok {
		add("  not watched: " + why)
	}
	for _, e := range es {
		hosts := make([]string, len(e.Spec.Hosts))
		for i, h := range e.Spec.Hosts {
			hosts[i] = string(h)
		}
		exp := ""
		if e.Status.ExpiresAt != nil {
			exp = " until " + e.Status.ExpiresAt.Local().Format("Jan 2 15:04")
		}
		add(fmt.Sprintf("  %-8s %s%s · %s", orDash(e.Status.Phase), strings.Join(hosts, ","), exp, e.Spec.Reason))
	}

	section("pairings")
	for _, l := range m.pairingLines(sb) {
		add(l)
	}

	section("events")
	if why, ok := m.unwatched["Event"]; ok {
		add("  not watched: " + why)
	}
	evs := m.state.Events(sb.Namespace)
	if len(evs) == 0 {
		add("  none")
	}
	for _, e := range evs {
		if len(out) >= rows {
			break
		}
		s := ansi.Truncate(fmt.Sprintf("  %s %-7s %-22s %s/%s: %s", eventTime(e).Local().Format("15:04:05"), e.Type, e.Reason,
			e.Regarding.Kind, e.Regarding.Name, e.Note), w, "…")
		if e.Type == "Warning" {
			s = m.styles.warn.Render(s)
		}
		out = append(out, s)
	}
	if len(out) > rows {
		out = out[:rows]
	}
	return out
}

func mark(on bool) string {
	if on {
		return "›"
	}
	return " "
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
