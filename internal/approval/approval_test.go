package approval

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func open(t *testing.T, q *Queue, timeout time.Duration) *Ticket {
	t.Helper()
	tk, err := q.Open(Request{Action: "mcp:s.t", Rule: "r", Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	tk.Publish()
	return tk
}

// Exactly one of a decision and the timeout ends a call, however they
// race, and whoever lost is told so.
func TestDecisionRacesTimeout(t *testing.T) {
	q := New(64)
	for i := range 200 {
		tk := open(t, q, time.Duration(i%5)*time.Microsecond+time.Microsecond)
		var res Result
		var wg sync.WaitGroup
		wg.Go(func() { res = tk.Wait(context.Background()) })
		_, err := q.Decide(tk.ID(), true, "alice")
		wg.Wait()
		switch {
		case err == nil && res.Outcome != Approved:
			t.Fatalf("decision accepted but the call ended %v", res)
		case err != nil && (!errors.Is(err, ErrDecided) && !errors.Is(err, ErrUnknown) || res.Outcome != TimedOut):
			t.Fatalf("decision refused (%v) but the call ended %v", err, res)
		}
		if _, err := q.Decide(tk.ID(), false, "bob"); !errors.Is(err, ErrDecided) {
			t.Fatalf("a second decision: %v", err)
		}
	}
	if q.Len() != 0 || len(q.List()) != 0 {
		t.Fatalf("queue not empty: %d", q.Len())
	}
}

// Unpublished calls are neither listed nor decidable but hold a place;
// the queue's bound counts them; ended ids are remembered boundedly.
func TestBoundsAndVisibility(t *testing.T) {
	q := New(2)
	a, _ := q.Open(Request{Action: "a", Timeout: time.Hour})
	early := make(chan error, 1)
	go func() { _, err := q.Decide(a.ID(), true, "x"); early <- err }()
	if len(q.List()) != 0 {
		t.Fatal("unpublished call listed")
	}
	b := open(t, q, time.Hour)
	if _, err := q.Open(Request{Action: "c", Timeout: time.Hour}); !errors.Is(err, ErrFull) {
		t.Fatalf("third call: %v", err)
	}
	a.Close()
	// The decision that came before publication waited, and the call was
	// dropped unpublished: nothing was decided.
	if err := <-early; !errors.Is(err, ErrUnknown) {
		t.Fatalf("decision on a call dropped unpublished: %v", err)
	}
	if l := q.List(); len(l) != 1 || l[0].ID != b.ID() {
		t.Fatalf("list %+v", l)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if r := b.Wait(ctx); r.Outcome != Abandoned {
		t.Fatalf("cancelled wait: %v", r)
	}
	for range keepEnded * 2 * 3 {
		tk := open(t, q, time.Nanosecond)
		tk.Wait(context.Background())
	}
	if len(q.ended) > keepEnded*2 || len(q.endedFIFO) != len(q.ended) {
		t.Fatalf("remembers %d ended calls", len(q.ended))
	}
}

func TestApprovers(t *testing.T) {
	q := New(1)
	tk, _ := q.Open(Request{Action: "a", Approvers: []string{"alice"}, Timeout: time.Hour})
	tk.Publish()
	if _, err := q.Decide(tk.ID(), true, "bob"); !errors.Is(err, ErrNotApprover) {
		t.Fatalf("bob: %v", err)
	}
	if _, err := q.Decide(tk.ID(), false, "alice"); err != nil {
		t.Fatal(err)
	}
	if r := tk.Wait(context.Background()); r != (Result{Outcome: Denied, By: "alice"}) {
		t.Fatalf("result %v", r)
	}
}

func TestIDsAndNames(t *testing.T) {
	q := New(1)
	tk, _ := q.Open(Request{Timeout: time.Second})
	if !ValidID(tk.ID()) {
		t.Fatalf("own id %q invalid", tk.ID())
	}
	for _, s := range []string{"", "apv-", "apv-0123456789abcde", "apv-0123456789abcdeg", "APV-0123456789abcdef", "apv-0123456789abcdef0"} {
		if ValidID(s) {
			t.Fatalf("%q valid", s)
		}
	}
	for _, s := range []string{"alice", "a.b@example.com", "system:serviceaccount:ns:sa", "u+1/x_y-z"} {
		if err := CheckName(s); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
	}
	for _, s := range []string{"", "al ice", "a\nb", "ä", fmt.Sprintf("%0129d", 0), "a\"b"} {
		if CheckName(s) == nil {
			t.Fatalf("%q accepted", s)
		}
	}
}

func FuzzValidIDAndName(f *testing.F) {
	f.Add("apv-0123456789abcdef")
	f.Add("alice@example.com")
	f.Add("apv-0123456789abcdeF")
	f.Fuzz(func(t *testing.T, s string) {
		if ValidID(s) && (len(s) != 20 || s[:4] != "apv-") {
			t.Fatalf("%q valid", s)
		}
		if CheckName(s) == nil {
			for _, c := range []byte(s) {
				if c <= ' ' || c >= 0x7f || c == '"' || c == '\\' {
					t.Fatalf("name %q accepted", s)
				}
			}
		}
	})
}

// A decision that arrives between the pending audit entry and Publish
// (the id is readable in the audit log a moment before the call is
// listed) waits for the publication and then decides the call.
func TestDecisionBeforePublishWaits(t *testing.T) {
	q := New(1)
	tk, _ := q.Open(Request{Action: "a", Timeout: time.Hour})
	done := make(chan error, 1)
	go func() { _, err := q.Decide(tk.ID(), true, "alice"); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("decided before publication: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	tk.Publish()
	if err := <-done; err != nil {
		t.Fatalf("decision after publication: %v", err)
	}
	if r := tk.Wait(context.Background()); r != (Result{Outcome: Approved, By: "alice"}) {
		t.Fatalf("result %v", r)
	}
	if _, err := q.Decide("apv-0000000000000000", true, "alice"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("unknown id: %v", err)
	}
}

// Calls a previous router left undecided, once recorded as ended, answer
// a decision ErrDecided, are not listed, do not take a place, and are
// forgotten oldest first beyond the bound; a held call is never shadowed.
func TestEndedBeforeThisQueue(t *testing.T) {
	q := New(1)
	held := open(t, q, time.Hour)
	var old []Pending
	for i := range keepEnded + 1 {
		old = append(old, Pending{ID: fmt.Sprintf("apv-%016x", i), Action: "mcp:s.t", Rule: "r"})
	}
	q.Ended(append(old, Pending{ID: held.ID()})...)
	if _, err := q.Decide(old[0].ID, true, "alice"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("the oldest beyond the bound: %v, want ErrUnknown", err)
	}
	for _, p := range old[1:] {
		if got, err := q.Decide(p.ID, true, "alice"); !errors.Is(err, ErrDecided) || got.Rule != "r" {
			t.Fatalf("%s: %+v %v, want ErrDecided", p.ID, got, err)
		}
	}
	if l := q.List(); len(l) != 1 || l[0].ID != held.ID() || q.Len() != 1 {
		t.Fatalf("listed %+v, len %d", l, q.Len())
	}
	if _, err := q.Decide(held.ID(), false, "alice"); err != nil {
		t.Fatalf("the held call: %v", err)
	}
	if r := held.Wait(context.Background()); r.Outcome != Denied {
		t.Fatalf("held call ended %v", r)
	}
}

// Stop ends every held call at once — published and waiting, or not yet
// published (its Wait returns at once) — as abandoned with Stopped, except
// one already decided, whose decision stands; it is not listed, a
// decision on it is ErrDecided without waiting for a publication, and
// nothing is held after it.
func TestStopEndsHeldCalls(t *testing.T) {
	q := New(4)
	waiting := open(t, q, time.Hour)
	approved := open(t, q, time.Hour)
	unpublished, _ := q.Open(Request{Action: "a", Timeout: time.Hour})
	if _, err := q.Decide(approved.ID(), true, "alice"); err != nil {
		t.Fatal(err)
	}
	ended := make(chan Result, 1)
	go func() { ended <- waiting.Wait(context.Background()) }()
	q.Stop()
	q.Stop()
	stopped := Result{Outcome: Abandoned, Stopped: true}
	select {
	case r := <-ended:
		if r != stopped {
			t.Fatalf("waiting call ended %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a waiting call outlived Stop")
	}
	if len(q.List()) != 0 {
		t.Fatalf("listed after Stop: %+v", q.List())
	}
	start := time.Now()
	if _, err := q.Decide(unpublished.ID(), true, "alice"); !errors.Is(err, ErrDecided) || time.Since(start) > publishWait/2 {
		t.Fatalf("decision on an unpublished call after Stop: %v after %v", err, time.Since(start))
	}
	unpublished.Publish()
	if r := unpublished.Wait(context.Background()); r != stopped {
		t.Fatalf("unpublished call ended %+v", r)
	}
	if r := approved.Wait(context.Background()); r != (Result{Outcome: Approved, By: "alice"}) {
		t.Fatalf("a call approved before Stop ended %+v", r)
	}
	for _, tk := range []*Ticket{waiting, unpublished} {
		if _, err := q.Decide(tk.ID(), true, "alice"); !errors.Is(err, ErrDecided) {
			t.Fatalf("decision on %s after it ended: %v", tk.ID(), err)
		}
	}
	if _, err := q.Open(Request{Action: "a", Timeout: time.Hour}); !errors.Is(err, ErrStopped) {
		t.Fatalf("Open after Stop: %v", err)
	}
	if q.Len() != 0 {
		t.Fatalf("%d places held after Stop", q.Len())
	}
}

// Exactly one of a decision and Stop ends a call, however they race, and
// the loser is told so.
func TestDecisionRacesStop(t *testing.T) {
	for range 200 {
		q := New(1)
		tk := open(t, q, time.Hour)
		var res Result
		var wg sync.WaitGroup
		wg.Go(func() { res = tk.Wait(context.Background()) })
		wg.Go(q.Stop)
		_, err := q.Decide(tk.ID(), true, "alice")
		wg.Wait()
		switch {
		case err == nil && res != (Result{Outcome: Approved, By: "alice"}):
			t.Fatalf("decision accepted but the call ended %+v", res)
		case err != nil && (!errors.Is(err, ErrDecided) || res != (Result{Outcome: Abandoned, Stopped: true})):
			t.Fatalf("decision refused (%v) but the call ended %+v", err, res)
		}
	}
}
