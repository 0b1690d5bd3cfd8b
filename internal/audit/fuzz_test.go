package audit

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// seedLines returns real lines (entries and checkpoints) to seed fuzzers.
func seedLines(f *testing.F) (entries, checkpoints [][]byte) {
	dir := f.TempDir()
	w, err := Open(Options{Dir: dir, Sandbox: "seed", SigningKey: testKey(f, 1), CheckpointEvery: 2})
	if err != nil {
		f.Fatal(err)
	}
	for i := range 4 {
		r := record(i)
		r.Reason = "quote \" backslash \\ newline \n tab \t nul \x00 del \x7f é ✓"
		if _, err := w.Append(context.Background(), r); err != nil {
			f.Fatal(err)
		}
	}
	w.Close()
	names, _ := listLogFiles(dir)
	for _, n := range names {
		data, _ := os.ReadFile(filepath.Join(dir, n))
		splitLines(data, func(_ int, l []byte) bool { entries = append(entries, bytes.Clone(l)); return true })
	}
	data, _ := os.ReadFile(filepath.Join(dir, checkpointName))
	splitLines(data, func(_ int, l []byte) bool { checkpoints = append(checkpoints, bytes.Clone(l)); return true })
	return entries, checkpoints
}

// FuzzParseLine: any line ParseLine accepts is exactly what the writer
// would produce for the entry it decodes to.
func FuzzParseLine(f *testing.F) {
	entries, _ := seedLines(f)
	for _, l := range entries {
		f.Add(l)
	}
	f.Add([]byte(`{"seq":1}`))
	f.Add([]byte(`{"seq":1,"seq":2}`))
	f.Add([]byte("\xff\xfe"))
	f.Fuzz(func(t *testing.T, line []byte) {
		e, err := ParseLine(line)
		if err != nil {
			return
		}
		again := newSealer().seal(nil, &e)
		if !bytes.Equal(again[:len(again)-1], line) {
			t.Fatalf("accepted a line the writer would not produce:\n%q\n%q", line, again)
		}
	})
}

// FuzzParseCheckpoint: accepted checkpoints are canonical and their
// signatures verify.
func FuzzParseCheckpoint(f *testing.F) {
	_, cps := seedLines(f)
	for _, l := range cps {
		f.Add(l)
	}
	f.Add([]byte(`{"seq":1,"hash":"","ts":"","key":"","sig":""}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		cp, err := ParseCheckpoint(line)
		if err != nil {
			return
		}
		if got := checkpointLine(&cp); !bytes.Equal(got[:len(got)-1], line) {
			t.Fatalf("accepted a non-canonical checkpoint %q", line)
		}
	})
}

// FuzzVerify runs the verifier over arbitrary log and checkpoint files. It
// must never fail with an error (only report problems), and a log it
// passes must consist of entries that link.
func FuzzVerify(f *testing.F) {
	entries, cps := seedLines(f)
	log := bytes.Join(entries, []byte("\n"))
	cp := bytes.Join(cps, []byte("\n"))
	f.Add(append(bytes.Clone(log), '\n'), append(bytes.Clone(cp), '\n'))
	f.Add(log, []byte{})
	swapped := bytes.Join([][]byte{entries[0], entries[2], entries[1], entries[3]}, []byte("\n"))
	f.Add(swapped, cp)
	f.Add([]byte("garbage\n"), []byte("garbage"))
	f.Fuzz(func(t *testing.T, logData, cpData []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, logFileName("2026-01-01")), logData, 0o640)
		os.WriteFile(filepath.Join(dir, checkpointName), cpData, 0o640)
		rep, err := Verify(dir, VerifyOptions{})
		if err != nil {
			t.Fatalf("Verify errored instead of reporting: %v", err)
		}
		if rep.Problem != nil {
			return
		}
		var prev *Entry
		splitLines(logData, func(_ int, l []byte) bool {
			e, err := ParseLine(l)
			if err != nil {
				t.Fatalf("verified log holds an invalid line: %v", err)
			}
			if prev != nil && (e.Seq != prev.Seq+1 || e.Prev != prev.Hash) {
				t.Fatalf("verified log has a broken link at %d", e.Seq)
			}
			prev = &e
			return true
		})
	})
}

// FuzzRecoverTail appends arbitrary bytes to a closed log, as a crash or a
// power loss might leave them. Open must recover every entry written before,
// continue the chain, and leave a log that verifies.
func FuzzRecoverTail(f *testing.F) {
	f.Add([]byte(`{"seq":7,"ts":"20`))
	f.Add([]byte("\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Add([]byte("\n\n\n"))
	f.Add([]byte("garbage\n{\"seq\":8}\n"))
	entries, _ := seedLines(f)
	f.Add(append(bytes.Clone(entries[1]), '\n'))
	f.Fuzz(func(t *testing.T, tail []byte) {
		dir := t.TempDir()
		clk := &fakeClock{now: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
		key := testKey(t, 3)
		w, err := Open(Options{Dir: dir, SigningKey: key, Now: clk.Now})
		if err != nil {
			t.Fatal(err)
		}
		var last Receipt
		for i := range 5 {
			if last, err = w.Append(context.Background(), record(i)); err != nil {
				t.Fatal(err)
			}
		}
		w.Close()
		path := filepath.Join(dir, logFileName("2026-01-01"))
		fh, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		fh.Write(tail)
		fh.Close()

		w, err = Open(Options{Dir: dir, SigningKey: key, Now: clk.Now})
		if err != nil {
			t.Fatalf("recovery failed: %v", err)
		}
		next, err := w.Append(context.Background(), record(9))
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		if next.Seq != last.Seq+2 { // +1 for the audit:open entry
			t.Fatalf("chain continued at %d after %d", next.Seq, last.Seq)
		}
		rep, err := Verify(dir, VerifyOptions{})
		if err != nil || rep.Problem != nil {
			t.Fatalf("recovered log does not verify: %v %v", err, rep.Problem)
		}
		ents := readEntries(t, dir)
		if ents[last.Seq-1].Hash != last.Hash {
			t.Fatal("recovery changed an acknowledged entry")
		}
	})
}
