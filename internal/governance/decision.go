// Package governance decides whether an agent may perform an action.
//
// It owns the PolicyDecisionProvider seam (DecisionProvider) and the default
// engine behind it (Engine). Actions are namespaced strings — inference:,
// tool:, mcp:, shell:, egress:, a2a:, mesh:, memory:, spawn: — of at most 256
// bytes; CheckAction states their grammar, and a malformed action is denied
// with the reason.
//
// A Policy (plain JSON-serialisable values mirroring the ToolPolicy CRD, or
// converted from an Agent Governance Toolkit YAML profile by ParseAGT) is
// compiled once: globs are classified and indexed by namespace, CEL
// conditions are built, and every decision with its reason is rendered in
// advance. Deciding then walks the candidate rules of the action's
// namespace in evaluation order — higher priority first, and at equal
// priority deny before require-approval before allow — and the first rule
// that matches decides. No matching rule denies. Rate limits, the policy's
// approval mode and commerce caps apply to what a rule allows. Loading a new
// policy swaps the compiled profile atomically; a policy with any error is
// rejected whole, with every problem located, and the last good one stays.
//
// The hot path (no CEL condition on the deciding rule, no amount argument)
// takes no lock and allocates nothing. Providers compose: Throttle adds
// per-agent, per-tool and global token buckets (internal/ratelimit) that
// can be retuned at run time, and behavior.Guard adds quarantine.
//
// The package is pure Go. It must not import Kubernetes packages (the CRD
// converter lives in governance/toolpolicy), network packages, or anything
// under internal/ that performs I/O; TestGovernanceStackImports checks this.
package governance

import "time"

// Verdict is the outcome of a policy decision. The zero value is Deny so that
// an uninitialised decision fails closed.
type Verdict uint8

// The verdicts a DecisionProvider can return.
const (
	Deny Verdict = iota
	Allow
	RequireApproval
	RateLimited
)

// String returns the verdict's wire name, as written to the audit log.
func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case RequireApproval:
		return "require_approval"
	case RateLimited:
		return "rate_limited"
	default:
		return "deny"
	}
}

// Request is one action an agent wants to perform.
type Request struct {
	// Agent identifies the caller (the sandbox's agent id, or a mesh peer).
	Agent string
	// Action is a namespaced action string such as "inference:chat:gpt-4.1",
	// "tool:web_search" or "egress:api.github.com:443".
	Action string
	// Args are the action's arguments, consulted only by rules that carry
	// argument conditions. Nil on the hot path.
	Args map[string]any
}

// Decision is a verdict with the rule that produced it and a reason a person
// can read.
type Decision struct {
	Verdict Verdict
	// Rule names the matched rule; empty when no rule matched.
	Rule string
	// Reason explains the verdict in words.
	Reason string
	// Approval says who must approve when Verdict is RequireApproval; nil
	// otherwise. It is shared with the compiled policy: do not modify it.
	Approval *ApprovalRequirement
	// RetryAfter is how long a RateLimited caller should wait before trying
	// again; zero otherwise.
	RetryAfter time.Duration
}

// ApprovalRequirement describes the human approval a RequireApproval
// decision asks for.
type ApprovalRequirement struct {
	// MinApprovals is how many distinct approvers must agree (at least 1).
	MinApprovals int
	// Approvers may approve; empty means any operator.
	Approvers []string
	// Timeout after which an unanswered request counts as denied; zero
	// means the approval service's default.
	Timeout time.Duration
}

// Allowed reports whether the decision lets the action proceed now.
func (d Decision) Allowed() bool { return d.Verdict == Allow }

// DecisionProvider is the PolicyDecisionProvider seam: anything that can
// decide on a Request. Implementations must be safe for concurrent use and
// must fail closed (Deny) on any internal error.
type DecisionProvider interface {
	Decide(req *Request) Decision
}
