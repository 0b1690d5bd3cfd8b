package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeClock hands out strictly increasing times from a settable base.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(time.Millisecond)
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func testKey(t testing.TB, seed byte) ed25519.PrivateKey {
	t.Helper()
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
}

func record(i int) Record {
	return Record{Sandbox: "sb-1", Agent: "agent-1", Action: fmt.Sprintf("tool:t%d", i), Decision: "allow",
		Rule: "r", Reason: "because", PayloadSHA256: "ab", Latency: time.Duration(i) * time.Microsecond,
		Attrs: map[string]string{"i": fmt.Sprint(i)}}
}

// readEntries parses every line of the log in chain order.
func readEntries(t testing.TB, dir string) []Entry {
	t.Helper()
	names, err := listLogFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []Entry
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		splitLines(data, func(_ int, line []byte) bool {
			e, err := ParseLine(line)
			if err != nil {
				t.Fatalf("%s: %v", n, err)
			}
			out = append(out, e)
			return true
		})
	}
	return out
}

func mustVerify(t testing.TB, dir string, opts VerifyOptions) *Report {
	t.Helper()
	rep, err := Verify(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Problem != nil {
		t.Fatalf("verify: %v", rep.Problem)
	}
	return rep
}

func TestAppendReceiptsAndChain(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir, Sandbox: "sb-1", SigningKey: testKey(t, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var receipts []Receipt
	for i := range 5 {
		r, err := w.Append(context.Background(), record(i))
		if err != nil {
			t.Fatal(err)
		}
		receipts = append(receipts, r)
	}
	// Five lone appends, each its own commit; the log's open entry too.
	if n, d := w.Syncs(), w.SyncTime(); n < 6 || d <= 0 {
		t.Fatalf("Syncs %d, SyncTime %v after 5 appends", n, d)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append(context.Background(), record(9)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	ents := readEntries(t, dir)
	if len(ents) != 6 || ents[0].Action != ActionOpen {
		t.Fatalf("want an audit:open entry and 5 records, got %d entries", len(ents))
	}
	for i, r := range receipts {
		e := ents[i+1]
		if e.Seq != r.Seq || e.Hash != r.Hash || e.Action != fmt.Sprintf("tool:t%d", i) || e.Attrs["i"] != fmt.Sprint(i) {
			t.Fatalf("entry %d = %+v, receipt %+v", i, e, r)
		}
		if e.Prev != ents[i].Hash {
			t.Fatalf("entry %d does not link to its predecessor", e.Seq)
		}
	}
	rep := mustVerify(t, dir, VerifyOptions{TrustedKeys: []ed25519.PublicKey{testKey(t, 1).Public().(ed25519.PublicKey)}})
	if rep.Entries != 6 || rep.SignedSeq != 6 || rep.Checkpoints != 1 {
		t.Fatalf("report %+v: want 6 entries all covered by the close checkpoint", rep)
	}
}

func TestRestartContinuesChainAcrossDays(t *testing.T) {
	dir := t.TempDir()
	clk := &fakeClock{now: time.Date(2026, 1, 30, 23, 59, 59, 900e6, time.UTC)}
	key := testKey(t, 2)
	var last Receipt
	for run := range 3 {
		w, err := Open(Options{Dir: dir, Sandbox: "sb", SigningKey: key, Now: clk.Now})
		if err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		if run > 0 && w.Head().Seq != last.Seq+1 {
			t.Fatalf("run %d: head %d after restart, want %d (last entry + the audit:open entry)", run, w.Head().Seq, last.Seq+1)
		}
		for i := range 300 {
			if last, err = w.Append(context.Background(), record(i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		clk.Set(clk.now.Add(24 * time.Hour)) // next run is on a later day
	}
	names, _ := listLogFiles(dir)
	if len(names) < 4 {
		t.Fatalf("expected daily rotation to produce several files, got %v", names)
	}
	rep := mustVerify(t, dir, VerifyOptions{})
	if rep.LastSeq != last.Seq || rep.HeadHash != last.Hash || rep.FirstSeq != 1 {
		t.Fatalf("report %+v, last receipt %+v", rep, last)
	}
	if rep.SignedSeq != last.Seq {
		t.Fatalf("close did not checkpoint the head: signed %d of %d", rep.SignedSeq, last.Seq)
	}
}

func TestRecoveryCutsTornTail(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if _, err := w.Append(context.Background(), record(i)); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	names, _ := listLogFiles(dir)
	path := filepath.Join(dir, names[len(names)-1])
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"seq":12,"ts":"2026-`) // a write torn by a crash
	f.Close()

	rep := mustVerify(t, dir, VerifyOptions{})
	if len(rep.Warnings) == 0 || rep.LastSeq != 11 {
		t.Fatalf("torn tail should verify with a warning: %+v", rep)
	}
	w, err = Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	r, err := w.Append(context.Background(), record(99))
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if r.Seq != 13 { // 11 before, 12 is the new audit:open entry
		t.Fatalf("seq after recovery = %d, want 13", r.Seq)
	}
	ents := readEntries(t, dir)
	if open := ents[len(ents)-2]; open.Action != ActionOpen || open.Attrs["recovered_bytes"] != "21" || open.Attrs["previous_seq"] != "11" {
		t.Fatalf("audit:open after recovery does not record the cut: %+v", open.Attrs)
	}
	if rep := mustVerify(t, dir, VerifyOptions{}); len(rep.Warnings) != 1 { // only "no checkpoints"
		t.Fatalf("warnings after recovery: %v", rep.Warnings)
	}
}

func TestRecoveryKeepsCompleteLinesItCuts(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		w.Append(context.Background(), record(i))
	}
	w.Close()
	names, _ := listLogFiles(dir)
	path := filepath.Join(dir, names[0])
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("\x00\x00\x00\x00\n{\"seq\":7}\n") // garbage then a complete line
	f.Close()
	w, err = Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	torn, _ := filepath.Glob(filepath.Join(dir, "*"+tornSuffix))
	if len(torn) != 1 {
		t.Fatalf("cut bytes with complete lines were not saved: %v", torn)
	}
	if data, _ := os.ReadFile(torn[0]); !bytes.Contains(data, []byte(`{"seq":7}`)) {
		t.Fatalf("saved tail %q", data)
	}
	rep := mustVerify(t, dir, VerifyOptions{})
	if len(rep.Warnings) < 2 {
		t.Fatalf("verify should mention the saved tail: %v", rep.Warnings)
	}
}

func TestOpenRefusesLogShorterThanCheckpoint(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir, SigningKey: testKey(t, 3)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		w.Append(context.Background(), record(i))
	}
	w.Close()
	names, _ := listLogFiles(dir)
	path := filepath.Join(dir, names[0])
	data, _ := os.ReadFile(path)
	lines := bytes.SplitAfter(data, []byte("\n"))
	os.WriteFile(path, bytes.Join(lines[:2], nil), 0o640) // drop entries 3 and 4
	if _, err := Open(Options{Dir: dir, SigningKey: testKey(t, 3)}); err == nil {
		t.Fatal("Open accepted a log truncated below its last checkpoint")
	}
}

func TestConcurrentAppendsGroupCommit(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir, SigningKey: testKey(t, 4), CheckpointEvery: 100})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 16, 200
	seen := make(chan Receipt, writers*each)
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				r, err := w.Append(context.Background(), record(g*each+i))
				if err != nil {
					t.Error(err)
					return
				}
				seen <- r
			}
		})
	}
	wg.Wait()
	close(seen)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	bySeq := map[uint64]string{}
	for r := range seen {
		if _, dup := bySeq[r.Seq]; dup {
			t.Fatalf("sequence %d handed out twice", r.Seq)
		}
		bySeq[r.Seq] = r.Hash
	}
	for _, e := range readEntries(t, dir) {
		if h, ok := bySeq[e.Seq]; ok && h != e.Hash {
			t.Fatalf("entry %d on disk differs from its receipt", e.Seq)
		}
		delete(bySeq, e.Seq)
	}
	if len(bySeq) != 0 {
		t.Fatalf("%d acknowledged entries missing from the log", len(bySeq))
	}
	rep := mustVerify(t, dir, VerifyOptions{})
	// Checkpoints follow whole batches, so each covers at least 100 and at
	// most 100+writers-1 new entries.
	if rep.Checkpoints < writers*each/(100+writers) {
		t.Fatalf("only %d checkpoints for %d entries with CheckpointEvery=100", rep.Checkpoints, rep.Entries)
	}
}

func TestTimedCheckpoint(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir, SigningKey: testKey(t, 5), CheckpointInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r, _ := w.Append(context.Background(), record(1))
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		rep, err := Verify(dir, VerifyOptions{})
		if err == nil && rep.SignedSeq == r.Seq {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no timed checkpoint covered the last entry")
}

func TestAppendSanitisesFields(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	long := string(bytes.Repeat([]byte("é"), maxFieldBytes))
	rec := Record{Agent: "bad\xffutf8", Action: "tool:x\n\"quoted\"\t\x01\x7f", Reason: long}
	attrs := map[string]string{}
	for i := range maxAttrs + 3 {
		attrs[fmt.Sprintf("k%03d", i)] = "v"
	}
	rec.Attrs = attrs
	if _, err := w.Append(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	w.Close()
	ents := readEntries(t, dir)
	e := ents[len(ents)-1]
	if e.Agent != "bad\uFFFDutf8" || e.Action != rec.Action {
		t.Fatalf("round trip: agent %q action %q", e.Agent, e.Action)
	}
	if len(e.Reason) > maxFieldBytes || !bytes.HasSuffix([]byte(e.Reason), []byte(truncatedMark)) {
		t.Fatalf("long reason not truncated with a mark: %d bytes", len(e.Reason))
	}
	if len(e.Attrs) != maxAttrs+1 || e.Attrs["kars.attrs_dropped"] != "3" {
		t.Fatalf("attrs not bounded: %d", len(e.Attrs))
	}
	mustVerify(t, dir, VerifyOptions{})
	// Every line is one physical line: embedded newlines are escaped.
	names, _ := listLogFiles(dir)
	f, _ := os.Open(filepath.Join(dir, names[0]))
	defer f.Close()
	n := 0
	for sc := bufio.NewScanner(f); sc.Scan(); {
		n++
	}
	if n != len(ents) {
		t.Fatalf("%d physical lines for %d entries", n, len(ents))
	}
}

func TestAppendHonoursContext(t *testing.T) {
	w, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := w.Append(ctx, record(1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with a cancelled context: %v", err)
	}
}

func TestAppendTimeMatchesLayout(t *testing.T) {
	for _, tm := range []time.Time{
		time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
		time.Date(1999, 12, 31, 23, 59, 59, 999999999, time.FixedZone("x", 3600)),
		time.Date(2026, 7, 1, 0, 0, 0, 0, time.UTC),
		time.Date(12345, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Unix(0, 0),
	} {
		want := tm.UTC().Format(TimeLayout)
		if got := string(appendTime(nil, tm)); got != want {
			t.Errorf("appendTime(%v) = %s, want %s", tm, got, want)
		}
	}
}

func TestClockCacheMatchesAppendHead(t *testing.T) {
	var c clockCache
	base := time.Date(2026, 12, 31, 23, 59, 58, 0, time.UTC)
	for i, d := range []time.Duration{0, 1, 999_999_999, time.Second, time.Second + 5, 2 * time.Second, -time.Hour} {
		ts := base.Add(d)
		if got, want := string(c.appendHead(nil, uint64(i), ts)), string(appendHead(nil, uint64(i), ts)); got != want {
			t.Fatalf("%v: cached %s, want %s", ts, got, want)
		}
	}
}

func TestSecondWriterIsRefused(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if w2, err := Open(Options{Dir: dir}); err == nil {
		w2.Close()
		t.Fatal("a second writer opened a log that is in use")
	}
	w.Close()
	w3, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatalf("log still locked after Close: %v", err)
	}
	w3.Close()
}

// TestHandOver mixes lone appends (each finds nobody committing and commits
// its own entry) with bursts (entries wait for the commit in flight and the
// committer goroutine takes them), with checkpoints due by count and by
// timer and Close racing the last appends: every acknowledged entry must be
// in a log that verifies, with a checkpoint over its last entry, and every
// append must be acknowledged exactly once with its own sequence number.
func TestHandOver(t *testing.T) {
	dir := t.TempDir()
	key := testKey(t, 11)
	w, err := Open(Options{Dir: dir, SigningKey: key, CheckpointEvery: 7, CheckpointInterval: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[uint64]bool{}
	ack := func(r Receipt) {
		mu.Lock()
		defer mu.Unlock()
		if seen[r.Seq] {
			t.Errorf("sequence number %d acknowledged twice", r.Seq)
		}
		seen[r.Seq] = true
	}
	for round := range 20 {
		// A lone append.
		r, err := w.Append(context.Background(), record(round))
		if err != nil {
			t.Fatal(err)
		}
		ack(r)
		if round%3 == 0 {
			time.Sleep(3 * time.Millisecond) // let the checkpoint timer fire
		}
		// A burst.
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				r, err := w.Append(context.Background(), record(1000*round+g))
				if err != nil {
					t.Error(err)
					return
				}
				ack(r)
			})
		}
		wg.Wait()
	}
	// Close racing appends: each either is acknowledged or gets ErrClosed.
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r, err := w.Append(context.Background(), record(99000+g))
			if err == nil {
				ack(r)
			} else if !errors.Is(err, ErrClosed) {
				t.Error(err)
			}
		})
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	rep := mustVerify(t, dir, VerifyOptions{TrustedKeys: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}})
	// Entry 1 is the writer's own audit:open entry.
	if int(rep.Entries) != len(seen)+1 {
		t.Fatalf("%d entries in the log, %d acknowledged (+1 open)", rep.Entries, len(seen))
	}
	if rep.SignedSeq != rep.LastSeq || rep.Checkpoints < 2 {
		t.Fatalf("report %+v: checkpoints should be written along the way and cover the last entry at Close", rep)
	}
}
