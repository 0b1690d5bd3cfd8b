package audit

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

const ms = time.Millisecond

// busy is a pacer that has seen other callers append at 4 entries per
// millisecond: on average 2 entries waiting, each for 0.5 ms.
func busy() pacer {
	return pacer{window: 2 * ms, maxEntries: 8, maxBytes: 4096, others: 2, latency: float64(ms / 2)}
}

// joinEvery is busy, except that entries joining a batch arrived gap apart.
func joinEvery(gap time.Duration) pacer {
	p := busy()
	p.burst = float64(gap)
	return p
}

func TestPacerDue(t *testing.T) {
	at := func(d time.Duration) time.Duration { return 100*ms + d }
	for _, tc := range []struct {
		name string
		p    pacer
		b    pending
		want time.Duration
	}{
		{"no window: at once", pacer{maxEntries: 8, maxBytes: 4096, others: 2, latency: float64(ms / 2)},
			pending{first: at(0), last: at(0), lead: 100 * time.Microsecond, entries: 1, bytes: 300}, at(0)},
		{"no history yet: at once", pacer{window: 2 * ms, maxEntries: 8, maxBytes: 4096},
			pending{first: at(0), last: at(0), lead: time.Microsecond, entries: 1, bytes: 300}, at(0)},
		{"lone caller (never finds others waiting): at once", pacer{window: 2 * ms, maxEntries: 8, maxBytes: 4096, latency: float64(ms / 2)},
			pending{first: at(0), last: at(0), lead: 10 * time.Microsecond, entries: 1, bytes: 300}, at(0)},
		{"fewer than one append expected in the window: at once", pacer{window: 2 * ms, maxEntries: 8, maxBytes: 4096, others: 0.2, latency: float64(ms / 2)},
			pending{first: at(0), last: at(0), lead: 100 * time.Microsecond, entries: 1, bytes: 300}, at(0)},
		{"busy: waits four expected gaps after the latest entry", busy(),
			pending{first: at(0), last: at(0), lead: 100 * time.Microsecond, entries: 1, bytes: 300}, at(ms)},
		{"busy: each arrival extends the wait", busy(),
			pending{first: at(0), last: at(ms / 2), lead: 100 * time.Microsecond, entries: 4, bytes: 1200}, at(3 * ms / 2)},
		{"busy: never past the window", busy(),
			pending{first: at(0), last: at(1900 * time.Microsecond), lead: 100 * time.Microsecond, entries: 6, bytes: 1800}, at(2 * ms)},
		{"busy, but the batch starts after a quiet spell: at once", busy(),
			pending{first: at(0), last: at(0), lead: 2 * ms, entries: 1, bytes: 300}, at(0)},
		{"a quiet spell before the first of several entries does not matter", busy(),
			pending{first: at(0), last: at(ms / 4), lead: 2 * ms, entries: 2, bytes: 600}, at(5 * ms / 4)},
		{"full by count: at once", busy(),
			pending{first: at(0), last: at(ms / 4), lead: 100 * time.Microsecond, entries: 8, bytes: 2400}, at(0)},
		{"closed group (entries join microseconds apart): at once", joinEvery(10 * time.Microsecond),
			pending{first: at(0), last: at(20 * time.Microsecond), lead: 500 * time.Microsecond, entries: 3, bytes: 900}, at(0)},
		{"entries join 200 µs apart: four such gaps after the latest", joinEvery(200 * time.Microsecond),
			pending{first: at(0), last: at(400 * time.Microsecond), lead: 50 * time.Microsecond, entries: 3, bytes: 900}, at(1200 * time.Microsecond)},
		{"closed group, first entry after the previous sync: at once", joinEvery(10 * time.Microsecond),
			pending{first: at(0), last: at(0), lead: 500 * time.Microsecond, entries: 1, bytes: 300}, at(0)},
		{"full by bytes: at once", busy(),
			pending{first: at(0), last: at(ms / 4), lead: 100 * time.Microsecond, entries: 2, bytes: 5000}, at(0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.p.due(tc.b); got != tc.want {
				t.Fatalf("due = %v after the first entry, want %v", got-tc.b.first, tc.want-tc.b.first)
			}
		})
	}
}

// TestPacerEstimatesRate feeds the pacer an open-loop stream and a lone
// caller's stream and checks what it learns: Little's law recovers the
// open-loop rate, and the lone caller is never taken for a crowd.
func TestPacerEstimatesRate(t *testing.T) {
	p := pacer{window: 2 * ms, maxEntries: 128, maxBytes: 1 << 20}
	// Poisson arrivals at 2,000 a second, each entry durable 0.75 ms after
	// it arrives.
	rng := rand.New(rand.NewPCG(1, 2))
	const lat = 3 * ms / 4
	now := time.Duration(0)
	var waiting []time.Duration // arrival times of unacknowledged entries
	var sum float64
	const n, from = 4000, 1000
	for i := range n {
		now += time.Duration(rng.ExpFloat64() * float64(ms/2))
		kept := waiting[:0]
		for _, a := range waiting {
			if now-a >= lat {
				p.acked(a+lat, 1, a)
			} else {
				kept = append(kept, a)
			}
		}
		waiting = kept
		p.arrive(now, len(waiting), true)
		waiting = append(waiting, now)
		if i >= from {
			sum += p.others / p.latency * float64(time.Second)
		}
	}
	if mean := sum / (n - from); mean < 1800 || mean > 2200 {
		t.Fatalf("open loop at 2,000/s estimated as %.0f/s on average", mean)
	}
	if due := p.due(pending{first: now, last: now, lead: 10 * time.Microsecond, entries: 1, bytes: 300}); due <= now {
		t.Fatal("an open-loop stream at 2,000/s does not wait for company with a 2 ms window")
	}

	// One caller appending again as soon as its entry is durable.
	lone := pacer{window: 2 * ms, maxEntries: 128, maxBytes: 1 << 20}
	now = 0
	for range 400 {
		now += 10 * time.Microsecond
		lone.arrive(now, 0, false)
		now += 300 * time.Microsecond
		lone.acked(now, 1, now-300*time.Microsecond)
	}
	if due := lone.due(pending{first: now, last: now, lead: 10 * time.Microsecond, entries: 1, bytes: 300}); due != now {
		t.Fatalf("a lone caller's append is held for %v", due-now)
	}
}

// TestCommitWindowSharesSyncs appends a steady stream from independent
// callers, each entry in its own goroutine one millisecond after the last,
// as requests reach a busy router. Without a window nearly every entry
// would get its own fdatasync (a sync takes well under a millisecond);
// with one, entries share them. Every acknowledgement must still be
// durable: the receipts match the log and the log verifies.
func TestCommitWindowSharesSyncs(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir, SigningKey: testKey(t, 6), CommitWindow: 50 * ms})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	receipts := map[uint64]string{}
	appendOne := func(i int) {
		r, err := w.Append(context.Background(), record(i))
		if err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		receipts[r.Seq] = r.Hash
		mu.Unlock()
	}
	// A burst first, so that the writer has seen concurrent callers even
	// where syncs are so fast (tmpfs) that the stream alone rarely
	// overlaps one.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() { appendOne(i) })
	}
	wg.Wait()
	const n = 200
	syncs0 := w.Syncs()
	start := time.Now()
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * ms)))
		wg.Go(func() { appendOne(8 + i) })
	}
	wg.Wait()
	syncs := w.Syncs() - syncs0
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d entries, %d syncs", n, syncs)
	if syncs > n/2 {
		t.Fatalf("%d syncs for %d entries arriving 1 ms apart with a 50 ms window", syncs, n)
	}
	for _, e := range readEntries(t, dir) {
		if h, ok := receipts[e.Seq]; ok {
			if h != e.Hash {
				t.Fatalf("entry %d on disk differs from its receipt", e.Seq)
			}
			delete(receipts, e.Seq)
		}
	}
	if len(receipts) != 0 {
		t.Fatalf("%d acknowledged entries missing from the log", len(receipts))
	}
	mustVerify(t, dir, VerifyOptions{})
}

// TestCommitWindowDoesNotHoldLoneAppends gives the writer a window far
// longer than any sync and checks that nobody waits for it when there is
// nobody to wait for: one caller appending again as soon as its entry is
// durable, and a lone append after a burst has ended.
func TestCommitWindowDoesNotHoldLoneAppends(t *testing.T) {
	const window = 10 * time.Second
	w, err := Open(Options{Dir: t.TempDir(), CommitWindow: window})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	start := time.Now()
	for i := range 50 {
		if _, err := w.Append(context.Background(), record(i)); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > window/2 {
		t.Fatalf("50 appends by one caller took %v: they were held for the window", d)
	}
	w.mu.Lock()
	now := time.Since(w.start)
	due := w.pace.due(pending{first: now, last: now, lead: 10 * time.Microsecond, entries: 1, bytes: 300})
	w.mu.Unlock()
	if due != now {
		t.Fatalf("after 50 appends by one caller the writer would hold the next for %v", due-now)
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 20 {
				if _, err := w.Append(context.Background(), record(g*20+i)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	time.Sleep(200 * ms)
	start = time.Now()
	if _, err := w.Append(context.Background(), record(0)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > window/2 {
		t.Fatalf("a lone append after a burst took %v: it was held for the window", d)
	}
}

// holdLong makes w believe another caller appends every ten seconds, so
// that it holds a batch that is not full for about 40 s (four expected
// gaps).
func holdLong(w *Writer) {
	w.mu.Lock()
	w.pace.others, w.pace.latency, w.pace.burst = 1, float64(10*time.Second), float64(10*time.Second)
	w.mu.Unlock()
}

// staged returns how many entries wait in the batch that is filling.
func staged(w *Writer) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.cur.spans)
}

// TestCommitWindowDoesNotHoldAClosedGroup runs four callers that each
// append again as soon as their entry is durable, with a window far longer
// than any sync. Once all four wait nobody else can join the batch, so it
// must be committed after a short quiet spell rather than when the window
// ends; before the pacer measured the gaps within batches this took minutes.
func TestCommitWindowDoesNotHoldAClosedGroup(t *testing.T) {
	const window = 10 * time.Second
	w, err := Open(Options{Dir: t.TempDir(), CommitWindow: window})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	start := time.Now()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 50 {
				if _, err := w.Append(context.Background(), record(g*100+i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	// Held batches would take up to the window each; unheld ones take a
	// sync and at most a few gaps between appends.
	if d := time.Since(start); d > window/2 {
		t.Fatalf("4 callers appending 50 entries each took %v: their batches were held", d)
	}
}

// TestCommitWindowFullBatchIsNotHeld holds batches for up to an hour and
// caps them at four entries: four concurrent appends fill a batch, which
// must then be committed at once.
func TestCommitWindowFullBatchIsNotHeld(t *testing.T) {
	w, err := Open(Options{Dir: t.TempDir(), CommitWindow: time.Hour, CommitMaxEntries: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	holdLong(w)
	done := make(chan error, 4)
	for i := range 4 {
		go func() {
			_, err := w.Append(context.Background(), record(i))
			done <- err
		}()
	}
	for range 4 {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("a full batch was held")
		}
	}
}

// TestCloseWhileHolding closes the writer while a batch waits for company:
// Close must commit it, and its caller must get its receipt.
func TestCloseWhileHolding(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir, CommitWindow: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	holdLong(w)
	got := make(chan error, 1)
	go func() {
		_, err := w.Append(context.Background(), record(1))
		got <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for staged(w) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the append was never staged")
		}
		time.Sleep(ms)
	}
	time.Sleep(10 * ms)
	if staged(w) != 1 {
		t.Fatal("the batch was not held")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("append held at Close: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not commit the held batch")
	}
	if ents := readEntries(t, dir); len(ents) != 2 {
		t.Fatalf("%d entries on disk, want the open entry and the held one", len(ents))
	}
}
