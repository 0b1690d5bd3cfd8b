package ratelimit

import (
	"sync"
	"time"
)

// Keyed holds one bucket per key (a caller, a peer), each with the limit
// the latest Allow names: a reload that changes a limit changes the
// bucket's in place (what it has spent stays spent). The zero value is ready to
// use and safe for concurrent use. It holds every key it has seen: keys
// must come from a bounded set (allowed callers, registered peers).
type Keyed struct {
	mu      sync.Mutex
	buckets map[string]*Bucket
}

// Allow takes one token from key's bucket under limit l at now (a Clock
// reading) and reports whether it was there and, if not, when to retry.
func (k *Keyed) Allow(key string, l Limit, now int64) (bool, time.Duration) {
	k.mu.Lock()
	b, ok := k.buckets[key]
	switch {
	case !ok:
		if k.buckets == nil {
			k.buckets = map[string]*Bucket{}
		}
		b = NewBucket(l)
		k.buckets[key] = b
	case b.Limit() != l:
		b.SetLimit(l)
	}
	k.mu.Unlock()
	return b.Allow(now)
}

// PerMinute is a limit of rpm calls a minute with burst at once.
func PerMinute(rpm, burst int) Limit { return Limit{Events: rpm, Per: time.Minute, Burst: burst} }
