package governance

import "testing"

// MayAllow hides what needs approval; MayRun, for a caller that holds
// such calls for a person, shows it — and neither shows what is denied.
func TestMayAllowAndMayRun(t *testing.T) {
	for _, c := range []struct {
		mode             string
		action           string
		mayAllow, mayRun bool
	}{
		{ApprovalNever, "mcp:s.read", true, true},
		{ApprovalNever, "mcp:s.delete", false, true},
		{ApprovalNever, "mcp:s.wipe", false, false},
		{ApprovalNever, "mcp:s.other", false, false},
		{ApprovalAlways, "mcp:s.read", false, true},
		{ApprovalAlways, "mcp:s.wipe", false, false},
	} {
		p, err := Compile(&Policy{Name: "p", Approval: &Approval{Mode: c.mode}, Rules: []Rule{
			{Name: "read", Effect: EffectAllow, Actions: []string{"mcp:s.read"}},
			{Name: "delete", Effect: EffectRequireApproval, Actions: []string{"mcp:s.delete"}},
			{Name: "wipe", Effect: EffectDeny, Actions: []string{"mcp:s.wipe"}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		if got := p.MayAllow("a", c.action); got != c.mayAllow {
			t.Errorf("%s %s: MayAllow %v, want %v", c.mode, c.action, got, c.mayAllow)
		}
		if got := p.MayRun("a", c.action); got != c.mayRun {
			t.Errorf("%s %s: MayRun %v, want %v", c.mode, c.action, got, c.mayRun)
		}
	}
}
