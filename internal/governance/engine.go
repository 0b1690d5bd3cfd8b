package governance

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kars-io/kars/internal/ratelimit"
)

// Engine is the default DecisionProvider. It evaluates the compiled Profile
// in force; Load swaps in a new one atomically, so a reload never blocks or
// tears a decision in flight. The zero Engine is not usable; use NewEngine.
//
// Deciding takes no locks and allocates nothing, unless the deciding rule
// carries a CEL condition or the call carries an amount argument (commerce
// caps keep the day's total under a mutex).
type Engine struct {
	cur    atomic.Pointer[Profile]
	loadMu sync.Mutex // orders reloads, so each compiles against the last
	clock  ratelimit.Clock
	now    func() time.Time

	// spend tracks commerce amounts allowed today. It is only touched by
	// calls that carry an amount, so a mutex here stays off the hot path.
	spendMu  sync.Mutex
	spendDay int64 // days since the Unix epoch, UTC
	spent    int64 // millionths allowed on spendDay
}

// EngineOption configures an Engine.
type EngineOption func(*Engine)

// WithWallClock sets the wall clock used to find the UTC day for commerce
// daily caps. Tests use it; production keeps time.Now.
func WithWallClock(now func() time.Time) EngineOption {
	return func(e *Engine) { e.now = now }
}

// NewEngine returns an Engine with no policy loaded: it denies everything
// until Load succeeds.
func NewEngine(opts ...EngineOption) *Engine {
	e := &Engine{clock: ratelimit.NewClock(), now: time.Now}
	for _, o := range opts {
		o(e)
	}
	return e
}

// Load compiles pol and, if it is valid, puts it in force. An invalid policy
// is rejected as a whole with a *PolicyError and the previous profile stays
// in force.
func (e *Engine) Load(pol *Policy) error { return e.LoadFrom("", pol) }

// LoadFrom is Load with a source name (a file, an object) for errors.
func (e *Engine) LoadFrom(source string, pol *Policy) error {
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	p, err := compile(pol, source, nil, e.cur.Load())
	if err != nil {
		return err
	}
	e.cur.Store(p)
	return nil
}

// LoadAGT parses an Agent Governance Toolkit YAML profile and puts it in
// force, with errors located by line.
func (e *Engine) LoadAGT(source string, yamlDoc []byte) error {
	pol, locate, err := parseAGT(source, yamlDoc)
	if err != nil {
		return err
	}
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	p, err := compile(pol, source, locate, e.cur.Load())
	if err != nil {
		return err
	}
	e.cur.Store(p)
	return nil
}

// Profile returns the compiled profile in force, or nil.
func (e *Engine) Profile() *Profile { return e.cur.Load() }

// Decide implements DecisionProvider.
func (e *Engine) Decide(req *Request) Decision {
	p := e.cur.Load()
	if p == nil {
		return Decision{Reason: reasonNoPolicy}
	}
	ns, bad := CheckAction(req.Action)
	if bad != "" {
		return Decision{Reason: bad}
	}
	if p.agents != nil && !p.appliesTo(req.Agent) {
		return Decision{Reason: reasonAgentScoped}
	}
	en := p.find(ns, req)
	if en == nil {
		return Decision{Reason: reasonNoRule}
	}
	return e.finish(p, en, req)
}

func (p *Profile) appliesTo(agent string) bool {
	for _, pat := range p.agents {
		if globMatch(pat, agent) {
			return true
		}
	}
	return false
}

// find returns the first entry, in evaluation order, whose pattern matches
// the action and whose rule's conditions hold. Each candidate list is sorted
// by rule position, so a scan stops at its first hit or as soon as it passes
// the best hit found in an earlier list.
func (p *Profile) find(ns Namespace, req *Request) *entry {
	var best *entry
	idx := &p.byNS[ns]
	if list, ok := idx.exact[req.Action]; ok {
		best = p.first(list, req, best)
	}
	best = p.first(idx.globs, req, best)
	return p.first(p.global, req, best)
}

func (p *Profile) first(list []entry, req *Request, best *entry) *entry {
	for i := range list {
		en := &list[i]
		if best != nil && en.rule >= best.rule {
			break
		}
		if en.g.match(req.Action) && p.conditionsHold(en.rule, req) {
			return en
		}
	}
	return best
}

// conditionsHold evaluates a rule's CEL conditions. A condition that fails to
// evaluate counts as holding for deny and require-approval rules and as not
// holding for allow rules: errors never widen what is allowed.
func (p *Profile) conditionsHold(rule int32, req *Request) bool {
	r := &p.rules[rule]
	for _, c := range r.conds {
		ok, evaluated := c.eval(req)
		if !evaluated {
			if r.effect == EffectAllow {
				return false
			}
			continue
		}
		if !ok {
			return false
		}
	}
	return true
}

// finish applies what comes after rule matching: commerce caps, rate limits
// and the policy's approval mode.
func (e *Engine) finish(p *Profile, en *entry, req *Request) Decision {
	r := &p.rules[en.rule]
	if r.effect == EffectDeny {
		return en.dec
	}
	var amount int64
	hasAmount := false
	if cl := p.commerce; cl != nil && req.Args != nil {
		if v, ok := req.Args[cl.arg]; ok {
			a, bad := amountOf(v)
			if bad != "" {
				return Decision{Rule: r.name, Reason: bad}
			}
			if cur, ok := req.Args["currency"].(string); ok && cl.currency != "" && !strings.EqualFold(cur, cl.currency) {
				return Decision{Rule: r.name, Reason: reasonCurrency}
			}
			if cl.perTx > 0 && a > cl.perTx {
				return cl.perTxDec
			}
			amount, hasAmount = a, true
		}
	}
	if r.limit != nil || p.sandbox != nil {
		now := e.clock.Now()
		if r.limit != nil {
			if ok, wait := r.limit.Allow(now); !ok {
				d := r.limitDec
				d.RetryAfter = wait
				return d
			}
		}
		if p.sandbox != nil {
			if ok, wait := p.sandbox.Allow(now); !ok {
				d := p.sandboxDec
				d.RetryAfter = wait
				return d
			}
		}
	}
	d := en.dec
	if r.effect == EffectAllow {
		switch p.approvalMode {
		case ApprovalAlways:
			d = en.approvalDec
		case ApprovalAboveThreshold:
			if hasAmount && amount > p.threshold {
				d = en.thresholdDec
			}
		}
	}
	if hasAmount && p.commerce.daily > 0 && !e.reserve(amount, p.commerce.daily, d.Verdict == Allow) {
		return p.commerce.dailyDec
	}
	return d
}

// reserve checks amount against today's remaining daily cap and, when commit
// is set, counts it as spent. Amounts are counted when the decision allows,
// whether or not the call later succeeds: a failed payment still uses up
// cap, which errs on the side of the cap.
func (e *Engine) reserve(amount, daily int64, commit bool) bool {
	day := e.now().UTC().Unix() / 86400
	e.spendMu.Lock()
	defer e.spendMu.Unlock()
	if day != e.spendDay {
		e.spendDay, e.spent = day, 0
	}
	if e.spent+amount > daily {
		return false
	}
	if commit {
		e.spent += amount
	}
	return true
}
