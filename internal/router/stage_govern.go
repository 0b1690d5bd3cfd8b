package router

import (
	"net/http"

	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/inference"
)

// governStage evaluates the action "inference:<op>:<model>" for each
// candidate target and keeps only the allowed ones, so that a fallback the
// policy forbids is never called. The call's decision is the first
// candidate's (or, if that one is denied, the first allowed fallback's).
type governStage struct{ r *Router }

func (governStage) Name() string { return "govern" }

func (s governStage) Serve(c *Call, next func(*Call)) {
	// Deciding is kept out of this frame, which stays on the stack while
	// the rest of the call (a stream, for minutes) runs.
	if s.decide(c) {
		next(c)
	}
}

// decide keeps the allowed candidates, or refuses the call and reports
// false.
func (s governStage) decide(c *Call) bool {
	var allowed []*upstream // built only once a candidate is denied
	var first governance.Decision
	var firstAction string
	for i, u := range c.Candidates {
		action := u.action(c.Route.Op)
		// The request lives in the call, which is on the heap already.
		c.govReq = governance.Request{Agent: c.Gen.agent, Action: action}
		d := c.Gen.gov.Decide(&c.govReq)
		s.r.metrics.decided(d.Verdict)
		if i == 0 || (!first.Allowed() && d.Allowed()) {
			first, firstAction = d, action
		}
		switch {
		case !d.Allowed() && allowed == nil:
			allowed = append(make([]*upstream, 0, len(c.Candidates)), c.Candidates[:i]...)
		case d.Allowed() && allowed != nil:
			allowed = append(allowed, u)
		}
	}
	if allowed == nil {
		allowed = c.Candidates // every one allowed
	}
	c.Decision, c.Action = first, firstAction
	if len(allowed) == 0 {
		status, typ, code := http.StatusForbidden, "permission_denied", "kars_policy_denied"
		switch c.Decision.Verdict {
		case governance.RateLimited:
			status, typ, code = http.StatusTooManyRequests, "rate_limit_exceeded", "kars_policy_rate_limited"
		case governance.RequireApproval:
			code = "kars_policy_requires_approval"
		}
		c.Refuse(&inference.APIError{Status: status, Type: typ, Code: code, Retryable: status == http.StatusTooManyRequests,
			Message: "kars policy: " + c.Action + " is " + c.Decision.Verdict.String() + " (rule " + c.Decision.Rule + "): " + c.Decision.Reason})
		return false
	}
	c.Candidates = allowed
	return true
}
