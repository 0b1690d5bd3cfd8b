package audit

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/fsfault"
)

// logSize is the size of the newest log file in dir.
func logSize(t *testing.T, dir string) int64 {
	t.Helper()
	names, err := listLogFiles(dir)
	if err != nil || len(names) == 0 {
		t.Fatalf("no log file in %s: %v", dir, err)
	}
	st, err := os.Stat(filepath.Join(dir, names[len(names)-1]))
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// awaitAppend appends until an append succeeds, and returns its receipt.
func awaitAppend(t *testing.T, w *Writer, i int) Receipt {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := w.Append(context.Background(), record(i))
		if err == nil {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("the log did not recover within 20s: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRecoversAfterFailedWrite makes the disk refuse the log's next write
// (a short write, then EFBIG) and then heal. Before the log recovered by
// itself, every later Append failed until the process restarted. Now: the
// failed append and those made while the disk refuses fail; once it heals
// appends succeed again without a restart; the log verifies, holds every
// acknowledged entry, and an audit:recover entry records the gap.
func TestRecoversAfterFailedWrite(t *testing.T) {
	dir := t.TempDir()
	key := testKey(t, 9)
	w, err := Open(Options{Dir: dir, Sandbox: "sb", SigningKey: key, CheckpointEvery: 3})
	if err != nil {
		t.Fatal(err)
	}
	acked := map[uint64]string{}
	for i := range 5 {
		r, err := w.Append(context.Background(), record(i))
		if err != nil {
			t.Fatal(err)
		}
		acked[r.Seq] = r.Hash
	}
	before := w.Head()
	// Room for part of one more line: the next batch is torn mid-line.
	lift := fsfault.LimitFileSize(t, logSize(t, dir)+40)
	_, err = w.Append(context.Background(), record(100))
	if !errors.Is(err, syscall.EFBIG) {
		t.Fatalf("append past the limit: %v, want EFBIG", err)
	}
	refused := 1
	// While the disk refuses, appends fail at once and recovery (which
	// must write its gap marker) keeps failing.
	for i := range 3 {
		if _, err := w.Append(context.Background(), record(200+i)); err == nil {
			t.Fatal("an append succeeded while the disk refuses writes")
		}
		refused++
		time.Sleep(60 * time.Millisecond)
	}
	if w.Err() == nil {
		t.Fatal("the log reports no failure while the disk refuses writes")
	}
	lift()
	r := awaitAppend(t, w, 300)
	acked[r.Seq] = r.Hash
	for i := range 5 {
		r, err := w.Append(context.Background(), record(400+i))
		if err != nil {
			t.Fatalf("append after recovery: %v", err)
		}
		acked[r.Seq] = r.Hash
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, dir, VerifyOptions{TrustedKeys: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}})
	var marker *Entry
	for _, e := range readEntries(t, dir) {
		if h, ok := acked[e.Seq]; ok {
			if h != e.Hash {
				t.Fatalf("entry %d on disk is not the one acknowledged", e.Seq)
			}
			delete(acked, e.Seq)
		}
		if e.Action == ActionRecover {
			marker = &e
		}
	}
	if len(acked) != 0 {
		t.Fatalf("%d acknowledged entries missing", len(acked))
	}
	if marker == nil {
		t.Fatal("no audit:recover entry records the gap")
	}
	// The waiting loop above may have been refused a few more times.
	n, _ := strconv.Atoi(marker.Attrs["refused_entries"])
	if marker.Seq != before.Seq+1 || marker.Attrs["previous_seq"] != strconv.FormatUint(before.Seq, 10) ||
		n < refused || marker.Attrs["cut_bytes"] == "0" || !strings.Contains(marker.Attrs["error"], "file too large") {
		t.Fatalf("gap marker %d %v: want seq %d following entry %d, at least %d refused entries, the torn bytes cut and the error",
			marker.Seq, marker.Attrs, before.Seq+1, before.Seq, refused)
	}
}

// TestRecoveryRefusesAChangedLog: if the last durable entry is no longer
// on disk when the log tries to recover, it stays failing rather than
// continue a chain it cannot vouch for; it recovers once the file is back.
func TestRecoveryRefusesAChangedLog(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	awaitAppend(t, w, 1)
	names, _ := listLogFiles(dir)
	path := filepath.Join(dir, names[0])
	lift := fsfault.LimitFileSize(t, logSize(t, dir)+10)
	if _, err := w.Append(context.Background(), record(2)); err == nil {
		t.Fatal("append past the limit succeeded")
	}
	if err := os.Rename(path, path+".moved"); err != nil {
		t.Fatal(err)
	}
	lift()
	time.Sleep(300 * time.Millisecond) // several recovery attempts
	if _, err := w.Append(context.Background(), record(3)); err == nil {
		t.Fatal("the log recovered although its file was gone")
	}
	if err := os.Rename(path+".moved", path); err != nil {
		t.Fatal(err)
	}
	awaitAppend(t, w, 4)
}

// dayClock moves a day forward on every reading, so that each entry goes
// to a new day file.
type dayClock struct{ fakeClock }

func (c *dayClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(24 * time.Hour)
	return c.now
}

// TestRecoversAfterFailedCheckpoint makes writing checkpoints.jsonl fail
// (every entry gets its own day file, so the checkpoints file is the only
// one large enough to hit the limit). A log that cannot sign its head
// refuses entries like one that cannot write them, and recovers the same
// way: the torn checkpoint is cut and the log verifies against its key.
func TestRecoversAfterFailedCheckpoint(t *testing.T) {
	dir := t.TempDir()
	key := testKey(t, 10)
	clk := &dayClock{fakeClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}}
	w, err := Open(Options{Dir: dir, SigningKey: key, CheckpointEvery: 1, CheckpointInterval: time.Hour, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	var last Receipt
	for i := range 8 {
		last = awaitAppend(t, w, i)
	}
	// The checkpoint follows the acknowledgement.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		data, _ := os.ReadFile(filepath.Join(dir, checkpointName))
		if lines := strings.Split(strings.TrimSpace(string(data)), "\n"); len(data) > 0 {
			if cp, err := ParseCheckpoint([]byte(lines[len(lines)-1])); err == nil && cp.Seq == last.Seq {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no checkpoint for the last entry")
		}
	}
	st, err := os.Stat(filepath.Join(dir, checkpointName))
	if err != nil {
		t.Fatal(err)
	}
	if ls := logSize(t, dir); ls >= st.Size() {
		t.Fatalf("log file %d bytes, checkpoints %d: the test needs the checkpoints to be the larger", ls, st.Size())
	}
	lift := fsfault.LimitFileSize(t, st.Size()+100)
	// This entry is durable and acknowledged; its checkpoint fails.
	if _, err := w.Append(context.Background(), record(100)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for w.Err() == nil {
		if time.Now().After(deadline) {
			t.Fatal("a failed checkpoint did not fail the log")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := w.Append(context.Background(), record(101)); err == nil || !strings.Contains(err.Error(), "checkpoint") {
		t.Fatalf("append while checkpoints fail: %v", err)
	}
	lift()
	awaitAppend(t, w, 102)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rep := mustVerify(t, dir, VerifyOptions{TrustedKeys: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}})
	if rep.SignedSeq != rep.Entries {
		t.Fatalf("report %+v: the close checkpoint should cover every entry", rep)
	}
}
