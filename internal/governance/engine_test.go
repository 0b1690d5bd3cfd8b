package governance

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

func mustEngine(t *testing.T, pol *Policy, opts ...EngineOption) *Engine {
	t.Helper()
	e := NewEngine(opts...)
	if err := e.Load(pol); err != nil {
		t.Fatalf("Load: %v", err)
	}
	return e
}

type decideCase struct {
	name    string
	agent   string
	action  string
	args    map[string]any
	verdict Verdict
	rule    string // expected matched rule ("" = none)
	reason  string // substring the reason must contain
}

func runDecide(t *testing.T, e *Engine, cases []decideCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			agent := tc.agent
			if agent == "" {
				agent = "agent-1"
			}
			d := e.Decide(&Request{Agent: agent, Action: tc.action, Args: tc.args})
			if d.Verdict != tc.verdict || d.Rule != tc.rule {
				t.Fatalf("Decide(%q) = %s by %q (%s); want %s by %q", tc.action, d.Verdict, d.Rule, d.Reason, tc.verdict, tc.rule)
			}
			if d.Reason == "" {
				t.Fatal("decision has no reason")
			}
			if tc.reason != "" && !strings.Contains(d.Reason, tc.reason) {
				t.Fatalf("reason %q does not mention %q", d.Reason, tc.reason)
			}
		})
	}
}

func TestDecidePrioritiesAndDenyOverrides(t *testing.T) {
	e := mustEngine(t, &Policy{Rules: []Rule{
		{Name: "allow-tools", Effect: EffectAllow, Actions: []string{"tool:*"}},
		{Name: "deny-delete", Effect: EffectDeny, Actions: []string{"tool:delete_*"}},
		{Name: "allow-delete-tmp", Effect: EffectAllow, Actions: []string{"tool:delete_tmp"}, Priority: 10},
		{Name: "equal-allow", Effect: EffectAllow, Actions: []string{"shell:git"}, Priority: 5},
		{Name: "equal-deny", Effect: EffectDeny, Actions: []string{"shell:*"}, Priority: 5},
		{Name: "equal-approval", Effect: EffectRequireApproval, Actions: []string{"mcp:github.*"}, Priority: 3},
		{Name: "equal-allow-mcp", Effect: EffectAllow, Actions: []string{"mcp:github.create_issue"}, Priority: 3},
		{Name: "deny-beats-approval", Effect: EffectDeny, Actions: []string{"mcp:github.delete_repo"}, Priority: 3},
		{Name: "low-allow-egress", Effect: EffectAllow, Actions: []string{"egress:*"}, Priority: 1},
		{Name: "high-deny-metadata", Effect: EffectDeny, Actions: []string{"egress:169.254.169.254:*"}, Priority: 100},
	}})
	runDecide(t, e, []decideCase{
		{name: "plain allow", action: "tool:web_search", verdict: Allow, rule: "allow-tools"},
		{name: "deny at equal priority beats allow", action: "tool:delete_file", verdict: Deny, rule: "deny-delete"},
		{name: "higher priority allow beats deny", action: "tool:delete_tmp", verdict: Allow, rule: "allow-delete-tmp"},
		{name: "exact allow loses to equal-priority deny glob", action: "shell:git", verdict: Deny, rule: "equal-deny"},
		{name: "approval beats allow at equal priority", action: "mcp:github.create_issue", verdict: RequireApproval, rule: "equal-approval", reason: "1 approval(s)"},
		{name: "deny beats approval at equal priority", action: "mcp:github.delete_repo", verdict: Deny, rule: "deny-beats-approval"},
		{name: "high priority deny on glob", action: "egress:169.254.169.254:80", verdict: Deny, rule: "high-deny-metadata"},
		{name: "low priority allow elsewhere", action: "egress:api.github.com:443", verdict: Allow, rule: "low-allow-egress"},
		{name: "no rule matches", action: "memory:write", verdict: Deny, rule: "", reason: "no rule matches"},
	})
}

func TestDecideGlobs(t *testing.T) {
	e := mustEngine(t, &Policy{Rules: []Rule{
		{Name: "gh", Effect: EffectAllow, Actions: []string{"egress:*.github.com:443"}, Priority: 1},
		{Name: "gpt", Effect: EffectAllow, Actions: []string{"inference:chat:gpt-?.1"}, Priority: 1},
		{Name: "mcp-read", Effect: EffectAllow, Actions: []string{"mcp:*.read_*"}, Priority: 1},
		{Name: "spawn", Effect: EffectAllow, Actions: []string{"spawn:create:*"}, Priority: 1},
		{Name: "mem", Effect: EffectAllow, Actions: []string{"m*:read"}, Priority: 1},
		// A catch-all deny at priority 0 loses to the allows at priority 1.
		{Name: "everything-else", Effect: EffectDeny, Actions: []string{"*"}},
	}})
	runDecide(t, e, []decideCase{
		{name: "star spans dots", action: "egress:api.github.com:443", verdict: Allow, rule: "gh"},
		{name: "star needs the literal suffix", action: "egress:api.github.com:80", verdict: Deny, rule: "everything-else"},
		{name: "star does not match empty host part", action: "egress:github.com:443", verdict: Deny, rule: "everything-else"},
		{name: "question mark one byte", action: "inference:chat:gpt-4.1", verdict: Allow, rule: "gpt"},
		{name: "question mark not two bytes", action: "inference:chat:gpt-40.1", verdict: Deny, rule: "everything-else"},
		{name: "inner star", action: "mcp:fs.read_file", verdict: Allow, rule: "mcp-read"},
		{name: "inner star miss", action: "mcp:fs.write_file", verdict: Deny, rule: "everything-else"},
		{name: "wildcard in namespace", action: "memory:read", verdict: Allow, rule: "mem"},
		{name: "wildcard in namespace other ns", action: "mesh:send:peer", verdict: Deny, rule: "everything-else"},
		{name: "spawn kind", action: "spawn:create:sandbox", verdict: Allow, rule: "spawn"},
	})
}

func TestDecideMalformedActions(t *testing.T) {
	e := mustEngine(t, &Policy{Rules: []Rule{{Name: "all", Effect: EffectAllow, Actions: []string{"*"}}}})
	long := "tool:" + strings.Repeat("a", MaxActionLen)
	cases := []decideCase{{name: "well formed passes", action: "tool:x", verdict: Allow, rule: "all"}}
	for _, bad := range []struct{ name, action, reason string }{
		{"empty", "", "empty"},
		{"too long", long, "256 bytes"},
		{"no namespace", "web_search", "missing namespace"},
		{"unknown namespace", "file:read", "unknown namespace"},
		{"empty name", "tool:", "empty name"},
		{"wildcard in action", "tool:*", "wildcards"},
		{"control byte", "tool:a\nb", "printable"},
		{"non-ascii", "tool:caf\xc3\xa9", "printable"},
		{"space outside shell", "tool:web search", "spaces only"},
		{"inference needs model", "inference:chat", "inference:<op>:<model>"},
		{"mcp needs dot", "mcp:github", "mcp:<server>.<tool>"},
		{"egress port zero", "egress:example.com:0", "port"},
		{"egress port too big", "egress:example.com:65536", "port"},
		{"egress leading zero", "egress:example.com:0443", "port"},
		{"egress bare v6", "egress:::1:443", "egress"},
		{"mesh verb", "mesh:recv:peer", "mesh:send:<peer>"},
		{"mesh receive needs a peer", "mesh:receive:", "mesh:receive:<peer>"},
		{"spawn verb", "spawn:delete:x", "spawn:create:<kind>"},
		{"tool with colon", "tool:a:b", "single name"},
	} {
		cases = append(cases, decideCase{name: bad.name, action: bad.action, verdict: Deny, reason: bad.reason})
	}
	cases = append(cases,
		decideCase{name: "shell may hold spaces", action: "shell:git status", verdict: Allow, rule: "all"},
		decideCase{name: "mesh receive", action: "mesh:receive:worker", verdict: Allow, rule: "all"},
		decideCase{name: "bracketed v6", action: "egress:[::1]:443", verdict: Allow, rule: "all"},
		decideCase{name: "model with colon", action: "inference:chat:llama3:8b", verdict: Allow, rule: "all"},
		decideCase{name: "exactly 256 bytes", action: long[:MaxActionLen], verdict: Allow, rule: "all"},
	)
	runDecide(t, e, cases)
}

func TestDecideCELConditions(t *testing.T) {
	e := mustEngine(t, &Policy{Rules: []Rule{
		{Name: "big-transfers", Effect: EffectDeny, Actions: []string{"tool:transfer"}, Priority: 10,
			Conditions: []Condition{{Expression: "args.amount > 1000", Message: "transfers above 1000 are blocked"}}},
		{Name: "internal-only", Effect: EffectAllow, Actions: []string{"tool:transfer"},
			Conditions: []Condition{{Expression: `args.to.endsWith("@corp.example")`}, {Expression: `agent == "payer"`}}},
		{Name: "read-own-prefix", Effect: EffectAllow, Actions: []string{"memory:*"},
			Conditions: []Condition{{Expression: `action == "memory:read"`}}},
	}})
	runDecide(t, e, []decideCase{
		{name: "condition true on deny", agent: "payer", action: "tool:transfer", args: map[string]any{"amount": 5000.0, "to": "x@corp.example"}, verdict: Deny, rule: "big-transfers", reason: "above 1000 are blocked"},
		{name: "int compares with double", agent: "payer", action: "tool:transfer", args: map[string]any{"amount": 1001, "to": "x@corp.example"}, verdict: Deny, rule: "big-transfers"},
		{name: "allow when all conditions hold", agent: "payer", action: "tool:transfer", args: map[string]any{"amount": 10.0, "to": "x@corp.example"}, verdict: Allow, rule: "internal-only"},
		{name: "second condition false", agent: "other", action: "tool:transfer", args: map[string]any{"amount": 10.0, "to": "x@corp.example"}, verdict: Deny, rule: ""},
		{name: "first condition false", agent: "payer", action: "tool:transfer", args: map[string]any{"amount": 10.0, "to": "x@evil.example"}, verdict: Deny, rule: ""},
		{name: "missing key fails closed on deny rule", agent: "payer", action: "tool:transfer", args: map[string]any{"to": "x@corp.example"}, verdict: Deny, rule: "big-transfers"},
		{name: "nil args fails closed", agent: "payer", action: "tool:transfer", verdict: Deny, rule: "big-transfers"},
		{name: "type error never allows", agent: "payer", action: "tool:transfer", args: map[string]any{"amount": 1.0, "to": 42}, verdict: Deny, rule: ""},
		{name: "action variable", action: "memory:read", verdict: Allow, rule: "read-own-prefix"},
		{name: "action variable miss", action: "memory:write", verdict: Deny, rule: ""},
	})
}

func TestDecideApprovalModes(t *testing.T) {
	rules := []Rule{
		{Name: "pay", Effect: EffectAllow, Actions: []string{"tool:pay"}},
		{Name: "wire", Effect: EffectRequireApproval, Actions: []string{"tool:wire"}, MinApprovals: 3},
	}
	t.Run("never", func(t *testing.T) {
		e := mustEngine(t, &Policy{Rules: rules, Approval: &Approval{Mode: ApprovalNever}})
		runDecide(t, e, []decideCase{
			{name: "allowed", action: "tool:pay", args: map[string]any{"amount": 1e6}, verdict: Allow, rule: "pay"},
			{name: "rule still asks", action: "tool:wire", verdict: RequireApproval, rule: "wire", reason: "3 approval(s)"},
		})
	})
	t.Run("always", func(t *testing.T) {
		e := mustEngine(t, &Policy{Rules: rules, Approval: &Approval{Mode: ApprovalAlways, MinApprovals: 2, Approvers: []string{"alice", "bob"}, TimeoutSeconds: 60}})
		d := e.Decide(&Request{Agent: "a", Action: "tool:pay"})
		if d.Verdict != RequireApproval || d.Approval == nil || d.Approval.MinApprovals != 2 || len(d.Approval.Approvers) != 2 || d.Approval.Timeout != time.Minute {
			t.Fatalf("always mode: %+v approval %+v", d, d.Approval)
		}
		if d := e.Decide(&Request{Agent: "a", Action: "tool:wire"}); d.Approval == nil || d.Approval.MinApprovals != 3 {
			t.Fatalf("rule min approvals not kept: %+v", d.Approval)
		}
	})
	t.Run("aboveThreshold", func(t *testing.T) {
		e := mustEngine(t, &Policy{Rules: rules, Approval: &Approval{Mode: ApprovalAboveThreshold, Threshold: "100.50"}})
		runDecide(t, e, []decideCase{
			{name: "below", action: "tool:pay", args: map[string]any{"amount": 100.5}, verdict: Allow, rule: "pay"},
			{name: "above", action: "tool:pay", args: map[string]any{"amount": "100.51"}, verdict: RequireApproval, rule: "pay", reason: "above 100.5"},
			{name: "no amount", action: "tool:pay", verdict: Allow, rule: "pay"},
			{name: "unreadable amount denied", action: "tool:pay", args: map[string]any{"amount": "lots"}, verdict: Deny, rule: "pay", reason: "not a valid decimal"},
			{name: "negative amount denied", action: "tool:pay", args: map[string]any{"amount": -5.0}, verdict: Deny, rule: "pay", reason: "negative"},
		})
	})
}

func TestDecideRateLimits(t *testing.T) {
	e := mustEngine(t, &Policy{
		Rules: []Rule{
			{Name: "search", Effect: EffectAllow, Actions: []string{"tool:search"}, RateLimit: &RuleRateLimit{Requests: 2, WindowSeconds: 60}},
			{Name: "rest", Effect: EffectAllow, Actions: []string{"tool:*"}},
			{Name: "blocked", Effect: EffectDeny, Actions: []string{"tool:blocked"}},
		},
		RateLimit: &SandboxRateLimit{RequestsPerMinute: 5},
	})
	want := []Verdict{Allow, Allow, RateLimited}
	for i, v := range want {
		d := e.Decide(&Request{Agent: "a", Action: "tool:search"})
		if d.Verdict != v {
			t.Fatalf("search call %d: %s (%s), want %s", i, d.Verdict, d.Reason, v)
		}
		if v == RateLimited && (d.Rule != "search" || d.RetryAfter <= 0 || d.RetryAfter > 30*time.Second) {
			t.Fatalf("rate-limited decision %+v: want rule search and a retry within 30s", d)
		}
	}
	// The refused search still counted against the sandbox bucket? No: the
	// rule bucket refused first, so the sandbox bucket took 2 tokens.
	for i := range 3 {
		if d := e.Decide(&Request{Agent: "a", Action: "tool:other"}); d.Verdict != Allow {
			t.Fatalf("other call %d: %+v", i, d)
		}
	}
	d := e.Decide(&Request{Agent: "a", Action: "tool:other"})
	if d.Verdict != RateLimited || d.Rule != "sandbox rate limit" {
		t.Fatalf("sandbox limit not enforced: %+v", d)
	}
	if d := e.Decide(&Request{Agent: "a", Action: "tool:blocked"}); d.Verdict != Deny {
		t.Fatalf("deny must win over rate limiting: %+v", d)
	}
}

func TestDecideCommerceCaps(t *testing.T) {
	now := time.Date(2026, 3, 1, 23, 0, 0, 0, time.UTC)
	e := mustEngine(t, &Policy{
		Rules:    []Rule{{Name: "buy", Effect: EffectAllow, Actions: []string{"tool:buy"}}},
		Commerce: &Commerce{Currency: "EUR", MaxPerTransaction: "50", MaxDaily: "100", AmountArg: "price"},
	}, WithWallClock(func() time.Time { return now }))
	buy := func(price any, currency string) Decision {
		args := map[string]any{"price": price}
		if currency != "" {
			args["currency"] = currency
		}
		return e.Decide(&Request{Agent: "a", Action: "tool:buy", Args: args})
	}
	steps := []struct {
		price    any
		currency string
		verdict  Verdict
		reason   string
	}{
		{50.0, "", Allow, ""},
		{50.01, "", Deny, "per-transaction cap of 50 EUR"},
		{"40", "eur", Allow, ""}, // 90 spent
		{"10.000001", "", Deny, "daily cap of 100 EUR"},
		{10, "", Allow, ""}, // exactly 100
		{0.01, "USD", Deny, "currency"},
		{0.000001, "", Deny, "daily cap"},
	}
	for i, s := range steps {
		d := buy(s.price, s.currency)
		if d.Verdict != s.verdict || !strings.Contains(d.Reason, s.reason) {
			t.Fatalf("step %d (%v %s): %s %q, want %s containing %q", i, s.price, s.currency, d.Verdict, d.Reason, s.verdict, s.reason)
		}
	}
	now = now.Add(2 * time.Hour) // next UTC day
	if d := buy(50, ""); d.Verdict != Allow {
		t.Fatalf("daily cap did not reset on a new UTC day: %+v", d)
	}
	// Reloading the same policy must not reset today's spending.
	if err := e.Load(e.profilePolicyForTest(t)); err != nil {
		t.Fatal(err)
	}
	if d := buy(50, ""); d.Verdict != Allow {
		t.Fatalf("second 50 of the day: %+v", d)
	}
	if d := buy(1, ""); d.Verdict != Deny {
		t.Fatalf("reload reset the daily cap: %+v", d)
	}
}

// profilePolicyForTest rebuilds the commerce policy used above.
func (e *Engine) profilePolicyForTest(t *testing.T) *Policy {
	t.Helper()
	return &Policy{
		Rules:    []Rule{{Name: "buy", Effect: EffectAllow, Actions: []string{"tool:buy"}}},
		Commerce: &Commerce{Currency: "EUR", MaxPerTransaction: "50", MaxDaily: "100", AmountArg: "price"},
	}
}

func TestDecideAgentScope(t *testing.T) {
	e := mustEngine(t, &Policy{Agents: []string{"team-a-*"}, Rules: []Rule{{Name: "all", Effect: EffectAllow, Actions: []string{"*"}}}})
	runDecide(t, e, []decideCase{
		{name: "in scope", agent: "team-a-7", action: "tool:x", verdict: Allow, rule: "all"},
		{name: "out of scope", agent: "team-b-1", action: "tool:x", verdict: Deny, reason: "does not apply"},
	})
}

func TestNoPolicyDeniesEverything(t *testing.T) {
	d := NewEngine().Decide(&Request{Agent: "a", Action: "tool:x"})
	if d.Verdict != Deny || !strings.Contains(d.Reason, "no policy") {
		t.Fatalf("empty engine: %+v", d)
	}
}

func TestHotReloadKeepsLastGoodProfile(t *testing.T) {
	e := mustEngine(t, &Policy{Name: "v1", Rules: []Rule{
		{Name: "search", Effect: EffectAllow, Actions: []string{"tool:search"}, RateLimit: &RuleRateLimit{Requests: 1, WindowSeconds: 3600}},
	}})
	if d := e.Decide(&Request{Agent: "a", Action: "tool:search"}); d.Verdict != Allow {
		t.Fatalf("v1: %+v", d)
	}
	digest := e.Profile().Digest()
	err := e.Load(&Policy{Name: "broken", Rules: []Rule{
		{Name: "ok", Effect: EffectAllow, Actions: []string{"tool:x"}},
		{Name: "bad", Effect: "permit", Actions: []string{"tools:*", "tool:y"}, Priority: 20000},
	}})
	var pe *PolicyError
	if !errors.As(err, &pe) {
		t.Fatalf("broken policy accepted or wrong error type: %v", err)
	}
	for _, want := range []string{"rules[1].effect", "rules[1].priority", "rules[1].actions[0]"} {
		found := false
		for _, fe := range pe.Errs {
			found = found || fe.Field == want
		}
		if !found {
			t.Errorf("error list %v lacks %s", pe.Errs, want)
		}
	}
	if e.Profile().Name() != "v1" || e.Profile().Digest() != digest {
		t.Fatal("a rejected policy replaced the one in force")
	}
	// Reloading with the same rule and limit keeps the spent bucket.
	if err := e.Load(&Policy{Name: "v2", Rules: []Rule{
		{Name: "search", Effect: EffectAllow, Actions: []string{"tool:search", "tool:lookup"}, RateLimit: &RuleRateLimit{Requests: 1, WindowSeconds: 3600}},
	}}); err != nil {
		t.Fatal(err)
	}
	if e.Profile().Name() != "v2" || e.Profile().Digest() == digest {
		t.Fatal("valid reload did not take effect")
	}
	if d := e.Decide(&Request{Agent: "a", Action: "tool:lookup"}); d.Verdict != RateLimited {
		t.Fatalf("reload refilled the rate-limit bucket: %+v", d)
	}
}

func TestCompileRejects(t *testing.T) {
	ok := Rule{Name: "r", Effect: EffectAllow, Actions: []string{"tool:x"}}
	tests := []struct {
		name  string
		pol   Policy
		field string
	}{
		{"no rules", Policy{}, "rules"},
		{"no actions", Policy{Rules: []Rule{{Name: "r", Effect: EffectAllow}}}, "rules[0].actions"},
		{"no name", Policy{Rules: []Rule{{Effect: EffectAllow, Actions: []string{"tool:x"}}}}, "rules[0].name"},
		{"pattern without namespace", Policy{Rules: []Rule{{Name: "r", Effect: EffectAllow, Actions: []string{"data.read"}}}}, "rules[0].actions[0]"},
		{"pattern bad prefix", Policy{Rules: []Rule{{Name: "r", Effect: EffectAllow, Actions: []string{"x*"}}}}, "rules[0].actions[0]"},
		{"bad CEL", Policy{Rules: []Rule{{Name: "r", Effect: EffectAllow, Actions: []string{"tool:x"}, Conditions: []Condition{{Expression: "args.a >"}}}}}, "rules[0].conditions[0].expression"},
		{"non-bool CEL", Policy{Rules: []Rule{{Name: "r", Effect: EffectAllow, Actions: []string{"tool:x"}, Conditions: []Condition{{Expression: "1 + 2"}}}}}, "rules[0].conditions[0].expression"},
		{"rate limit on deny", Policy{Rules: []Rule{{Name: "r", Effect: EffectDeny, Actions: []string{"tool:x"}, RateLimit: &RuleRateLimit{Requests: 1, WindowSeconds: 1}}}}, "rules[0].rateLimit"},
		{"threshold without mode", Policy{Rules: []Rule{ok}, Approval: &Approval{Mode: ApprovalAboveThreshold}}, "approval.threshold"},
		{"bad mode", Policy{Rules: []Rule{ok}, Approval: &Approval{Mode: "sometimes"}}, "approval.mode"},
		{"too few approvers", Policy{Rules: []Rule{ok}, Approval: &Approval{Mode: ApprovalAlways, MinApprovals: 3, Approvers: []string{"a"}}}, "approval.minApprovals"},
		{"bad currency", Policy{Rules: []Rule{ok}, Commerce: &Commerce{Currency: "euro"}}, "commerce.currency"},
		{"bad cap", Policy{Rules: []Rule{ok}, Commerce: &Commerce{MaxDaily: "1e6"}}, "commerce.maxDaily"},
		{"too precise cap", Policy{Rules: []Rule{ok}, Commerce: &Commerce{MaxPerTransaction: "0.0000001"}}, "commerce.maxPerTransaction"},
		{"sandbox limit", Policy{Rules: []Rule{ok}, RateLimit: &SandboxRateLimit{}}, "rateLimit.requestsPerMinute"},
		{"agent pattern", Policy{Rules: []Rule{ok}, Agents: []string{"a b"}}, "agents[0]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(&tc.pol)
			var pe *PolicyError
			if !errors.As(err, &pe) {
				t.Fatalf("Compile accepted it: %v", err)
			}
			for _, fe := range pe.Errs {
				if fe.Field == tc.field {
					return
				}
			}
			t.Fatalf("errors %v do not name %s", pe.Errs, tc.field)
		})
	}
}

func TestDecideHotPathDoesNotAllocate(t *testing.T) {
	e := mustEngine(t, benchPolicy(100))
	reqs := benchRequests()
	i := 0
	allocs := testing.AllocsPerRun(2000, func() {
		e.Decide(&reqs[i%len(reqs)])
		i++
	})
	if allocs != 0 {
		t.Fatalf("Decide allocates %.2f times per call on the hot path", allocs)
	}
}

// Decisions racing a stream of reloads each see one whole profile: never a
// mix, never a missing one.
func TestDecideDuringHotReload(t *testing.T) {
	allowV1 := &Policy{Name: "v1", Rules: []Rule{{Name: "v1-allow", Effect: EffectAllow, Actions: []string{"tool:*"}}}}
	denyV2 := &Policy{Name: "v2", Rules: []Rule{
		{Name: "v2-deny", Effect: EffectDeny, Actions: []string{"tool:*"}},
		{Name: "v2-allow", Effect: EffectAllow, Actions: []string{"tool:*"}},
	}}
	e := mustEngine(t, allowV1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				d := e.Decide(&Request{Agent: "a", Action: "tool:x"})
				if !(d.Verdict == Allow && d.Rule == "v1-allow") && !(d.Verdict == Deny && d.Rule == "v2-deny") {
					t.Errorf("decision from no single profile: %+v", d)
					return
				}
			}
		})
	}
	for i := range 200 {
		pol := allowV1
		if i%2 == 0 {
			pol = denyV2
		}
		if err := e.Load(pol); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}
