package ratelimit

import (
	"sync"
	"sync/atomic"
	"time"
)

// Scope names which bucket refused a call.
type Scope uint8

// The scopes a Limiter checks, in the order it checks them.
const (
	ScopeNone Scope = iota
	ScopeGlobal
	ScopeAgent
	ScopeTool
)

// String returns the scope's name as used in reasons.
func (s Scope) String() string {
	switch s {
	case ScopeGlobal:
		return "global"
	case ScopeAgent:
		return "agent"
	case ScopeTool:
		return "tool"
	default:
		return "none"
	}
}

// Result is a Limiter's answer for one call.
type Result struct {
	Allowed bool
	// Scope is the bucket that refused the call; ScopeNone when allowed.
	Scope Scope
	// RetryAfter is how long until the refusing bucket would admit the call.
	RetryAfter time.Duration
}

// Limits configures a Limiter. A zero Limit leaves that scope unlimited.
type Limits struct {
	Global   Limit
	PerAgent Limit
	PerTool  Limit
	// MaxKeys bounds how many distinct agents plus tools the limiter tracks,
	// so a caller inventing names cannot grow memory without bound. Calls
	// for a new key past the bound are refused. Zero means 4096.
	MaxKeys int
}

// Limiter enforces a global bucket, one bucket per agent and one per tool.
// Lookups are lock-free: keyed buckets live in copy-on-write maps that are
// only rebuilt when a new agent or tool first appears. A Limiter is safe for
// concurrent use.
type Limiter struct {
	clock  Clock
	global *Bucket

	mu       sync.Mutex // serialises inserts and limit changes
	perAgent atomic.Pointer[Limit]
	perTool  atomic.Pointer[Limit]
	agents   atomic.Pointer[map[string]*Bucket]
	tools    atomic.Pointer[map[string]*Bucket]
	maxKeys  int
}

// NewLimiter returns a Limiter enforcing l.
func NewLimiter(l Limits) *Limiter {
	lim := &Limiter{clock: NewClock(), global: NewBucket(l.Global), maxKeys: l.MaxKeys}
	if lim.maxKeys <= 0 {
		lim.maxKeys = 4096
	}
	pa, pt := l.PerAgent, l.PerTool
	lim.perAgent.Store(&pa)
	lim.perTool.Store(&pt)
	empty1, empty2 := map[string]*Bucket{}, map[string]*Bucket{}
	lim.agents.Store(&empty1)
	lim.tools.Store(&empty2)
	return lim
}

// Allow takes one token from the global bucket, agent's bucket and tool's
// bucket (tool may be empty to skip the per-tool check). Tokens already taken
// from an earlier scope are not returned when a later scope refuses: a
// refused call still counts against the broader limits, which errs on the
// side of limiting a caller that is hammering.
func (l *Limiter) Allow(agent, tool string) Result {
	return l.AllowAt(l.clock.Now(), agent, tool)
}

// AllowAt is Allow at a caller-supplied monotonic reading in nanoseconds,
// for callers that already hold one and for deterministic tests.
func (l *Limiter) AllowAt(now int64, agent, tool string) Result {
	if ok, wait := l.global.Allow(now); !ok {
		return Result{Scope: ScopeGlobal, RetryAfter: wait}
	}
	if b := l.bucket(&l.agents, &l.perAgent, agent); b == nil {
		return Result{Scope: ScopeAgent, RetryAfter: time.Second}
	} else if ok, wait := b.Allow(now); !ok {
		return Result{Scope: ScopeAgent, RetryAfter: wait}
	}
	if tool != "" {
		if b := l.bucket(&l.tools, &l.perTool, tool); b == nil {
			return Result{Scope: ScopeTool, RetryAfter: time.Second}
		} else if ok, wait := b.Allow(now); !ok {
			return Result{Scope: ScopeTool, RetryAfter: wait}
		}
	}
	return Result{Allowed: true}
}

// bucket returns key's bucket, creating it on first use. It returns nil when
// the key bound is reached.
func (l *Limiter) bucket(m *atomic.Pointer[map[string]*Bucket], lim *atomic.Pointer[Limit], key string) *Bucket {
	if b, ok := (*m.Load())[key]; ok {
		return b
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	cur := *m.Load()
	if b, ok := cur[key]; ok {
		return b
	}
	if len(*l.agents.Load())+len(*l.tools.Load()) >= l.maxKeys {
		return nil
	}
	next := make(map[string]*Bucket, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	b := NewBucket(*lim.Load())
	next[key] = b
	m.Store(&next)
	return b
}

// SetGlobal changes the global limit at run time.
func (l *Limiter) SetGlobal(lim Limit) { l.global.SetLimit(lim) }

// SetPerAgent changes the limit of every agent bucket, existing and future.
func (l *Limiter) SetPerAgent(lim Limit) { l.setKeyed(&l.agents, &l.perAgent, lim) }

// SetPerTool changes the limit of every tool bucket, existing and future.
func (l *Limiter) SetPerTool(lim Limit) { l.setKeyed(&l.tools, &l.perTool, lim) }

func (l *Limiter) setKeyed(m *atomic.Pointer[map[string]*Bucket], p *atomic.Pointer[Limit], lim Limit) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p.Store(&lim)
	for _, b := range *m.Load() {
		b.SetLimit(lim)
	}
}

// Limits returns the limits in force.
func (l *Limiter) Limits() Limits {
	return Limits{Global: l.global.Limit(), PerAgent: *l.perAgent.Load(), PerTool: *l.perTool.Load(), MaxKeys: l.maxKeys}
}
