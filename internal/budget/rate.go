package budget

import (
	"math"
	"sync"
	"time"
)

// bucket is a token bucket holding up to capacity, refilled at capacity per
// minute. level may go negative when a settlement charges more than was
// reserved; that debt delays later calls.
type bucket struct {
	capacity float64
	level    float64
	last     time.Time
}

func (b *bucket) refill(now time.Time) {
	if !b.last.IsZero() {
		b.level = math.Min(b.capacity, b.level+now.Sub(b.last).Minutes()*b.capacity)
	}
	b.last = now
}

// wait is how long until n units are available.
func (b *bucket) wait(n float64) time.Duration {
	return time.Duration((n - b.level) / b.capacity * float64(time.Minute))
}

// Limiter enforces requests-per-minute and tokens-per-minute. Tokens are
// reserved like the budget and settled to actual usage.
type Limiter struct {
	mu  sync.Mutex
	rpm *bucket
	tpm *bucket
	now func() time.Time
}

// NewLimiter returns a limiter; zero disables a dimension. Buckets start
// full.
func NewLimiter(rpm, tpm int64) *Limiter {
	l := &Limiter{now: time.Now}
	l.SetLimits(rpm, tpm)
	return l
}

// SetLimits applies new limits, keeping each bucket's fill ratio.
func (l *Limiter) SetLimits(rpm, tpm int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rpm = resize(l.rpm, rpm)
	l.tpm = resize(l.tpm, tpm)
}

func resize(b *bucket, capacity int64) *bucket {
	if capacity <= 0 {
		return nil
	}
	if b == nil {
		return &bucket{capacity: float64(capacity), level: float64(capacity)}
	}
	ratio := b.level / b.capacity
	return &bucket{capacity: float64(capacity), level: ratio * float64(capacity), last: b.last}
}

// Allow takes one request and n tokens, or takes nothing and returns an
// *ExceededError for "rpm" or "tpm". A request larger than the whole tpm
// bucket can never fit and is refused as such.
func (l *Limiter) Allow(n int64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if b := l.rpm; b != nil {
		b.refill(now)
		if b.level < 1 {
			return &ExceededError{Budget: "rpm", Limit: int64(b.capacity), Used: int64(b.capacity - b.level), Requested: 1, RetryAfter: b.wait(1)}
		}
	}
	if b := l.tpm; b != nil {
		b.refill(now)
		if float64(n) > b.level {
			retry := b.wait(float64(n))
			if float64(n) > b.capacity {
				retry = 0
			}
			return &ExceededError{Budget: "tpm", Limit: int64(b.capacity), Used: int64(b.capacity - b.level), Requested: n, RetryAfter: retry}
		}
		b.level -= float64(n)
	}
	if b := l.rpm; b != nil {
		b.level--
	}
	return nil
}

// Settle corrects the tpm bucket by reserved-actual: unused tokens return,
// an overrun is charged.
func (l *Limiter) Settle(reserved, actual int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.tpm; b != nil {
		b.refill(l.now())
		b.level = math.Min(b.capacity, b.level+float64(reserved-actual))
	}
}
