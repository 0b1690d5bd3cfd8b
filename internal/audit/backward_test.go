package audit

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// seqs are the sequence numbers of es.
func seqs(es []Entry) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.Seq
	}
	return out
}

// A log spread over three days reads back newest first, every entry once
// with its hash, whatever the block size; fn's false stops the walk.
func TestReadBackwardWalksTheLogNewestFirst(t *testing.T) {
	dir := t.TempDir()
	day := time.Date(2026, 3, 1, 23, 59, 59, 0, time.UTC)
	now := day
	w, err := Open(Options{Dir: dir, Sandbox: "sb", Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		now = day.Add(time.Duration(i) * 10 * time.Minute) // over four day files
		r := record(i)
		r.Reason = strings.Repeat("x", i*7) // lines of many lengths: the small blocks below cut through them
		if _, err := w.Append(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	if names, _ := listLogFiles(dir); len(names) < 3 {
		t.Fatalf("log files %v, want several days", names)
	}
	want := readEntries(t, dir)
	slices.Reverse(want)

	var got []Entry
	if err := ReadBackward(dir, func(e Entry) bool { got = append(got, e); return true }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seqs(got), seqs(want)) {
		t.Fatalf("walked %v, want %v", seqs(got), seqs(want))
	}
	for i := range got {
		if got[i].Hash != want[i].Hash || got[i].Reason != want[i].Reason {
			t.Fatalf("entry %d differs: %+v, want %+v", got[i].Seq, got[i], want[i])
		}
	}

	names, _ := listLogFiles(dir)
	last := filepath.Join(dir, names[len(names)-1])
	for _, block := range []int{1, 7, 100, 4096} {
		var small []Entry
		if _, err := readFileBackward(last, block, func(e Entry) bool { small = append(small, e); return true }); err != nil {
			t.Fatalf("block %d: %v", block, err)
		}
		if !slices.Equal(seqs(small), seqs(want[:len(small)])) || len(small) == 0 {
			t.Fatalf("block %d: walked %v", block, seqs(small))
		}
	}

	n := 0
	if err := ReadBackward(dir, func(Entry) bool { n++; return n < 5 }); err != nil || n != 5 {
		t.Fatalf("stopping after 5: saw %d, %v", n, err)
	}
}

// A line being written (no newline yet) is skipped; a damaged line stops
// the walk with an error naming where, after the newer entries were seen.
func TestReadBackwardPartialAndDamagedLines(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir, Sandbox: "sb"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := w.Append(context.Background(), record(i)); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	names, _ := listLogFiles(dir)
	path := filepath.Join(dir, names[0])
	data, _ := os.ReadFile(path)
	lines := bytes.SplitAfter(data, []byte("\n"))
	// Entries 1..6 (audit:open and five records); damage entry 3 and leave
	// half a line at the end.
	lines[2] = bytes.Replace(lines[2], []byte(`"decision":"allow"`), []byte(`"decision":"allOw"`), 1)
	damaged := append(bytes.Join(lines, nil), `{"seq":7,"ts":`...)
	if err := os.WriteFile(path, damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	var got []uint64
	err = ReadBackward(dir, func(e Entry) bool { got = append(got, e.Seq); return true })
	if !slices.Equal(got, []uint64{6, 5, 4}) {
		t.Fatalf("walked %v before the damage, want 6 5 4", got)
	}
	at := len(lines[0]) + len(lines[1])
	if err == nil || !strings.Contains(err.Error(), names[0]) || !strings.Contains(err.Error(), "at byte "+strconv.Itoa(at)) {
		t.Fatalf("error %v, want one naming %s at byte %d", err, names[0], at)
	}
}

// FuzzReadBackward: over any file content and block size, the backward
// walk yields exactly the forward split's complete, non-empty lines in
// reverse, up to the newest line ParseLine refuses, and then that error.
func FuzzReadBackward(f *testing.F) {
	entries, _ := seedLines(f)
	valid := bytes.Join(entries, []byte("\n"))
	f.Add(append(bytes.Clone(valid), '\n'), uint16(3))
	f.Add(append(bytes.Clone(valid), "\n\n{\"seq\""...), uint16(64))
	f.Add([]byte("\n\n\n"), uint16(1))
	f.Add([]byte("not json\n"+string(entries[0])+"\n"), uint16(5))
	path := filepath.Join(f.TempDir(), logFileName("2026-01-01"))
	f.Fuzz(func(t *testing.T, data []byte, block uint16) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		var want [][]byte
		splitLines(data, func(_ int, l []byte) bool {
			if len(l) > 0 {
				want = append(want, l)
			}
			return true
		})
		slices.Reverse(want)
		var got []Entry
		_, err := readFileBackward(path, int(block)+1, func(e Entry) bool { got = append(got, e); return true })
		for i, l := range want {
			e, perr := ParseLine(l)
			if perr != nil {
				if len(got) != i || err == nil {
					t.Fatalf("line %d (from the end) is refused by ParseLine, but the walk gave %d entries and %v", i, len(got), err)
				}
				return
			}
			if i >= len(got) || got[i].Hash != e.Hash || got[i].Seq != e.Seq {
				t.Fatalf("entry %d (from the end) differs or is missing (walked %d, err %v)", i, len(got), err)
			}
		}
		if err != nil || len(got) != len(want) {
			t.Fatalf("walked %d of %d lines, err %v", len(got), len(want), err)
		}
	})
}
