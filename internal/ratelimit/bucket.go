// Package ratelimit provides lock-free token buckets and a limiter that keeps
// one bucket per agent, one per tool and one global bucket, each adjustable
// while the router runs.
//
// The buckets use the generic cell rate algorithm (GCRA): the whole state of a
// bucket is one int64, the theoretical arrival time of the next conforming
// call, updated with a compare-and-swap. That keeps Allow free of locks and
// allocations so the policy engine can call it on its hot path.
//
// This package is pure computation over a caller-supplied clock. It must not
// import anything that performs I/O, Kubernetes or network packages.
package ratelimit

import (
	"fmt"
	"math"
	"sync/atomic"
	"time"
)

// Limit describes a token bucket: Events calls per Per refill the bucket, and
// up to Burst calls may be made back to back from a full bucket.
//
// The zero Limit means "no limit"; a bucket built from it always allows.
type Limit struct {
	// Events is how many calls the bucket refills per Per.
	Events int
	// Per is the refill period.
	Per time.Duration
	// Burst is the bucket's capacity. Zero means Events.
	Burst int
}

// Unlimited reports whether l imposes no limit.
func (l Limit) Unlimited() bool { return l.Events <= 0 || l.Per <= 0 }

// Validate reports why l cannot be used, or nil.
func (l Limit) Validate() error {
	switch {
	case l.Events < 0:
		return fmt.Errorf("events must not be negative, got %d", l.Events)
	case l.Per < 0:
		return fmt.Errorf("period must not be negative, got %s", l.Per)
	case l.Burst < 0:
		return fmt.Errorf("burst must not be negative, got %d", l.Burst)
	case l.Events > 0 && l.Per > 0 && l.Per/time.Duration(l.Events) <= 0:
		return fmt.Errorf("%d events per %s is finer than one per nanosecond", l.Events, l.Per)
	}
	return nil
}

// String renders l for reasons and logs, e.g. "10/1m0s burst 20".
func (l Limit) String() string {
	if l.Unlimited() {
		return "unlimited"
	}
	return fmt.Sprintf("%d/%s burst %d", l.Events, l.Per, l.burst())
}

func (l Limit) burst() int {
	if l.Burst > 0 {
		return l.Burst
	}
	return l.Events
}

// gcra holds the derived constants of a Limit in nanoseconds.
type gcra struct {
	limit     Limit
	interval  int64 // time one call "costs"
	tolerance int64 // how far ahead of now the arrival time may run
}

func newGCRA(l Limit) *gcra {
	if l.Unlimited() {
		return &gcra{limit: l}
	}
	interval := int64(l.Per) / int64(l.Events)
	tol := interval * int64(l.burst())
	if tol/int64(l.burst()) != interval { // overflow: treat as a very large bucket
		tol = math.MaxInt64 / 2
	}
	return &gcra{limit: l, interval: interval, tolerance: tol}
}

// Bucket is one token bucket. Its zero value is not usable; build one with
// NewBucket. A Bucket is safe for concurrent use.
type Bucket struct {
	params atomic.Pointer[gcra]
	// tat is the theoretical arrival time, in nanoseconds on the clock
	// passed to Allow. A full bucket has tat <= now.
	tat atomic.Int64
}

// NewBucket returns a full bucket enforcing l.
func NewBucket(l Limit) *Bucket {
	b := &Bucket{}
	b.params.Store(newGCRA(l))
	return b
}

// SetLimit changes the bucket's limit at run time. Calls already admitted
// stay admitted; the new burst and rate apply from the next call.
func (b *Bucket) SetLimit(l Limit) { b.params.Store(newGCRA(l)) }

// Limit returns the bucket's current limit.
func (b *Bucket) Limit() Limit { return b.params.Load().limit }

// Allow takes one token at time now (nanoseconds on any monotonic clock the
// caller uses consistently). It reports whether the call conforms and, when it
// does not, how long until it would.
func (b *Bucket) Allow(now int64) (ok bool, retryAfter time.Duration) {
	p := b.params.Load()
	if p.interval == 0 {
		return true, 0
	}
	for {
		old := b.tat.Load()
		t := max(old, now)
		next := t + p.interval
		if over := next - now - p.tolerance; over > 0 {
			return false, time.Duration(over)
		}
		if b.tat.CompareAndSwap(old, next) {
			return true, 0
		}
	}
}

// Clock turns wall time into the monotonic nanosecond readings Allow wants.
// The zero Clock is not usable; use NewClock.
type Clock struct{ base time.Time }

// NewClock returns a Clock whose readings start near zero now.
func NewClock() Clock { return Clock{base: time.Now()} }

// Now returns the nanoseconds elapsed on the monotonic clock since the Clock
// was made.
func (c Clock) Now() int64 { return int64(time.Since(c.base)) }
