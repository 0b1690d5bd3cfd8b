// Package budget meters tokens against a sandbox's budgets with the reserve
// → settle discipline: before a call is forwarded, its worst case is
// reserved atomically against every window; after the call, the reservation
// is settled to the upstream's reported usage. Checking and adding in two
// steps overspends under concurrency; reserving cannot.
//
// Budgets are per-request, daily and monthly, in UTC calendar windows. The
// ledger persists to a file in the router's state directory (written
// atomically) so that a restart does not reset the day's spending. The
// package also holds the rpm/tpm token-bucket rate limiter.
package budget

import (
	"fmt"
	"sync"
	"time"
)

// Limits are the token budgets; zero means unlimited.
type Limits struct {
	PerRequest int64
	Daily      int64
	Monthly    int64
}

// ExceededError says which budget refused a reservation. The router turns it
// into a 429 naming the budget.
type ExceededError struct {
	// Budget is "per-request", "daily", "monthly", "rpm" or "tpm".
	Budget    string
	Limit     int64
	Used      int64 // settled plus in-flight reservations in the window
	Requested int64
	// RetryAfter is when retrying can succeed: the next window, or the
	// bucket refill time for rate limits.
	RetryAfter time.Duration
}

// Error implements error.
func (e *ExceededError) Error() string {
	if e.Budget == "per-request" {
		return fmt.Sprintf("the request may use up to %d tokens, above the per-request token budget of %d", e.Requested, e.Limit)
	}
	return fmt.Sprintf("%s token budget exhausted: %d of %d tokens used or reserved, this request needs up to %d", e.Budget, e.Used, e.Limit, e.Requested)
}

// window is one budget window's counters.
type window struct {
	key      string // "2006-01-02" or "2006-01"
	used     int64  // settled
	reserved int64  // in flight
}

func (w *window) roll(key string) {
	if w.key != key {
		*w = window{key: key}
	}
}

// Ledger is the token ledger of one sandbox. It is safe for concurrent use.
type Ledger struct {
	mu       sync.Mutex
	limits   Limits
	day      window
	month    window
	lifetime int64
	now      func() time.Time
	// keyCache holds the window keys of one UTC day, formatted once
	// rather than on every call.
	keyCache struct {
		day      int64 // days since the Unix epoch; valid with ok
		ok       bool
		dayKey   string
		monthKey string
	}

	store *store // nil for an in-memory ledger
}

// NewLedger returns an in-memory ledger (tests, and routers with no state
// directory).
func NewLedger(l Limits) *Ledger {
	return &Ledger{limits: l, now: time.Now}
}

// SetLimits applies new limits (a config reload). Usage and in-flight
// reservations are kept.
func (l *Ledger) SetLimits(lim Limits) {
	l.mu.Lock()
	l.limits = lim
	l.mu.Unlock()
}

func keys(t time.Time) (day, month string) {
	t = t.UTC()
	return t.Format("2006-01-02"), t.Format("2006-01")
}

// keys is keys(t), cached for t's UTC day. l.mu must be held.
func (l *Ledger) keys(t time.Time) (day, month string) {
	d := t.Unix() / 86400
	if t.Unix() < 0 && t.Unix()%86400 != 0 {
		d-- // floor, for days before the epoch
	}
	c := &l.keyCache
	if !c.ok || c.day != d {
		c.dayKey, c.monthKey = keys(t)
		c.day, c.ok = d, true
	}
	return c.dayKey, c.monthKey
}

// Reservation is tokens held for one in-flight call. Settle or Release it
// exactly once; later calls are no-ops.
type Reservation struct {
	l          *Ledger
	n          int64
	day, month string
	done       bool // guarded by l.mu
}

// Tokens returns the reserved amount.
func (r *Reservation) Tokens() int64 { return r.n }

// Reserve holds n tokens in every window, or reserves nothing and returns an
// *ExceededError naming the first budget that cannot fit n.
func (l *Ledger) Reserve(n int64) (*Reservation, error) {
	if n < 0 {
		n = 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	day, month := l.keys(now)
	l.day.roll(day)
	l.month.roll(month)
	if l.limits.PerRequest > 0 && n > l.limits.PerRequest {
		return nil, &ExceededError{Budget: "per-request", Limit: l.limits.PerRequest, Requested: n}
	}
	if lim := l.limits.Daily; lim > 0 && l.day.used+l.day.reserved+n > lim {
		next := now.UTC().Truncate(24 * time.Hour).Add(24 * time.Hour)
		return nil, &ExceededError{Budget: "daily", Limit: lim, Used: l.day.used + l.day.reserved, Requested: n, RetryAfter: next.Sub(now)}
	}
	if lim := l.limits.Monthly; lim > 0 && l.month.used+l.month.reserved+n > lim {
		u := now.UTC()
		next := time.Date(u.Year(), u.Month()+1, 1, 0, 0, 0, 0, time.UTC)
		return nil, &ExceededError{Budget: "monthly", Limit: lim, Used: l.month.used + l.month.reserved, Requested: n, RetryAfter: next.Sub(now)}
	}
	l.day.reserved += n
	l.month.reserved += n
	return &Reservation{l: l, n: n, day: day, month: month}, nil
}

// Settle releases the reservation and charges actual tokens, which may be
// more or less than reserved: the upstream's count is the truth.
func (r *Reservation) Settle(actual int64) {
	if r == nil {
		return
	}
	l := r.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.done {
		return
	}
	r.done = true
	if actual < 0 {
		actual = 0
	}
	day, month := l.keys(l.now())
	l.day.roll(day)
	l.month.roll(month)
	// A reservation from a window that has since rolled over was dropped
	// with that window; only the charge lands, in the current window.
	if r.day == l.day.key {
		l.day.reserved -= r.n
	}
	if r.month == l.month.key {
		l.month.reserved -= r.n
	}
	l.day.used += actual
	l.month.used += actual
	l.lifetime += actual
	if l.store != nil {
		l.store.markDirty()
	}
}

// Release returns the reservation unused (the call was refused before it
// reached the upstream).
func (r *Reservation) Release() { r.Settle(0) }

// State is a point-in-time view of the ledger, for the admin API and
// metrics.
type State struct {
	Day           string `json:"day"`
	DayUsed       int64  `json:"dayUsed"`
	DayReserved   int64  `json:"dayReserved"`
	Month         string `json:"month"`
	MonthUsed     int64  `json:"monthUsed"`
	MonthReserved int64  `json:"monthReserved"`
	Lifetime      int64  `json:"lifetime"`
	Limits        Limits `json:"limits"`
}

// State returns the current counters.
func (l *Ledger) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	day, month := l.keys(l.now())
	l.day.roll(day)
	l.month.roll(month)
	return State{Day: l.day.key, DayUsed: l.day.used, DayReserved: l.day.reserved,
		Month: l.month.key, MonthUsed: l.month.used, MonthReserved: l.month.reserved,
		Lifetime: l.lifetime, Limits: l.limits}
}

// Remaining returns the tokens left in the daily and monthly windows (-1
// where unlimited), counting in-flight reservations as spent.
func (s State) Remaining() (daily, monthly int64) {
	daily, monthly = -1, -1
	if s.Limits.Daily > 0 {
		daily = max(0, s.Limits.Daily-s.DayUsed-s.DayReserved)
	}
	if s.Limits.Monthly > 0 {
		monthly = max(0, s.Limits.Monthly-s.MonthUsed-s.MonthReserved)
	}
	return daily, monthly
}
