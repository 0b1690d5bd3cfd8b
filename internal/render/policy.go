package render

import (
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/governance"
)

// GovernancePolicy converts a ToolPolicy into the governance engine's input.
// The engine's Policy mirrors the CRD field by field, so the conversion is a
// copy; the CRD's validation has already bounded every list and number, and
// governance.Compile re-checks them (and compiles the CEL conditions) when
// the router config is validated.
func GovernancePolicy(tp *karsv1.ToolPolicy) *governance.Policy {
	s := tp.Spec
	p := &governance.Policy{Name: tp.Namespace + "/" + tp.Name}
	for _, r := range s.Rules {
		gr := governance.Rule{
			Name:     r.Name,
			Effect:   governance.Effect(r.Effect),
			Actions:  slices.Clone(r.Actions),
			Priority: r.Priority,
		}
		for _, c := range r.Conditions {
			gr.Conditions = append(gr.Conditions, governance.Condition{Expression: c.Expression, Message: c.Message})
		}
		if rl := r.RateLimit; rl != nil {
			gr.RateLimit = &governance.RuleRateLimit{Requests: rl.Requests, WindowSeconds: rl.WindowSeconds}
		}
		p.Rules = append(p.Rules, gr)
	}
	if a := s.Approval; a != nil {
		p.Approval = &governance.Approval{
			Mode:           string(a.Mode),
			Threshold:      string(a.Threshold),
			MinApprovals:   a.MinApprovals,
			Approvers:      slices.Clone(a.Approvers),
			TimeoutSeconds: a.TimeoutSeconds,
		}
	}
	if rl := s.RateLimit; rl != nil {
		p.RateLimit = &governance.SandboxRateLimit{RequestsPerMinute: rl.RequestsPerMinute, Burst: rl.Burst}
	}
	if c := s.Commerce; c != nil {
		p.Commerce = &governance.Commerce{
			Currency:          c.Currency,
			MaxPerTransaction: string(c.MaxPerTransaction),
			MaxDaily:          string(c.MaxDaily),
			AmountArg:         c.AmountArg,
		}
	}
	return p
}

// ToolPolicyApplies reports whether tp's appliesTo admits sb. An empty
// appliesTo admits every sandbox that references the policy; otherwise the
// sandbox must be named in appliesTo.sandboxes or match appliesTo.selector.
func ToolPolicyApplies(tp *karsv1.ToolPolicy, sb *karsv1.KarsSandbox) (bool, error) {
	at := tp.Spec.AppliesTo
	if len(at.Sandboxes) == 0 && at.Selector == nil {
		return true, nil
	}
	if slices.Contains(at.Sandboxes, sb.Name) {
		return true, nil
	}
	if at.Selector == nil {
		return false, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(at.Selector)
	if err != nil {
		return false, err
	}
	return sel.Matches(labels.Set(sb.Labels)), nil
}
