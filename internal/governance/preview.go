package governance

// MayAllow reports whether some call of action by agent could be allowed
// now, without deciding one: no rate limit is consumed and nothing is
// counted. It looks at the rules in evaluation order, as Decide does, but
// cannot know arguments: the first matching rule settles it unless it has
// conditions — an allow rule with conditions may allow (some arguments
// satisfy them), a deny rule with conditions may not apply (the next
// matching rule is looked at). A require-approval rule, an approval mode
// of "always", a malformed action or no matching rule answer false.
//
// The MCP gateway uses it to show the agent only the tools it may call;
// each call is still decided in full.
func (p *Profile) MayAllow(agent, action string) bool { return p.mayRun(agent, action, false) }

// MayRun is MayAllow for a caller that holds require_approval decisions
// until a person decides them (the router's MCP gateway): a
// require-approval rule and an approval mode of "always" answer true,
// since an approved call runs.
func (p *Profile) MayRun(agent, action string) bool { return p.mayRun(agent, action, true) }

func (p *Profile) mayRun(agent, action string, approvals bool) bool {
	if p == nil || p.approvalMode == ApprovalAlways && !approvals {
		return false
	}
	ns, bad := CheckAction(action)
	if bad != "" {
		return false
	}
	if p.agents != nil && !p.appliesTo(agent) {
		return false
	}
	idx := &p.byNS[ns]
	var cands []entry
	for _, list := range [][]entry{idx.exact[action], idx.globs, p.global} {
		for _, en := range list {
			if en.g.match(action) {
				cands = append(cands, en)
			}
		}
	}
	for {
		best := -1
		for i, en := range cands {
			if best < 0 || en.rule < cands[best].rule {
				best = i
			}
		}
		if best < 0 {
			return false
		}
		r := &p.rules[cands[best].rule]
		switch {
		case r.effect == EffectAllow, r.effect == EffectRequireApproval && approvals:
			return true
		case r.effect == EffectDeny && len(r.conds) > 0:
			cands = append(cands[:best], cands[best+1:]...)
		default:
			return false
		}
	}
}
