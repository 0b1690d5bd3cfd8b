package budget

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestReserveSettleWindows(t *testing.T) {
	now := time.Date(2026, 11, 30, 23, 59, 0, 0, time.UTC)
	l := NewLedger(Limits{PerRequest: 500, Daily: 1000, Monthly: 1500})
	l.now = func() time.Time { return now }

	if _, err := l.Reserve(501); !isBudget(err, "per-request") {
		t.Fatalf("per-request: %v", err)
	}
	a, err := l.Reserve(500)
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.Reserve(500)
	if err != nil {
		t.Fatal(err)
	}
	// Both reservations hold the whole day: a third is refused before
	// anything is settled.
	if _, err := l.Reserve(1); !isBudget(err, "daily") {
		t.Fatalf("daily with reservations in flight: %v", err)
	}
	a.Settle(100)
	a.Settle(100) // idempotent
	b.Release()
	if s := l.State(); s.DayUsed != 100 || s.DayReserved != 0 || s.MonthUsed != 100 {
		t.Fatalf("after settle: %+v", s)
	}
	// The next UTC day starts a fresh daily window; the month carries on.
	now = now.Add(2 * time.Minute) // 2026-12-01: a new month too
	c, err := l.Reserve(500)
	if err != nil {
		t.Fatal(err)
	}
	c.Settle(500)
	if s := l.State(); s.Day != "2026-12-01" || s.DayUsed != 500 || s.MonthUsed != 500 {
		t.Fatalf("after rollover: %+v", s)
	}
	var e *ExceededError
	l.SetLimits(Limits{Monthly: 600})
	if _, err := l.Reserve(200); !errors.As(err, &e) || e.Budget != "monthly" || e.RetryAfter <= 0 {
		t.Fatalf("monthly: %v", err)
	}
}

// TestReservationCrossingMidnight: a call reserved before midnight and
// settled after is charged to the new day, and the old day's reservation
// does not leak into the new window.
func TestReservationCrossingMidnight(t *testing.T) {
	now := time.Date(2026, 11, 26, 23, 59, 59, 0, time.UTC)
	l := NewLedger(Limits{Daily: 1000})
	l.now = func() time.Time { return now }
	r, _ := l.Reserve(800)
	now = now.Add(2 * time.Second)
	r.Settle(300)
	if s := l.State(); s.DayUsed != 300 || s.DayReserved != 0 {
		t.Fatalf("%+v", s)
	}
}

func TestConcurrentReservationsNeverExceed(t *testing.T) {
	l := NewLedger(Limits{Daily: 10_000})
	var wg sync.WaitGroup
	var mu sync.Mutex
	granted := 0
	for range 200 {
		wg.Go(func() {
			r, err := l.Reserve(100)
			if err != nil {
				return
			}
			mu.Lock()
			granted++
			mu.Unlock()
			r.Settle(100)
		})
	}
	wg.Wait()
	if s := l.State(); s.DayUsed > 10_000 || s.DayUsed != int64(granted)*100 {
		t.Fatalf("granted %d, used %d", granted, s.DayUsed)
	}
}

func TestLedgerPersists(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, Limits{Daily: 1000})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx, 10*time.Millisecond, func(err error) { t.Error(err) }); close(done) }()
	r, _ := l.Reserve(400)
	r.Settle(250)
	cancel()
	<-done
	l2, err := Open(dir, Limits{Daily: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if s := l2.State(); s.DayUsed != 250 || s.Lifetime != 250 {
		t.Fatalf("after restart: %+v", s)
	}
	if _, err := l2.Reserve(800); !isBudget(err, "daily") {
		t.Fatalf("restart reset the budget: %v", err)
	}
}

func TestLimiter(t *testing.T) {
	now := time.Unix(0, 0)
	l := NewLimiter(2, 1000)
	l.now = func() time.Time { return now }
	if err := l.Allow(400); err != nil {
		t.Fatal(err)
	}
	if err := l.Allow(700); !isBudget(err, "tpm") {
		t.Fatalf("tpm: %v", err)
	}
	l.Settle(400, 100) // 300 unused tokens come back
	if err := l.Allow(700); err != nil {
		t.Fatalf("after refund: %v", err)
	}
	if err := l.Allow(1); !isBudget(err, "rpm") {
		t.Fatalf("rpm: %v", err)
	}
	now = now.Add(30 * time.Second) // one request refills
	if err := l.Allow(1); err != nil {
		t.Fatalf("after refill: %v", err)
	}
}

func isBudget(err error, name string) bool {
	var e *ExceededError
	return errors.As(err, &e) && e.Budget == name
}
