package governance

import (
	"testing"
	"time"

	"github.com/kars-io/kars/internal/ratelimit"
)

func TestThrottleScopesAndRunTimeAdjustment(t *testing.T) {
	e := mustEngine(t, &Policy{Rules: []Rule{
		{Name: "tools", Effect: EffectAllow, Actions: []string{"tool:*", "egress:*"}},
		{Name: "no-shell", Effect: EffectDeny, Actions: []string{"shell:*"}},
	}})
	lim := ratelimit.NewLimiter(ratelimit.Limits{
		Global:   ratelimit.Limit{Events: 100, Per: time.Hour},
		PerAgent: ratelimit.Limit{Events: 4, Per: time.Hour},
		PerTool:  ratelimit.Limit{Events: 2, Per: time.Hour},
	})
	th := &Throttle{Next: e, Limiter: lim}
	steps := []struct {
		agent, action string
		verdict       Verdict
		rule          string
	}{
		{"a", "tool:search", Allow, "tools"},
		{"a", "tool:search", Allow, "tools"},
		{"a", "tool:search", RateLimited, "rate-limit:tool"},
		{"b", "tool:search", RateLimited, "rate-limit:tool"}, // tool buckets are shared
		{"a", "egress:x.example:443", Allow, "tools"},        // no tool bucket for egress
		{"a", "shell:ls", Deny, "no-shell"},                  // refused calls are not charged
		{"a", "egress:y.example:443", RateLimited, "rate-limit:agent"},
		{"b", "tool:fetch", Allow, "tools"},
	}
	for i, s := range steps {
		d := th.Decide(&Request{Agent: s.agent, Action: s.action})
		if d.Verdict != s.verdict || d.Rule != s.rule {
			t.Fatalf("step %d %s %s: %s by %q (%s)", i, s.agent, s.action, d.Verdict, d.Rule, d.Reason)
		}
		if d.Verdict == RateLimited && d.RetryAfter <= 0 {
			t.Fatalf("step %d: no retry hint", i)
		}
	}
	lim.SetPerTool(ratelimit.Limit{})
	lim.SetPerAgent(ratelimit.Limit{})
	if d := th.Decide(&Request{Agent: "a", Action: "tool:search"}); d.Verdict != Allow {
		t.Fatalf("limits lifted at run time still refuse: %+v", d)
	}
	lim.SetGlobal(ratelimit.Limit{Events: 1, Per: time.Hour})
	if d := th.Decide(&Request{Agent: "c", Action: "tool:new"}); d.Verdict != RateLimited || d.Rule != "rate-limit:global" {
		t.Fatalf("tightened global limit not applied: %+v", d)
	}
}

func TestThrottleDoesNotAllocate(t *testing.T) {
	e := mustEngine(t, &Policy{Rules: []Rule{{Name: "tools", Effect: EffectAllow, Actions: []string{"tool:*"}}}})
	lim := ratelimit.NewLimiter(ratelimit.Limits{PerAgent: ratelimit.Limit{Events: 1 << 30, Per: time.Second}})
	th := &Throttle{Next: e, Limiter: lim}
	req := &Request{Agent: "a", Action: "tool:x"}
	th.Decide(req)
	if n := testing.AllocsPerRun(1000, func() { th.Decide(req) }); n != 0 {
		t.Fatalf("Throttle.Decide allocates %.1f times per call", n)
	}
}
