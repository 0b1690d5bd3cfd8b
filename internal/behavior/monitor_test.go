package behavior

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/governance"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// engine allows tool:* and denies everything else.
func engine(t *testing.T) governance.DecisionProvider {
	t.Helper()
	e := governance.NewEngine()
	if err := e.Load(&governance.Policy{Rules: []governance.Rule{{Name: "tools", Effect: governance.EffectAllow, Actions: []string{"tool:*"}}}}); err != nil {
		t.Fatal(err)
	}
	return e
}

type alerts struct {
	mu   sync.Mutex
	list []Alert
}

func (a *alerts) add(x Alert) { a.mu.Lock(); a.list = append(a.list, x); a.mu.Unlock() }
func (a *alerts) n() int      { a.mu.Lock(); defer a.mu.Unlock(); return len(a.list) }

func TestBurstQuarantinesUntilCleared(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	got := &alerts{}
	m, err := New(Config{MaxCalls: 5, CallWindow: time.Minute, Quarantine: true, OnAlert: got.add, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	g := &Guard{Next: engine(t), Monitor: m}
	req := &governance.Request{Agent: "a1", Action: "tool:search"}
	for i := range 5 {
		if d := g.Decide(req); d.Verdict != governance.Allow {
			t.Fatalf("call %d: %+v", i, d)
		}
	}
	d := g.Decide(req)
	if d.Verdict != governance.Deny || d.Rule != Rule || !strings.Contains(d.Reason, "burst") {
		t.Fatalf("sixth call in a minute: %+v", d)
	}
	clk.Advance(time.Hour) // the burst is long over, the quarantine is not
	if d := g.Decide(req); d.Rule != Rule {
		t.Fatalf("quarantine lifted by itself: %+v", d)
	}
	if other := g.Decide(&governance.Request{Agent: "a2", Action: "tool:search"}); other.Verdict != governance.Allow {
		t.Fatalf("another agent was affected: %+v", other)
	}
	if got.n() != 1 || !got.list[0].Quarantined || got.list[0].Kind != Burst || got.list[0].Agent != "a1" {
		t.Fatalf("alerts: %+v", got.list)
	}
	if a, ok := m.Quarantined("a1"); !ok || a.Kind != Burst {
		t.Fatalf("Quarantined(a1) = %+v %v", a, ok)
	}
	if ok, err := m.Clear("a1"); !ok || err != nil {
		t.Fatalf("Clear: %v %v", ok, err)
	}
	if d := g.Decide(req); d.Verdict != governance.Allow {
		t.Fatalf("after Clear: %+v", d)
	}
	if ok, _ := m.Clear("a1"); ok {
		t.Fatal("clearing twice reported a quarantine")
	}
}

func TestConsecutiveFailures(t *testing.T) {
	got := &alerts{}
	m, err := New(Config{MaxConsecutiveFailures: 3, Quarantine: true, OnAlert: got.add})
	if err != nil {
		t.Fatal(err)
	}
	for _, ok := range []bool{false, false, true, false, false} {
		m.ObserveOutcome("a", ok)
	}
	if _, q := m.Quarantined("a"); q || got.n() != 0 {
		t.Fatal("a success did not reset the failure run")
	}
	m.ObserveOutcome("a", false)
	if a, q := m.Quarantined("a"); !q || a.Kind != ConsecutiveFailures || !strings.Contains(a.Detail, "3 failed") {
		t.Fatalf("three failures in a row: %+v %v", a, q)
	}
}

func TestRepeatedDenialsAlertOnly(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	got := &alerts{}
	m, err := New(Config{MaxDenials: 3, DenialWindow: time.Minute, OnAlert: got.add, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	g := &Guard{Next: engine(t), Monitor: m}
	denied := &governance.Request{Agent: "a", Action: "shell:rm"}
	for range 10 {
		if d := g.Decide(denied); d.Verdict != governance.Deny || d.Rule == Rule {
			t.Fatalf("alert-only monitor changed a decision: %+v", d)
		}
	}
	if got.n() != 1 || got.list[0].Kind != RepeatedDenials || got.list[0].Quarantined {
		t.Fatalf("want one repeated-denials alert, got %+v", got.list)
	}
	if d := g.Decide(&governance.Request{Agent: "a", Action: "tool:x"}); d.Verdict != governance.Allow {
		t.Fatalf("alert-only monitor quarantined: %+v", d)
	}
	clk.Advance(2 * time.Minute)
	for range 5 {
		g.Decide(denied)
	}
	if got.n() != 2 {
		t.Fatalf("a new window should alert again: %d alerts", got.n())
	}
}

func TestQuarantineSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "quarantine.json")
	cfg := Config{MaxConsecutiveFailures: 1, Quarantine: true, StatePath: path}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.ObserveOutcome("bad-agent", false)
	m2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := &Guard{Next: engine(t), Monitor: m2}
	if d := g.Decide(&governance.Request{Agent: "bad-agent", Action: "tool:x"}); d.Rule != Rule {
		t.Fatalf("restart released the agent: %+v", d)
	}
	if ok, err := m2.Clear("bad-agent"); !ok || err != nil {
		t.Fatal(ok, err)
	}
	m3, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, q := m3.Quarantined("bad-agent"); q {
		t.Fatal("Clear was not persisted")
	}
}

func TestMaxAgentsFailsClosed(t *testing.T) {
	m, err := New(Config{MaxAgents: 2})
	if err != nil {
		t.Fatal(err)
	}
	g := &Guard{Next: engine(t), Monitor: m}
	for i := range 2 {
		if d := g.Decide(&governance.Request{Agent: fmt.Sprint("a", i), Action: "tool:x"}); d.Verdict != governance.Allow {
			t.Fatal(d)
		}
	}
	if d := g.Decide(&governance.Request{Agent: "a3", Action: "tool:x"}); d.Verdict != governance.Deny {
		t.Fatalf("untracked agent allowed: %+v", d)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []Config{{MaxCalls: 3}, {MaxDenials: 1}, {MaxConsecutiveFailures: -1}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

func TestGuardHotPathDoesNotAllocate(t *testing.T) {
	m, _ := New(Config{MaxCalls: 1 << 30, CallWindow: time.Second, MaxDenials: 1 << 30, DenialWindow: time.Second})
	g := &Guard{Next: engine(t), Monitor: m}
	req := &governance.Request{Agent: "a", Action: "tool:x"}
	g.Decide(req)
	if n := testing.AllocsPerRun(1000, func() { g.Decide(req) }); n != 0 {
		t.Fatalf("Guard.Decide allocates %.1f times per call", n)
	}
}

func TestConcurrentGuard(t *testing.T) {
	m, _ := New(Config{MaxCalls: 1000, CallWindow: time.Hour, Quarantine: true})
	g := &Guard{Next: engine(t), Monitor: m}
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for w := range 8 {
		wg.Go(func() {
			for i := range 200 {
				d := g.Decide(&governance.Request{Agent: "shared", Action: "tool:x"})
				m.ObserveOutcome(fmt.Sprint("solo", w), i%2 == 0)
				if d.Verdict == governance.Allow {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if allowed != 1000 {
		t.Fatalf("allowed %d of 1600 calls, want exactly the burst of 1000 before quarantine", allowed)
	}
	if len(m.Quarantines()) != 1 {
		t.Fatalf("quarantines: %+v", m.Quarantines())
	}
}

func TestOperatorQuarantine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "quarantine.json")
	got := &alerts{}
	// No thresholds and no Quarantine flag: an operator's quarantine does
	// not depend on the monitor's own configuration.
	cfg := Config{StatePath: path, OnAlert: got.add}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := &Guard{Next: engine(t), Monitor: m}
	req := &governance.Request{Agent: "a1", Action: "tool:search"}
	if d := g.Decide(req); d.Verdict != governance.Allow {
		t.Fatalf("before: %+v", d)
	}
	a, imposed, err := m.Impose("a1", "incident 42")
	if err != nil || !imposed || a.Kind != Operator || !a.Quarantined {
		t.Fatalf("Impose: %+v %v %v", a, imposed, err)
	}
	d := g.Decide(req)
	if d.Verdict != governance.Deny || d.Rule != Rule || !strings.Contains(d.Reason, "by an operator (incident 42)") {
		t.Fatalf("after: %+v", d)
	}
	if again, imposed, err := m.Impose("a1", "second"); err != nil || imposed || again.Detail != "incident 42" {
		t.Fatalf("second Impose replaced the first: %+v %v %v", again, imposed, err)
	}
	if got.n() != 1 {
		t.Errorf("%d alerts, want 1", got.n())
	}
	if d := g.Decide(&governance.Request{Agent: "a2", Action: "tool:search"}); d.Verdict != governance.Allow {
		t.Fatalf("another agent was quarantined too: %+v", d)
	}

	m2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if q, ok := m2.Quarantined("a1"); !ok || q.Kind != Operator {
		t.Fatalf("operator quarantine not persisted: %+v %v", q, ok)
	}
	if ok, err := m2.Clear("a1"); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if d := (&Guard{Next: engine(t), Monitor: m2}).Decide(req); d.Verdict != governance.Allow {
		t.Fatalf("cleared agent still denied: %+v", d)
	}

	// A state file that cannot be written: the quarantine is refused, not
	// held in memory only.
	bad, err := New(Config{StatePath: filepath.Join(dir, "missing", "q.json")})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := bad.Impose("a1", "x"); err == nil {
		t.Fatal("Impose succeeded without persisting")
	}
	if _, ok := bad.Quarantined("a1"); ok {
		t.Fatal("unpersisted quarantine kept")
	}
}
