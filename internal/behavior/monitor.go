// Package behavior watches what each agent does over time and reacts to
// patterns no single policy decision sees: bursts of calls, runs of failed
// calls and repeated denials. A pattern raises an Alert and, when
// configured, quarantines the agent: every further action is denied until an
// operator clears it. Quarantines persist (statefile), so restarting the
// router does not release an agent.
//
// Guard puts the monitor in front of any governance.DecisionProvider. Its
// check for a quarantined agent is a lock-free map lookup and an atomic load.
//
// This package is pure Go plus one state file. It must not import
// Kubernetes or network packages.
package behavior

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/governance/statefile"
	"github.com/kars-io/kars/internal/ratelimit"
)

// Kind names the pattern behind an alert.
type Kind string

// The patterns the monitor detects.
const (
	Burst               Kind = "burst"
	ConsecutiveFailures Kind = "consecutive-failures"
	RepeatedDenials     Kind = "repeated-denials"
	// Operator marks a quarantine an operator imposed (Impose), not a
	// pattern the monitor saw.
	Operator Kind = "operator"
)

// Alert reports a detected pattern.
type Alert struct {
	Agent  string    `json:"agent"`
	Kind   Kind      `json:"kind"`
	Detail string    `json:"detail"`
	At     time.Time `json:"at"`
	// Quarantined is set when the alert quarantined the agent.
	Quarantined bool `json:"quarantined"`
}

// Config sets the thresholds. A zero threshold disables its pattern.
type Config struct {
	// MaxCalls calls per CallWindow (as a token bucket of that size) are
	// normal; one more is a burst.
	MaxCalls   int
	CallWindow time.Duration
	// MaxConsecutiveFailures failed calls in a row raise an alert.
	MaxConsecutiveFailures int
	// MaxDenials denials per DenialWindow are tolerated; one more alerts.
	MaxDenials   int
	DenialWindow time.Duration
	// Quarantine makes every alert quarantine its agent.
	Quarantine bool
	// StatePath persists quarantines; empty keeps them in memory.
	StatePath string
	// OnAlert, if set, is called for each alert, synchronously and outside
	// the monitor's locks; it must not block for long.
	OnAlert func(Alert)
	// MaxAgents bounds how many agents are tracked (default 10000). Calls
	// from agents past the bound are denied by Guard: an unbounded map is a
	// memory exhaustion, and an untracked agent cannot be quarantined.
	MaxAgents int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Monitor tracks agents. It is safe for concurrent use.
type Monitor struct {
	cfg  Config
	base time.Time

	mu     sync.Mutex // serialises inserts and state-file writes
	agents atomic.Pointer[map[string]*agentState]
}

type agentState struct {
	calls, denials *ratelimit.Bucket // nil when the pattern is disabled
	failures       atomic.Int64
	quarantine     atomic.Pointer[quarantine]
	// lastAlert suppresses repeats of a kind within its window when the
	// monitor only alerts. It holds the alert's monotonic time plus one, so
	// that zero means "never".
	lastAlert [3]atomic.Int64
}

// quarantine is an Alert with the decision Guard returns, rendered once.
type quarantine struct {
	alert    Alert
	decision governance.Decision
}

// Rule names the pseudo-rule of quarantine denials in decisions and audit.
const Rule = "behavior-quarantine"

// New returns a Monitor, loading persisted quarantines from cfg.StatePath.
func New(cfg Config) (*Monitor, error) {
	if cfg.MaxCalls < 0 || cfg.MaxConsecutiveFailures < 0 || cfg.MaxDenials < 0 {
		return nil, errors.New("behavior: thresholds must not be negative")
	}
	if (cfg.MaxCalls > 0 && cfg.CallWindow <= 0) || (cfg.MaxDenials > 0 && cfg.DenialWindow <= 0) {
		return nil, errors.New("behavior: a call or denial threshold needs a positive window")
	}
	if cfg.MaxAgents <= 0 {
		cfg.MaxAgents = 10_000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Monitor{cfg: cfg, base: cfg.Now()}
	empty := map[string]*agentState{}
	m.agents.Store(&empty)
	if cfg.StatePath != "" {
		data, err := statefile.Read(cfg.StatePath)
		if err != nil {
			return nil, err
		}
		if data != nil {
			var saved []Alert
			if err := json.Unmarshal(data, &saved); err != nil {
				return nil, fmt.Errorf("behavior: %s is not a quarantine list: %w", cfg.StatePath, err)
			}
			for _, a := range saved {
				if st := m.state(a.Agent); st != nil {
					st.quarantine.Store(newQuarantine(a))
				}
			}
		}
	}
	return m, nil
}

func newQuarantine(a Alert) *quarantine {
	a.Quarantined = true
	reason := fmt.Sprintf("agent quarantined by the behaviour monitor (%s: %s) until an operator clears it", a.Kind, a.Detail)
	if a.Kind == Operator {
		reason = fmt.Sprintf("agent quarantined by an operator (%s) until an operator clears it", a.Detail)
	}
	return &quarantine{alert: a, decision: governance.Decision{Verdict: governance.Deny, Rule: Rule, Reason: reason}}
}

// state returns the agent's state, creating it; nil past MaxAgents.
func (m *Monitor) state(agent string) *agentState {
	if st, ok := (*m.agents.Load())[agent]; ok {
		return st
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := *m.agents.Load()
	if st, ok := cur[agent]; ok {
		return st
	}
	if len(cur) >= m.cfg.MaxAgents {
		return nil
	}
	st := &agentState{}
	if m.cfg.MaxCalls > 0 {
		st.calls = ratelimit.NewBucket(ratelimit.Limit{Events: m.cfg.MaxCalls, Per: m.cfg.CallWindow})
	}
	if m.cfg.MaxDenials > 0 {
		st.denials = ratelimit.NewBucket(ratelimit.Limit{Events: m.cfg.MaxDenials, Per: m.cfg.DenialWindow})
	}
	next := make(map[string]*agentState, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	next[agent] = st
	m.agents.Store(&next)
	return st
}

func (m *Monitor) mono() int64 { return int64(m.cfg.Now().Sub(m.base)) }

// ObserveDecision records one decided call: it counts toward bursts, and a
// denial toward repeated denials.
func (m *Monitor) ObserveDecision(agent string, d governance.Decision) {
	if st := m.state(agent); st != nil {
		m.observeDecision(st, agent, d)
	}
}

func (m *Monitor) observeDecision(st *agentState, agent string, d governance.Decision) {
	now := m.mono()
	if st.calls != nil {
		if ok, _ := st.calls.Allow(now); !ok {
			m.alert(st, agent, Burst, 0, fmt.Sprintf("more than %d calls per %s", m.cfg.MaxCalls, m.cfg.CallWindow), m.cfg.CallWindow)
		}
	}
	if d.Verdict == governance.Deny && d.Rule != Rule && st.denials != nil {
		if ok, _ := st.denials.Allow(now); !ok {
			m.alert(st, agent, RepeatedDenials, 2, fmt.Sprintf("more than %d denials per %s", m.cfg.MaxDenials, m.cfg.DenialWindow), m.cfg.DenialWindow)
		}
	}
}

// ObserveOutcome records whether an allowed call succeeded; a run of
// failures alerts.
func (m *Monitor) ObserveOutcome(agent string, ok bool) {
	st := m.state(agent)
	if st == nil {
		return
	}
	if ok {
		st.failures.Store(0)
		return
	}
	if n := st.failures.Add(1); m.cfg.MaxConsecutiveFailures > 0 && n >= int64(m.cfg.MaxConsecutiveFailures) {
		st.failures.Store(0)
		m.alert(st, agent, ConsecutiveFailures, 1, fmt.Sprintf("%d failed calls in a row", n), 0)
	}
}

// alert raises an alert, quarantining when configured. Without quarantine
// a kind re-alerts at most once per its window (or per failure run).
func (m *Monitor) alert(st *agentState, agent string, kind Kind, slot int, detail string, window time.Duration) {
	if st.quarantine.Load() != nil {
		return
	}
	now := m.mono()
	for {
		last := st.lastAlert[slot].Load()
		if !m.cfg.Quarantine && window > 0 && last != 0 && now-(last-1) < int64(window) {
			return
		}
		if st.lastAlert[slot].CompareAndSwap(last, now+1) {
			break
		}
	}
	a := Alert{Agent: agent, Kind: kind, Detail: detail, At: m.cfg.Now()}
	if m.cfg.Quarantine {
		q := newQuarantine(a)
		if !st.quarantine.CompareAndSwap(nil, q) {
			return
		}
		a = q.alert
		if err := m.save(); err != nil {
			a.Detail += fmt.Sprintf(" (quarantine not persisted: %v)", err)
		}
	}
	if m.cfg.OnAlert != nil {
		m.cfg.OnAlert(a)
	}
}

// Quarantined reports whether agent is quarantined and by which alert.
func (m *Monitor) Quarantined(agent string) (Alert, bool) {
	if st, ok := (*m.agents.Load())[agent]; ok {
		if q := st.quarantine.Load(); q != nil {
			return q.alert, true
		}
	}
	return Alert{}, false
}

// Quarantines lists the quarantined agents, oldest first.
func (m *Monitor) Quarantines() []Alert {
	var out []Alert
	for _, st := range *m.agents.Load() {
		if q := st.quarantine.Load(); q != nil {
			out = append(out, q.alert)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}

// Impose quarantines agent on an operator's word (detail says why), whatever
// the monitor's configuration, and persists it like any quarantine. It is
// idempotent: an agent already quarantined keeps its first quarantine, and
// Impose returns that alert with imposed false. It fails, changing nothing,
// when the monitor tracks MaxAgents others already.
func (m *Monitor) Impose(agent, detail string) (a Alert, imposed bool, err error) {
	st := m.state(agent)
	if st == nil {
		return Alert{}, false, fmt.Errorf("behavior: already tracking %d agents; %q cannot be quarantined", m.cfg.MaxAgents, agent)
	}
	q := newQuarantine(Alert{Agent: agent, Kind: Operator, Detail: detail, At: m.cfg.Now()})
	if !st.quarantine.CompareAndSwap(nil, q) {
		return st.quarantine.Load().alert, false, nil
	}
	if err := m.save(); err != nil {
		// A quarantine that would not survive a restart is not what the
		// operator asked for: undo it and say so.
		st.quarantine.CompareAndSwap(q, nil)
		return Alert{}, false, fmt.Errorf("behavior: quarantine not persisted: %w", err)
	}
	if m.cfg.OnAlert != nil {
		m.cfg.OnAlert(q.alert)
	}
	return q.alert, true, nil
}

// Clear lifts agent's quarantine (an operator action) and resets its
// counters. It reports whether the agent was quarantined.
func (m *Monitor) Clear(agent string) (bool, error) {
	st, ok := (*m.agents.Load())[agent]
	if !ok || st.quarantine.Swap(nil) == nil {
		return false, nil
	}
	st.failures.Store(0)
	return true, m.save()
}

// save writes the quarantine list.
func (m *Monitor) save() error {
	if m.cfg.StatePath == "" {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	data, err := json.Marshal(m.Quarantines())
	if err != nil {
		return err
	}
	return statefile.Write(m.cfg.StatePath, data, 0o600)
}

// Guard is a DecisionProvider that denies quarantined agents, asks Next
// otherwise, and feeds every decision to Monitor.
type Guard struct {
	Next    governance.DecisionProvider
	Monitor *Monitor
}

// reasonUntracked is the denial for agents past MaxAgents.
const reasonUntracked = "the behaviour monitor tracks too many agents to admit another"

// Decide implements governance.DecisionProvider.
func (g *Guard) Decide(req *governance.Request) governance.Decision {
	st := g.Monitor.state(req.Agent)
	if st == nil {
		return governance.Decision{Rule: Rule, Reason: reasonUntracked}
	}
	if q := st.quarantine.Load(); q != nil {
		return q.decision
	}
	d := g.Next.Decide(req)
	g.Monitor.observeDecision(st, req.Agent, d)
	if q := st.quarantine.Load(); q != nil {
		return q.decision // this very call tripped the quarantine
	}
	return d
}
