package toolpolicy

import (
	"strings"
	"testing"

	"github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/governance"
)

func TestFromSpecDecidesLikeTheCRDSays(t *testing.T) {
	spec := &v1alpha1.ToolPolicySpec{
		Rules: []v1alpha1.ToolRule{
			{Name: "tools", Effect: v1alpha1.EffectAllow, Actions: []string{"tool:*"}},
			{Name: "no-shell", Effect: v1alpha1.EffectDeny, Actions: []string{"shell:*"}, Priority: 100},
			{Name: "big-pay", Effect: v1alpha1.EffectDeny, Actions: []string{"tool:pay"}, Priority: 50,
				Conditions: []v1alpha1.ToolCondition{{Expression: "args.amount > 500", Message: "payments above 500 are blocked"}}},
			{Name: "search", Effect: v1alpha1.EffectAllow, Actions: []string{"tool:search"}, Priority: 10,
				RateLimit: &v1alpha1.RuleRateLimit{Requests: 1, WindowSeconds: 60}},
		},
		Approval:  &v1alpha1.ToolApproval{Mode: v1alpha1.ApprovalAboveThreshold, Threshold: "100", MinApprovals: 2, Approvers: []string{"ops", "finance"}, TimeoutSeconds: 900},
		RateLimit: &v1alpha1.ToolRateLimit{RequestsPerMinute: 600, Burst: 50},
		Commerce:  &v1alpha1.CommerceLimits{Currency: "USD", MaxPerTransaction: "1000", MaxDaily: "2000.50", AmountArg: "amount"},
	}
	pol := FromSpec("default/research", spec)
	e := governance.NewEngine()
	if err := e.Load(pol); err != nil {
		t.Fatalf("converted policy does not compile: %v", err)
	}
	tests := []struct {
		action  string
		args    map[string]any
		verdict governance.Verdict
		rule    string
	}{
		{"tool:read", nil, governance.Allow, "tools"},
		{"shell:ls", nil, governance.Deny, "no-shell"},
		{"tool:pay", map[string]any{"amount": 600.0}, governance.Deny, "big-pay"},
		{"tool:pay", map[string]any{"amount": 150.0}, governance.RequireApproval, "tools"},
		{"tool:pay", map[string]any{"amount": 50.0}, governance.Allow, "tools"},
		{"tool:search", nil, governance.Allow, "search"},
		{"tool:search", nil, governance.RateLimited, "search"},
	}
	for i, tc := range tests {
		d := e.Decide(&governance.Request{Agent: "a", Action: tc.action, Args: tc.args})
		if d.Verdict != tc.verdict || d.Rule != tc.rule {
			t.Fatalf("%d %s: %s by %q (%s), want %s by %q", i, tc.action, d.Verdict, d.Rule, d.Reason, tc.verdict, tc.rule)
		}
	}
	d := e.Decide(&governance.Request{Agent: "a", Action: "tool:pay", Args: map[string]any{"amount": 200.0}})
	if d.Approval == nil || d.Approval.MinApprovals != 2 || strings.Join(d.Approval.Approvers, ",") != "ops,finance" || d.Approval.Timeout.Seconds() != 900 {
		t.Fatalf("approval requirement lost in conversion: %+v", d.Approval)
	}
	if pol.Commerce.MaxDaily != "2000.50" || pol.RateLimit.Burst != 50 || pol.Name != "default/research" {
		t.Fatalf("fields lost: %+v %+v", pol.Commerce, pol.RateLimit)
	}
}
