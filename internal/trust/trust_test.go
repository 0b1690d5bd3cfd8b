package trust

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newStore(t *testing.T, path string, cfg Config, c *clock) *Store {
	t.Helper()
	s, err := Open(path, cfg, WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestTiers(t *testing.T) {
	for _, tc := range []struct {
		score int
		tier  Tier
	}{{0, Anonymous}, {199, Anonymous}, {200, Observed}, {399, Observed}, {400, Known}, {599, Known},
		{600, Verified}, {799, Verified}, {800, Sovereign}, {1000, Sovereign}} {
		if got := TierOf(tc.score); got != tc.tier {
			t.Errorf("TierOf(%d) = %s, want %s", tc.score, got, tc.tier)
		}
	}
}

func TestArithmetic(t *testing.T) {
	cfg := DefaultConfig()
	cfg.SuccessDelta, cfg.FailureDelta, cfg.DecayPerHour = 10, 30, 5
	type op int
	const (
		success op = iota
		failure
		violation
		safetyHigh
		safetyCritical
		wait
	)
	steps := []struct {
		op    op
		d     time.Duration // for wait
		score int
		ok    bool
	}{
		{wait, 0, 500, true},       // unseen peer starts at Initial and passes the threshold
		{success, 0, 510, true},    // +10
		{failure, 0, 480, false},   // -30, now under the threshold
		{violation, 0, 430, false}, // -50
		{wait, 59 * time.Minute, 430, false},
		{wait, time.Minute, 435, false},         // one full hour: +5 toward 500
		{success, 40 * time.Minute, 445, false}, // update within the hour keeps the partial hour
		{wait, 20 * time.Minute, 450, false},    // ...so 20 more minutes complete it
		{wait, 100 * time.Hour, 500, true},      // decay stops at Initial
		{safetyCritical, 0, 100, false},         // -400
		{safetyHigh, 0, 0, false},               // clamped at 0
	}
	c := &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	s := newStore(t, "", cfg, c)
	for i, st := range steps {
		var err error
		switch st.op {
		case success:
			c.advance(st.d)
			_, err = s.RecordSuccess("peer")
		case failure:
			_, err = s.RecordFailure("peer")
		case violation:
			_, err = s.PenalizeViolation("peer")
		case safetyHigh:
			_, err = s.PenalizeSafety("peer", SeverityHigh)
		case safetyCritical:
			_, err = s.PenalizeSafety("peer", SeverityCritical)
		case wait:
			c.advance(st.d)
		}
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		ok, score, tier := s.Check("peer")
		if score != st.score || ok != st.ok || tier != TierOf(st.score) {
			t.Fatalf("step %d: score %d ok %v tier %s; want %d ok %v", i, score, ok, tier, st.score, st.ok)
		}
	}
}

func TestClampAtTopAndDecayFromAbove(t *testing.T) {
	cfg := DefaultConfig()
	cfg.SuccessDelta, cfg.DecayPerHour = 300, 100
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	s := newStore(t, "", cfg, c)
	for range 3 {
		s.RecordSuccess("p")
	}
	if got := s.Score("p"); got != MaxScore {
		t.Fatalf("score %d, want clamped at %d", got, MaxScore)
	}
	if s.Tier("p") != Sovereign {
		t.Fatalf("tier %s", s.Tier("p"))
	}
	c.advance(3 * time.Hour)
	if got := s.Score("p"); got != 700 {
		t.Fatalf("after 3h: %d, want 700", got)
	}
	c.advance(-10 * time.Hour) // clock steps back: no decay, no panic
	if got := s.Score("p"); got != MaxScore {
		t.Fatalf("score with the clock behind its last update: %d", got)
	}
	if _, err := s.RecordFailure("p"); err != nil {
		t.Fatal(err)
	}
}

func TestScoresSurviveRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trust.json")
	c := &clock{t: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}
	cfg := DefaultConfig()
	s, err := Open(path, cfg, WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	s.RecordSuccess("alice")
	s.RecordSuccess("alice")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := newStore(t, path, cfg, c)
	if got := s2.Score("alice"); got != 510 {
		t.Fatalf("after restart alice = %d, want 510", got)
	}
	// Decay continues from the persisted time, across the restart.
	c.advance(2 * time.Hour)
	if got := s2.Score("alice"); got != 500 {
		t.Fatalf("alice after 2h = %d, want 500", got)
	}
}

// A penalty is on disk when the call returns, without Close: a crash right
// after cannot erase it.
func TestPenaltiesAreWrittenThrough(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trust.json")
	c := &clock{t: time.Now()}
	cfg := DefaultConfig()
	cfg.FlushInterval = time.Hour // the background flusher will not help
	s := newStore(t, path, cfg, c)
	if _, err := s.PenalizeSafety("mallory", SeverityMedium); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path, cfg, WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := s2.Score("mallory"); got != 450 {
		t.Fatalf("penalty not persisted: %d", got)
	}
}

func TestBackgroundFlush(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trust.json")
	cfg := DefaultConfig()
	cfg.FlushInterval = 10 * time.Millisecond
	s, err := Open(path, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.RecordSuccess("bob")
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if data, _ := os.ReadFile(path); len(data) > 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("success never flushed")
}

func TestMaxPeers(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxPeers, cfg.DecayPerHour = 2, 5
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	s := newStore(t, "", cfg, c)
	s.RecordSuccess("a")
	s.PenalizeViolation("b")
	if _, err := s.RecordSuccess("c"); !errors.Is(err, ErrTooManyPeers) {
		t.Fatalf("third peer: %v", err)
	}
	c.advance(2 * time.Hour) // a decays back to 500; b is still low
	if _, err := s.RecordSuccess("c"); err != nil {
		t.Fatalf("a peer back at Initial was not forgotten: %v", err)
	}
	if s.Score("b") != 460 {
		t.Fatalf("b was forgotten: %d", s.Score("b"))
	}
}

func TestRejectsBadInput(t *testing.T) {
	bad := DefaultConfig()
	bad.Initial = 1001
	if _, err := Open("", bad); err == nil {
		t.Fatal("Initial 1001 accepted")
	}
	s := newStore(t, "", DefaultConfig(), &clock{t: time.Now()})
	if _, err := s.RecordSuccess(""); err == nil {
		t.Fatal("empty peer id accepted")
	}
	if _, err := s.PenalizeSafety("p", Severity(9)); err == nil {
		t.Fatal("unknown severity accepted")
	}
	path := filepath.Join(t.TempDir(), "trust.json")
	os.WriteFile(path, []byte("not json"), 0o600)
	if _, err := Open(path, DefaultConfig()); err == nil {
		t.Fatal("corrupt store accepted")
	}
}

func TestConcurrentUpdates(t *testing.T) {
	cfg := DefaultConfig()
	cfg.SuccessDelta = 1
	path := filepath.Join(t.TempDir(), "trust.json")
	s, err := Open(path, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				s.RecordSuccess("p")
				s.Check("p")
			}
		})
	}
	wg.Wait()
	if got := s.Score("p"); got != 900 {
		t.Fatalf("400 concurrent successes from 500 = %d, want 900", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
