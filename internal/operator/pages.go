package operator

import (
	"fmt"
	"strings"

	"github.com/charmbracelet/x/ansi"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
)

// page2 renders the selected sandbox's pages other than activity: what is
// bound to it (policy, trust, memory/evals) and its router's audit tail.
// Every line is cut to width w; the caller cuts the list to its rows.
func (m *Model) page2(sb *karsv1.KarsSandbox, w int) []string {
	var out []string
	add := func(s string) { out = append(out, ansi.Truncate(s, w, "…")) }
	warn := func(s string) { out = append(out, m.styles.warn.Render(ansi.Truncate(s, w, "…"))) }
	section := func(s string) {
		out = append(out, m.styles.header.Render(ansi.Truncate("── "+s+" "+strings.Repeat("─", max(0, w)), w, "")))
	}
	unwatched := func(kind string) {
		if why, ok := m.unwatched[kind]; ok {
			add("  not watched: " + why)
		}
	}
	// notReady says why an object's Ready condition is not True.
	notReady := func(conds []metav1.Condition) {
		if c := meta.FindStatusCondition(conds, karsv1.ConditionReady); c != nil && c.Status != "True" {
			warn("    not ready: " + c.Reason + ": " + c.Message)
		}
	}

	switch m.page {
	case pagePolicy:
		section("inference")
		unwatched("InferencePolicy")
		if ip := m.state.Inference(sb); ip == nil {
			add("  InferencePolicy " + sb.Spec.InferenceRef.Name + " not found")
		} else {
			p := ip.Spec.ModelPreference.Primary
			var fb []string
			for _, f := range ip.Spec.ModelPreference.Fallbacks {
				fb = append(fb, string(f.Provider)+" "+f.Model)
			}
			s := fmt.Sprintf("  %-8s %s · %s %s", orDash(ip.Status.Phase), ip.Name, p.Provider, p.Model)
			if len(fb) > 0 {
				s += " · fallbacks " + strings.Join(fb, ", ")
			}
			add(s + " · budget " + m.budget(sb))
			notReady(ip.Status.Conditions)
		}

		section("tool policy")
		unwatched("ToolPolicy")
		switch tp := m.state.ToolPolicy(sb); {
		case sb.Spec.Governance.Enabled != nil && !*sb.Spec.Governance.Enabled:
			warn("  governance is off: no action is decided")
		case sb.Spec.Governance.ToolPolicyRef == nil:
			add("  none named (spec.governance.toolPolicyRef): the router's default policy")
		case tp == nil:
			warn("  ToolPolicy " + sb.Spec.Governance.ToolPolicyRef.Name + " not found")
		default:
			s := fmt.Sprintf("  %-8s %s · %d rules", orDash(tp.Status.Phase), tp.Name, len(tp.Spec.Rules))
			if tp.Spec.Approval != nil {
				s += " · approval " + string(tp.Spec.Approval.Mode)
			}
			if tp.Spec.RateLimit != nil {
				s += fmt.Sprintf(" · %d/min", tp.Spec.RateLimit.RequestsPerMinute)
			}
			add(s)
			notReady(tp.Status.Conditions)
			for _, r := range tp.Spec.Rules {
				add(fmt.Sprintf("    %-16s %4d  %-20s %s", r.Effect, r.Priority, r.Name, strings.Join(r.Actions, ", ")))
			}
		}

		section("egress")
		np := sb.Spec.NetworkPolicy
		s := "  mode " + orDash(string(np.EgressMode))
		if len(np.AllowedHosts) > 0 {
			hosts := make([]string, len(np.AllowedHosts))
			for i, h := range np.AllowedHosts {
				hosts[i] = string(h)
			}
			s += " · allowed " + strings.Join(hosts, ",")
		}
		if ref := np.AllowlistRef; ref != nil {
			s += " · allowlist " + ref.Registry + "/" + ref.Repository + "@" + shortDigest(string(ref.Digest))
			if c := meta.FindStatusCondition(sb.Status.Conditions, karsv1.ConditionAllowlistVerified); c != nil {
				s += " (" + c.Reason + ")"
			}
		}
		add(s)
		if n := len(m.state.EgressApprovals(sb)); n > 0 {
			add(fmt.Sprintf("  egress approvals: %d (activity page)", n))
		}

		section("MCP servers")
		unwatched("McpServer")
		ms := m.state.McpServers(sb)
		if len(ms) == 0 {
			add("  none")
		}
		for _, s := range ms {
			tools := strings.Join(s.Spec.Tools, ",")
			if tools == "" {
				tools = "no tools allowed"
			}
			add(fmt.Sprintf("  %-8s %-20s %s · tools %s", orDash(s.Status.Phase), s.Name, orDash(s.Status.Endpoint), tools))
			notReady(s.Status.Conditions)
		}

	case pageTrust:
		section("trust")
		reg := orDash(string(sb.Spec.Governance.RegistryMode))
		add(fmt.Sprintf("  peers need trust ≥ %d · mesh registry %s", TrustThreshold(sb), reg))

		section("trust graph")
		unwatched("TrustGraph")
		es := m.state.TrustEdges(sb)
		if len(es) == 0 {
			add("  no edge from or to " + sb.Namespace + "/" + sb.Name + " (the graph does not constrain it)")
		}
		for _, e := range es {
			dir := "trusts"
			if !e.Outbound {
				dir = "trusted by"
			}
			until := ""
			if e.Edge.ExpiresAt != nil {
				until = " · until " + e.Edge.ExpiresAt.Local().Format("Jan 2 15:04")
			}
			add(fmt.Sprintf("  %-10s %-28s %4d · graph %s (%d verified, %d rejected)%s", dir, peerOf(e), e.Edge.Score,
				e.Graph.Name, e.Graph.Status.VerifiedEdges, e.Graph.Status.RejectedEdges, until))
		}

		section("peers and pairings")
		for _, l := range m.pairingLines(sb) {
			add(l)
		}

		section("mesh · live from the router")
		mesh := m.mesh
		switch {
		case m.admin == nil:
			add("  not followed here (kars operator --once, or no access to the router's admin API)")
		case m.meshFor != m.sel:
			add("  reaching the router…")
		case mesh.Err != nil:
			warn("  cannot read the mesh status: " + mesh.Err.Error())
		case mesh.Off:
			add("  the router runs no mesh endpoint")
		default:
			st := "not connected to kars-mesh"
			if mesh.Status.Connected {
				st = "connected to kars-mesh"
			}
			add(fmt.Sprintf("  %s · threshold %d · %d peers · %s", st, mesh.Status.Threshold, len(mesh.Status.Peers), orDash(mesh.Status.DID)))
			for _, p := range mesh.Status.Peers {
				s := fmt.Sprintf("  %-20s %-28s trust %4d %-10s", p.Name, orDash(p.Sandbox), p.Trust.Score, p.Trust.Tier)
				if w < narrow {
					s = fmt.Sprintf("  %-16s %4d %-10s", p.Name, p.Trust.Score, p.Trust.Tier)
				}
				if p.Admitted {
					add(s + " admitted")
				} else {
					warn(s + " refused: " + orDash(p.Refusal))
				}
			}
		}

	case pageMemory:
		section("memory")
		unwatched("KarsMemory")
		mems := m.state.Memories(sb)
		if len(mems) == 0 {
			add("  no KarsMemory binding")
		}
		for _, mem := range mems {
			s := fmt.Sprintf("  %-8s %s · store %s at %s · scope %s", orDash(mem.Status.Phase), mem.Name, mem.Spec.Foundry.StoreName,
				hostOf(mem.Spec.Foundry.Endpoint), orDefault(mem.Spec.Scope, "agent"))
			if mem.Spec.RetentionDays > 0 {
				s += fmt.Sprintf(" · %dd retention", mem.Spec.RetentionDays)
			}
			if mem.Spec.ReadOnly {
				s += " · read-only"
			}
			add(s)
			notReady(mem.Status.Conditions)
		}

		section("evals")
		unwatched("KarsEval")
		evs := m.state.Evals(sb)
		if len(evs) == 0 {
			add("  no KarsEval")
		}
		for _, ev := range evs {
			score := orDash(ev.Status.Score)
			if ev.Status.PreviousScore != "" {
				score += " (was " + ev.Status.PreviousScore + ")"
			}
			s := fmt.Sprintf("  %-9s %-20s score %s · pass ≥ %s · %d/%d passed", orDash(ev.Status.Phase), ev.Name, score,
				orDash(ev.Spec.PassThreshold), ev.Status.CasesPassed, ev.Status.CasesRun)
			if t := ev.Status.LastRunTime; t != nil {
				s += " · ran " + t.Local().Format("Jan 2 15:04")
			}
			if t := ev.Status.NextRunTime; t != nil {
				s += " · next " + t.Local().Format("Jan 2 15:04")
			}
			if c := meta.FindStatusCondition(ev.Status.Conditions, controller.ConditionDrifted); c != nil && c.Status == "True" {
				warn(s)
				warn("    drifted: " + c.Reason + ": " + c.Message)
			} else {
				add(s)
			}
		}

	case pageAudit:
		section("audit · live from the router")
		switch {
		case m.admin == nil:
			add("  not followed here (kars operator --once, or no access to the router's admin API)")
		case m.auditFor != m.sel && m.auditErr == nil:
			add("  reaching the router…")
		}
		if m.auditFor == m.sel && m.auditErr != nil {
			warn("  cannot read the audit log: " + m.auditErr.Error())
		}
		es := m.auditEntries()
		if m.auditFor == m.sel && m.auditErr == nil && len(es) == 0 {
			add("  no entries yet")
		}
		for i, e := range es {
			on := m.focus == paneAudit && i == m.auditSel
			s := ansi.Truncate(strings.TrimRight(fmt.Sprintf("  %s %6d %s %-8s %-32s %s", mark(on), e.Seq, e.Time.Local().Format("15:04:05"), e.Decision,
				e.Action, auditDetails(e)), " "), w, "…")
			switch {
			case on:
				s = m.styles.selected.Render(s)
			case e.Decision != "allow":
				s = m.styles.warn.Render(s)
			}
			out = append(out, s)
		}
	}
	return out
}

// pairingLines are sandbox sb's pairings, one a line.
func (m *Model) pairingLines(sb *karsv1.KarsSandbox) []string {
	var out []string
	ps := m.state.Pairings(sb)
	if len(ps) == 0 {
		out = append(out, "  none")
	}
	if why, ok := m.unwatched["KarsPairing"]; ok {
		out = append(out, "  not watched: "+why)
	}
	for _, p := range ps {
		peer := p.Spec.PeerSandbox
		if peer == "" {
			peer = orDash(p.Spec.DisplayName)
		}
		caps := make([]string, len(p.Spec.Capabilities))
		for i, c := range p.Spec.Capabilities {
			caps[i] = string(c)
		}
		phase := orDash(p.Status.Phase)
		if p.Spec.Revoked {
			phase = "Revoked"
		}
		out = append(out, fmt.Sprintf("  %-9s %-24s peer %s · %s · until %s", phase, p.Name, peer, strings.Join(caps, ","), p.Spec.ExpiresAt.Local().Format("Jan 2 15:04")))
	}
	return out
}

func shortDigest(d string) string {
	if i := strings.IndexByte(d, ':'); i >= 0 && len(d) > i+13 {
		return d[:i+13] + "…"
	}
	return d
}

// hostOf is the host of an endpoint URL, or the URL when it has none.
func hostOf(u string) string {
	s := u
	if i := strings.Index(s, "://"); i >= 0 {
		s = s[i+3:]
	}
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	return orDash(s)
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
