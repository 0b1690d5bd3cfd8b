package audit

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// cutTail removes every entry after seq from the log and every checkpoint
// that covers more: what someone with the log's volume can do to make the
// log forget its last entries. The result verifies on its own.
func cutTail(t *testing.T, dir string, seq uint64) {
	t.Helper()
	lines := logLines(t, dir)
	writeLines(t, dir, lines[:lineOfSeq(t, lines, seq)+1])
	data, err := os.ReadFile(filepath.Join(dir, checkpointName))
	if err != nil {
		t.Fatal(err)
	}
	var kept [][]byte
	for _, l := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
		cp, err := ParseCheckpoint(l)
		if err != nil {
			t.Fatal(err)
		}
		if cp.Seq <= seq {
			kept = append(kept, l)
		}
	}
	out := append(bytes.Join(kept, []byte("\n")), '\n')
	if err := os.WriteFile(filepath.Join(dir, checkpointName), out, 0o640); err != nil {
		t.Fatal(err)
	}
}

func TestAnchorCatchesTailAndCheckpointsCutTogether(t *testing.T) {
	dir := tamperLog(t)
	lines := logLines(t, dir)
	head, err := ParseLine(lines[len(lines)-1].text)
	if err != nil {
		t.Fatal(err)
	}
	anchor := &Receipt{Seq: head.Seq, Hash: head.Hash}
	mustVerify(t, dir, VerifyOptions{Anchor: anchor})

	cutTail(t, dir, 25)
	// Without the anchor the cut log is consistent: nothing shows.
	mustVerify(t, dir, VerifyOptions{})
	rep, err := Verify(dir, VerifyOptions{Anchor: anchor})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Problem == nil || rep.Problem.Kind != Truncated || rep.Problem.Seq != 26 || !strings.Contains(rep.Problem.Detail, "checkpoints included") {
		t.Fatalf("problem %+v", rep.Problem)
	}
	// An anchor at or below what is left still verifies.
	e25, _ := ParseLine(logLines(t, dir)[lineOfSeq(t, logLines(t, dir), 25)].text)
	mustVerify(t, dir, VerifyOptions{Anchor: &Receipt{Seq: 25, Hash: e25.Hash}})
}

func TestAnchorCatchesRewrittenTail(t *testing.T) {
	dir := tamperLog(t)
	lines := logLines(t, dir)
	e30, _ := ParseLine(lines[lineOfSeq(t, lines, 30)].text)
	// Rewrite entries 30.. with a different, well-chained history and
	// drop the checkpoints that would disagree.
	cutTail(t, dir, 29)
	w, err := Open(Options{Dir: dir, Sandbox: "sb"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := w.Append(t.Context(), record(100+i)); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	rep, err := Verify(dir, VerifyOptions{Anchor: &Receipt{Seq: 30, Hash: e30.Hash}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Problem == nil || rep.Problem.Kind != Modified || rep.Problem.Seq != 30 {
		t.Fatalf("problem %+v", rep.Problem)
	}
}
