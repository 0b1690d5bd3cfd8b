package routerconfig

import "time"

// Approvals bounds how the router holds tool calls that a policy decided
// require_approval (docs/router.md, "Approvals"): a held call waits for a
// person's decision on the admin API, at most Timeout, and at most
// MaxPending calls wait at once.
type Approvals struct {
	// TimeoutMillis is how long a held call waits when the ToolPolicy's
	// approval.timeoutSeconds is not set; 0 means DefaultApprovalTimeout.
	TimeoutMillis int64 `json:"timeoutMillis,omitempty"`
	// MaxPending bounds the calls held at once; 0 means
	// DefaultMaxPendingApprovals. Beyond it a call that needs approval is
	// refused at once. Read when the router starts.
	MaxPending int `json:"maxPending,omitempty"`
}

// Approval bounds and defaults.
const (
	DefaultApprovalTimeout     = 2 * time.Minute
	MaxApprovalTimeout         = time.Hour
	DefaultMaxPendingApprovals = 64
	MaxPendingApprovalsLimit   = 1024
)

// ApprovalTimeout is the hold of a call whose rule sets no timeout of its
// own (ruleTimeout 0), or the rule's, bounded by MaxApprovalTimeout.
func (c *Config) ApprovalTimeout(ruleTimeout time.Duration) time.Duration {
	d := DefaultApprovalTimeout
	if c.Approvals != nil && c.Approvals.TimeoutMillis > 0 {
		d = time.Duration(c.Approvals.TimeoutMillis) * time.Millisecond
	}
	if ruleTimeout > 0 {
		d = ruleTimeout
	}
	return min(d, MaxApprovalTimeout)
}

// MaxPendingApprovals is the bound on held calls, applying the default.
func (c *Config) MaxPendingApprovals() int {
	if c.Approvals == nil || c.Approvals.MaxPending == 0 {
		return DefaultMaxPendingApprovals
	}
	return c.Approvals.MaxPending
}

func (a *Approvals) validate(bad func(field, format string, args ...any)) {
	if a == nil {
		return
	}
	if a.TimeoutMillis < 0 || time.Duration(a.TimeoutMillis)*time.Millisecond > MaxApprovalTimeout {
		bad("approvals.timeoutMillis", "%d is outside 0..%d", a.TimeoutMillis, MaxApprovalTimeout.Milliseconds())
	}
	if a.MaxPending < 0 || a.MaxPending > MaxPendingApprovalsLimit {
		bad("approvals.maxPending", "%d is outside 0..%d", a.MaxPending, MaxPendingApprovalsLimit)
	}
}
