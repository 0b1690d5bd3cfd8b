// Package toolpolicy converts the ToolPolicy custom resource into the
// governance engine's Policy.
//
// It is the only governance package that imports the Kubernetes API types,
// so that the engine itself (internal/governance) stays free of k8s.io and
// the router, mesh and gateway can embed it without them. The controller
// calls FromSpec and ships the result, as JSON, in the router's config.
package toolpolicy

import (
	"slices"

	"github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/governance"
)

// FromSpec converts a ToolPolicySpec field by field. AppliesTo is not
// carried: choosing the sandboxes a policy reaches is the controller's job,
// done before the policy is shipped. The result is not validated; compile
// it (governance.Compile) to check it, which the router does on load.
func FromSpec(name string, spec *v1alpha1.ToolPolicySpec) *governance.Policy {
	pol := &governance.Policy{Name: name}
	for _, r := range spec.Rules {
		rule := governance.Rule{
			Name:     r.Name,
			Effect:   governance.Effect(r.Effect),
			Actions:  slices.Clone(r.Actions),
			Priority: r.Priority,
		}
		for _, c := range r.Conditions {
			rule.Conditions = append(rule.Conditions, governance.Condition{Expression: c.Expression, Message: c.Message})
		}
		if r.RateLimit != nil {
			rule.RateLimit = &governance.RuleRateLimit{Requests: r.RateLimit.Requests, WindowSeconds: r.RateLimit.WindowSeconds}
		}
		pol.Rules = append(pol.Rules, rule)
	}
	if a := spec.Approval; a != nil {
		pol.Approval = &governance.Approval{
			Mode:           string(a.Mode),
			Threshold:      string(a.Threshold),
			MinApprovals:   a.MinApprovals,
			Approvers:      slices.Clone(a.Approvers),
			TimeoutSeconds: a.TimeoutSeconds,
		}
	}
	if rl := spec.RateLimit; rl != nil {
		pol.RateLimit = &governance.SandboxRateLimit{RequestsPerMinute: rl.RequestsPerMinute, Burst: rl.Burst}
	}
	if c := spec.Commerce; c != nil {
		pol.Commerce = &governance.Commerce{
			Currency:          c.Currency,
			MaxPerTransaction: string(c.MaxPerTransaction),
			MaxDaily:          string(c.MaxDaily),
			AmountArg:         c.AmountArg,
		}
	}
	return pol
}
