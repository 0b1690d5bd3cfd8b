package governance

import (
	"strings"

	"github.com/kars-io/kars/internal/ratelimit"
)

// Throttle applies run-time adjustable token buckets — one global, one per
// agent, one per tool — to the calls Next allows. Calls Next refuses are
// not charged. Tool buckets cover the tool: and mcp: namespaces, keyed by
// the whole action; other namespaces are limited per agent and globally
// only, since egress hosts or models are not tools and would only crowd the
// limiter's bounded key space.
type Throttle struct {
	Next    DecisionProvider
	Limiter *ratelimit.Limiter
}

// throttled holds the decision for each refusing scope, so that a refusal
// only copies a struct.
var throttled = [...]Decision{
	ratelimit.ScopeGlobal: {Verdict: RateLimited, Rule: "rate-limit:global", Reason: "the global rate limit is exhausted"},
	ratelimit.ScopeAgent:  {Verdict: RateLimited, Rule: "rate-limit:agent", Reason: "this agent's rate limit is exhausted"},
	ratelimit.ScopeTool:   {Verdict: RateLimited, Rule: "rate-limit:tool", Reason: "this tool's rate limit is exhausted"},
}

// Decide implements DecisionProvider.
func (t *Throttle) Decide(req *Request) Decision {
	d := t.Next.Decide(req)
	if d.Verdict != Allow {
		return d
	}
	tool := ""
	if strings.HasPrefix(req.Action, "tool:") || strings.HasPrefix(req.Action, "mcp:") {
		tool = req.Action
	}
	r := t.Limiter.Allow(req.Agent, tool)
	if r.Allowed {
		return d
	}
	out := throttled[r.Scope]
	out.RetryAfter = r.RetryAfter
	return out
}
