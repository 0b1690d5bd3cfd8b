package governance

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/kars-io/kars/internal/ratelimit"
)

// Profile is a compiled, immutable Policy: rules sorted into evaluation
// order, globs classified and indexed by namespace, CEL programs built and
// every reason string rendered in advance, so that deciding only compares
// strings. Rate-limit buckets are the one mutable part; they are lock-free.
type Profile struct {
	name   string
	source string
	digest string
	agents []string

	rules  []compiledRule
	byNS   [numNamespaces]nsIndex
	global []entry // patterns with a wildcard before the namespace colon

	approvalMode string
	threshold    int64
	sandbox      *ratelimit.Bucket
	sandboxDec   Decision
	commerce     *commerceLimits
}

// nsIndex holds the entries of one namespace: exact patterns by action, and
// glob patterns in evaluation order.
type nsIndex struct {
	exact map[string][]entry
	globs []entry
}

// entry is one (rule, pattern) pair with its decisions pre-rendered.
type entry struct {
	g    glob
	rule int32 // index into Profile.rules; lower is evaluated first
	dec  Decision
	// approvalDec and thresholdDec replace an allow when the policy's
	// approval mode is always, or aboveThreshold and the amount exceeds it.
	approvalDec, thresholdDec Decision
}

type compiledRule struct {
	name     string
	effect   Effect
	priority int32
	conds    []*condition
	limit    *ratelimit.Bucket
	limitDec Decision
}

type commerceLimits struct {
	currency     string
	arg          string
	perTx, daily int64
	perTxDec     Decision
	dailyDec     Decision
}

// Name returns the policy's name.
func (p *Profile) Name() string { return p.name }

// Digest returns "sha256:<hex>" of the policy's JSON form, so audit entries
// and status can say exactly which policy decided.
func (p *Profile) Digest() string { return p.digest }

// Rules returns how many rules the profile evaluates.
func (p *Profile) Rules() int { return len(p.rules) }

// Compile validates pol and compiles it. Every problem is reported, each with
// its field path; a policy with any problem yields a *PolicyError and no
// Profile.
func Compile(pol *Policy) (*Profile, error) { return compile(pol, "", nil, nil) }

// compile does the work of Compile. locate maps fields to a YAML source;
// prev, when set, donates rate-limit buckets to rules with the same name and
// limit so that reloading a policy does not hand out fresh bursts.
func compile(pol *Policy, source string, locate func(string) (string, int), prev *Profile) (*Profile, error) {
	el := &errList{locate: locate}
	if pol == nil {
		el.add("", "no policy")
		return nil, el.err(source)
	}
	p := &Profile{name: pol.Name, source: source}
	if len(pol.Name) > maxNameLen {
		el.add("name", "longer than %d bytes", maxNameLen)
	}
	p.agents = compileAgents(el, pol.Agents)
	approval := compileApproval(el, p, pol)
	compileSandboxLimit(el, p, pol.RateLimit, prev)
	compileCommerce(el, p, pol.Commerce)

	switch n := len(pol.Rules); {
	case n == 0:
		el.add("rules", "at least one rule is required (with no rules every action would be denied)")
	case n > MaxRules:
		el.add("rules", "%d rules; at most %d are allowed", n, MaxRules)
	}
	// Evaluation order: higher priority first; at equal priority the
	// stricter effect first (deny, then require-approval, then allow), so
	// that deny overrides allow; then source order.
	order := make([]int, len(pol.Rules))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		ra, rb := &pol.Rules[a], &pol.Rules[b]
		if ra.Priority != rb.Priority {
			return int(rb.Priority) - int(ra.Priority)
		}
		return strictness(rb.Effect) - strictness(ra.Effect)
	})
	for i := range p.byNS {
		p.byNS[i].exact = map[string][]entry{}
	}
	for pos, src := range order {
		compileRule(el, p, pol, int32(pos), src, approval, prev)
	}
	if err := el.err(source); err != nil {
		return nil, err
	}
	canon, err := json.Marshal(pol)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", source, err)
	}
	sum := sha256.Sum256(canon)
	p.digest = "sha256:" + hex.EncodeToString(sum[:])
	return p, nil
}

func strictness(e Effect) int {
	switch e {
	case EffectDeny:
		return 2
	case EffectRequireApproval:
		return 1
	}
	return 0
}

func compileAgents(el *errList, agents []string) []string {
	if len(agents) > maxAgentPatterns {
		el.add("agents", "%d patterns; at most %d are allowed", len(agents), maxAgentPatterns)
	}
	for i, a := range agents {
		if a == "" || len(a) > MaxActionLen {
			el.add(fmt.Sprintf("agents[%d]", i), "agent pattern must be 1 to %d bytes", MaxActionLen)
			continue
		}
		for j := 0; j < len(a); j++ {
			if c := a[j]; c <= 0x20 || c > 0x7e {
				el.add(fmt.Sprintf("agents[%d]", i), "agent pattern %q: only printable ASCII without spaces", a)
				break
			}
		}
	}
	if slices.Contains(agents, "*") {
		return nil // applies to everyone; skip matching
	}
	return agents
}

func compileApproval(el *errList, p *Profile, pol *Policy) *ApprovalRequirement {
	req := &ApprovalRequirement{MinApprovals: 1}
	a := pol.Approval
	if a == nil {
		p.approvalMode = ApprovalNever
		return req
	}
	switch a.Mode {
	case ApprovalNever, ApprovalAlways:
		if a.Threshold != "" {
			el.add("approval.threshold", "only meaningful with mode %s", ApprovalAboveThreshold)
		}
	case ApprovalAboveThreshold:
		t, err := parseDecimal(a.Threshold)
		if err != nil {
			el.add("approval.threshold", "mode %s needs a decimal threshold: %v", ApprovalAboveThreshold, err)
		}
		p.threshold = t
	default:
		el.add("approval.mode", "%q is not one of never, always, aboveThreshold", a.Mode)
	}
	p.approvalMode = a.Mode
	if a.MinApprovals < 0 || a.MinApprovals > maxApprovers {
		el.add("approval.minApprovals", "must be 0 to %d", maxApprovers)
	} else if a.MinApprovals > 0 {
		req.MinApprovals = int(a.MinApprovals)
	}
	if len(a.Approvers) > maxApprovers {
		el.add("approval.approvers", "at most %d approvers", maxApprovers)
	}
	for i, ap := range a.Approvers {
		if ap == "" {
			el.add(fmt.Sprintf("approval.approvers[%d]", i), "empty approver")
		}
	}
	if len(a.Approvers) > 0 && req.MinApprovals > len(a.Approvers) {
		el.add("approval.minApprovals", "needs %d approvals but names only %d approvers", req.MinApprovals, len(a.Approvers))
	}
	if a.TimeoutSeconds < 0 {
		el.add("approval.timeoutSeconds", "must not be negative")
	}
	req.Approvers = slices.Clone(a.Approvers)
	req.Timeout = time.Duration(a.TimeoutSeconds) * time.Second
	return req
}

func compileSandboxLimit(el *errList, p *Profile, rl *SandboxRateLimit, prev *Profile) {
	if rl == nil {
		return
	}
	if rl.RequestsPerMinute < 1 {
		el.add("rateLimit.requestsPerMinute", "must be at least 1")
		return
	}
	if rl.Burst < 0 {
		el.add("rateLimit.burst", "must not be negative")
		return
	}
	lim := ratelimit.Limit{Events: int(rl.RequestsPerMinute), Per: time.Minute, Burst: int(rl.Burst)}
	if prev != nil && prev.sandbox != nil && prev.sandbox.Limit() == lim {
		p.sandbox = prev.sandbox
	} else {
		p.sandbox = ratelimit.NewBucket(lim)
	}
	p.sandboxDec = Decision{Verdict: RateLimited, Rule: "sandbox rate limit",
		Reason: fmt.Sprintf("the sandbox's rate limit (%s) is exhausted", lim)}
}

func compileCommerce(el *errList, p *Profile, c *Commerce) {
	amountArg := defaultAmountArg
	if c == nil {
		if p.approvalMode == ApprovalAboveThreshold {
			p.commerce = &commerceLimits{arg: amountArg}
		}
		return
	}
	cl := &commerceLimits{arg: amountArg, currency: c.Currency}
	if c.AmountArg != "" {
		cl.arg = c.AmountArg
	}
	if c.Currency != "" && !isCurrencyCode(c.Currency) {
		el.add("commerce.currency", "%q is not a three-letter ISO 4217 code", c.Currency)
	}
	unit := ""
	if c.Currency != "" {
		unit = " " + c.Currency
	}
	cl.perTx, cl.perTxDec = compileCap(el, "commerce.maxPerTransaction", c.MaxPerTransaction, "exceeds the per-transaction cap of", unit)
	cl.daily, cl.dailyDec = compileCap(el, "commerce.maxDaily", c.MaxDaily, "would exceed the daily cap of", unit)
	p.commerce = cl
}

// compileCap parses one commerce cap ("" means none) and renders the
// denial it produces.
func compileCap(el *errList, field, value, says, unit string) (int64, Decision) {
	if value == "" {
		return 0, Decision{}
	}
	v, err := parseDecimal(value)
	if err != nil {
		el.add(field, "%v", err)
	}
	return v, Decision{Rule: "commerce", Reason: fmt.Sprintf("commerce: the amount %s %s%s", says, formatAmount(v), unit)}
}

func isCurrencyCode(s string) bool {
	if len(s) != 3 {
		return false
	}
	for i := 0; i < 3; i++ {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
}

func compileRule(el *errList, p *Profile, pol *Policy, pos int32, src int, approval *ApprovalRequirement, prev *Profile) {
	r := &pol.Rules[src]
	at := fmt.Sprintf("rules[%d]", src)
	cr := compiledRule{name: r.Name, effect: r.Effect, priority: r.Priority}
	if r.Name == "" || len(r.Name) > maxNameLen {
		el.add(at+".name", "rule name must be 1 to %d bytes", maxNameLen)
	}
	switch r.Effect {
	case EffectAllow, EffectDeny, EffectRequireApproval:
	default:
		el.add(at+".effect", "%q is not one of allow, deny, require-approval", r.Effect)
	}
	if r.Priority < 0 || r.Priority > MaxPriority {
		el.add(at+".priority", "%d is outside 0..%d", r.Priority, MaxPriority)
	}
	switch n := len(r.Actions); {
	case n == 0:
		el.add(at+".actions", "at least one action pattern is required")
	case n > MaxRuleActions:
		el.add(at+".actions", "%d patterns; at most %d are allowed", n, MaxRuleActions)
	}
	if len(r.Conditions) > MaxConditions {
		el.add(at+".conditions", "%d conditions; at most %d are allowed", len(r.Conditions), MaxConditions)
	}
	message := ""
	for i, c := range r.Conditions {
		cc, err := compileCondition(c)
		if err != nil {
			el.add(fmt.Sprintf("%s.conditions[%d].expression", at, i), "%v", err)
			continue
		}
		cr.conds = append(cr.conds, cc)
		if message == "" {
			message = c.Message
		}
	}
	ruleApproval := approval
	if r.MinApprovals != 0 {
		if r.Effect != EffectRequireApproval {
			el.add(at+".minApprovals", "only meaningful on a require-approval rule")
		} else if r.MinApprovals < 0 || r.MinApprovals > maxApprovers {
			el.add(at+".minApprovals", "must be 1 to %d", maxApprovers)
		} else {
			cp := *approval
			cp.MinApprovals = int(r.MinApprovals)
			ruleApproval = &cp
		}
	}
	if rl := r.RateLimit; rl != nil {
		switch {
		case r.Effect == EffectDeny:
			el.add(at+".rateLimit", "a deny rule grants nothing to rate-limit")
		case rl.Requests < 1 || rl.WindowSeconds < 1:
			el.add(at+".rateLimit", "requests and windowSeconds must both be at least 1")
		default:
			lim := ratelimit.Limit{Events: int(rl.Requests), Per: time.Duration(rl.WindowSeconds) * time.Second}
			cr.limit = donatedBucket(prev, r.Name, lim)
			cr.limitDec = Decision{Verdict: RateLimited, Rule: r.Name,
				Reason: fmt.Sprintf("rule %q: rate limit of %d per %ds exhausted", r.Name, rl.Requests, rl.WindowSeconds)}
		}
	}
	p.rules = append(p.rules, cr)
	for i, pat := range r.Actions {
		g, err := compileGlob(pat)
		if err != nil {
			el.add(fmt.Sprintf("%s.actions[%d]", at, i), "%v", err)
			continue
		}
		e := entry{g: g, rule: pos}
		e.dec, e.approvalDec, e.thresholdDec = renderDecisions(p, r, pat, message, ruleApproval, approval)
		switch {
		case g.ns == nsInvalid:
			p.global = append(p.global, e)
		case g.kind == globExact:
			p.byNS[g.ns].exact[pat] = append(p.byNS[g.ns].exact[pat], e)
		default:
			p.byNS[g.ns].globs = append(p.byNS[g.ns].globs, e)
		}
	}
}

// renderDecisions builds the decisions an entry can produce, reasons
// included, so that Decide never formats a string.
func renderDecisions(p *Profile, r *Rule, pat, message string, ruleApproval, policyApproval *ApprovalRequirement) (dec, approvalDec, thresholdDec Decision) {
	verb := map[Effect]string{EffectAllow: "allows", EffectDeny: "denies", EffectRequireApproval: "requires approval for"}[r.Effect]
	reason := fmt.Sprintf("rule %q (priority %d) %s %s", r.Name, r.Priority, verb, pat)
	if message != "" {
		reason = fmt.Sprintf("rule %q: %s", r.Name, message)
	}
	switch r.Effect {
	case EffectDeny:
		dec = Decision{Verdict: Deny, Rule: r.Name, Reason: reason}
	case EffectRequireApproval:
		dec = Decision{Verdict: RequireApproval, Rule: r.Name, Approval: ruleApproval,
			Reason: fmt.Sprintf("%s (%d approval(s) needed)", reason, ruleApproval.MinApprovals)}
	default:
		dec = Decision{Verdict: Allow, Rule: r.Name, Reason: reason}
		approvalDec = Decision{Verdict: RequireApproval, Rule: r.Name, Approval: policyApproval,
			Reason: fmt.Sprintf("%s, and the policy requires %d approval(s) for every allowed call", reason, policyApproval.MinApprovals)}
		thresholdDec = Decision{Verdict: RequireApproval, Rule: r.Name, Approval: policyApproval,
			Reason: fmt.Sprintf("%s, and amounts above %s need %d approval(s)", reason, formatAmount(p.threshold), policyApproval.MinApprovals)}
	}
	return dec, approvalDec, thresholdDec
}

// donatedBucket reuses the previous profile's bucket for a rule of the same
// name and limit, so a reload does not refill it.
func donatedBucket(prev *Profile, name string, lim ratelimit.Limit) *ratelimit.Bucket {
	if prev != nil {
		for i := range prev.rules {
			pr := &prev.rules[i]
			if pr.name == name && pr.limit != nil && pr.limit.Limit() == lim {
				return pr.limit
			}
		}
	}
	return ratelimit.NewBucket(lim)
}
