package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tamperLog writes a log of 40 entries spread over two days, with a
// checkpoint every 10 entries, and returns its directory.
func tamperLog(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	clk := &fakeClock{now: time.Date(2026, 5, 1, 23, 59, 59, 980e6, time.UTC)}
	w, err := Open(Options{Dir: dir, Sandbox: "sb", SigningKey: testKey(t, 7), CheckpointEvery: 10, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 39 {
		if _, err := w.Append(context.Background(), record(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, dir, VerifyOptions{})
	return dir
}

// logLines returns every log line in chain order with its file.
type logLine struct {
	file string
	text []byte // without newline
}

func logLines(t *testing.T, dir string) []logLine {
	t.Helper()
	names, _ := listLogFiles(dir)
	var out []logLine
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
			out = append(out, logLine{n, l})
		}
	}
	return out
}

// writeLines writes lines back, each to the file it names.
func writeLines(t *testing.T, dir string, lines []logLine) {
	t.Helper()
	files := map[string][]byte{}
	names, _ := listLogFiles(dir)
	for _, n := range names {
		files[n] = nil
	}
	for _, l := range lines {
		files[l.file] = append(append(files[l.file], l.text...), '\n')
	}
	for n, data := range files {
		if err := os.WriteFile(filepath.Join(dir, n), data, 0o640); err != nil {
			t.Fatal(err)
		}
	}
}

// lineOfSeq finds the position of entry seq among lines.
func lineOfSeq(t *testing.T, lines []logLine, seq uint64) int {
	t.Helper()
	for i, l := range lines {
		if e, err := ParseLine(l.text); err == nil && e.Seq == seq {
			return i
		}
	}
	t.Fatalf("no entry %d", seq)
	return -1
}

// forge builds a line with a valid hash of its own.
func forge(seq uint64, prev string, action string) []byte {
	e := Entry{Seq: seq, Time: time.Date(2026, 5, 2, 1, 0, 0, 0, time.UTC), Prev: prev,
		Record: Record{Agent: "agent-1", Action: action, Decision: "allow"}}
	line := newSealer().seal(nil, &e)
	return line[:len(line)-1]
}

// rehash recomputes a (modified) line's hash so that it verifies alone.
func rehash(t *testing.T, text []byte) []byte {
	t.Helper()
	e, err := ParseLine(text)
	if err != nil && e.Seq == 0 {
		t.Fatalf("cannot rehash: %v", err)
	}
	line := newSealer().seal(nil, &e)
	return line[:len(line)-1]
}

func TestTamperDetection(t *testing.T) {
	otherKey := testKey(t, 8)
	tests := []struct {
		name   string
		tamper func(t *testing.T, dir string, lines []logLine) []logLine
		kind   ProblemKind
		seq    uint64
		file   string // "" = do not check; "cp" = checkpoints file
	}{
		{"flip one byte in a field", func(t *testing.T, _ string, ls []logLine) []logLine {
			i := lineOfSeq(t, ls, 17)
			ls[i].text = bytes.Replace(ls[i].text, []byte(`"decision":"allow"`), []byte(`"decision":"allaw"`), 1)
			return ls
		}, Modified, 17, "log"},
		{"flip one byte in the hash", func(t *testing.T, _ string, ls []logLine) []logLine {
			i := lineOfSeq(t, ls, 5)
			b := ls[i].text
			b[len(b)-3] ^= 0x01
			return ls
		}, Modified, 5, "log"},
		{"flip a byte so the line is not JSON", func(t *testing.T, _ string, ls []logLine) []logLine {
			i := lineOfSeq(t, ls, 22)
			ls[i].text[0] = '['
			return ls
		}, Modified, 22, "log"},
		{"flip a digit of the sequence number", func(t *testing.T, _ string, ls []logLine) []logLine {
			i := lineOfSeq(t, ls, 30)
			ls[i].text = bytes.Replace(ls[i].text, []byte(`{"seq":30,`), []byte(`{"seq":31,`), 1)
			return ls
		}, Modified, 30, "log"},
		{"modify and recompute the hash", func(t *testing.T, _ string, ls []logLine) []logLine {
			i := lineOfSeq(t, ls, 12)
			ls[i].text = rehash(t, bytes.Replace(ls[i].text, []byte(`"decision":"allow"`), []byte(`"decision":"deny"`), 1))
			return ls
		}, Modified, 12, "log"},
		{"delete a line", func(t *testing.T, _ string, ls []logLine) []logLine {
			i := lineOfSeq(t, ls, 14)
			return append(ls[:i], ls[i+1:]...)
		}, Deleted, 14, "log"},
		{"delete a whole day file", func(t *testing.T, dir string, ls []logLine) []logLine {
			names, _ := listLogFiles(dir)
			os.Remove(filepath.Join(dir, names[0]))
			return nil
		}, Deleted, 1, "log"},
		{"swap two adjacent lines", func(t *testing.T, _ string, ls []logLine) []logLine {
			i := lineOfSeq(t, ls, 8)
			ls[i].text, ls[i+1].text = ls[i+1].text, ls[i].text
			return ls
		}, Reordered, 9, "log"},
		{"swap two distant lines", func(t *testing.T, _ string, ls []logLine) []logLine {
			i, j := lineOfSeq(t, ls, 25), lineOfSeq(t, ls, 28)
			ls[i].text, ls[j].text = ls[j].text, ls[i].text
			return ls
		}, Reordered, 28, "log"},
		{"insert a forged line that links", func(t *testing.T, _ string, ls []logLine) []logLine {
			i := lineOfSeq(t, ls, 19)
			prev, _ := ParseLine(ls[i].text)
			forged := logLine{ls[i].file, forge(20, prev.Hash, "tool:exfiltrate")}
			return append(ls[:i+1], append([]logLine{forged}, ls[i+1:]...)...)
		}, Inserted, 20, "log"},
		{"insert a forged line that does not link", func(t *testing.T, _ string, ls []logLine) []logLine {
			i := lineOfSeq(t, ls, 3)
			forged := logLine{ls[i].file, forge(4, strings.Repeat("ab", 32), "tool:exfiltrate")}
			return append(ls[:i+1], append([]logLine{forged}, ls[i+1:]...)...)
		}, Inserted, 4, "log"},
		{"insert a forged line with a far sequence number", func(t *testing.T, _ string, ls []logLine) []logLine {
			i := lineOfSeq(t, ls, 3)
			forged := logLine{ls[i].file, forge(90, strings.Repeat("cd", 32), "tool:exfiltrate")}
			return append(ls[:i+1], append([]logLine{forged}, ls[i+1:]...)...)
		}, Inserted, 90, "log"},
		{"truncate the tail", func(t *testing.T, _ string, ls []logLine) []logLine {
			return ls[:lineOfSeq(t, ls, 25)+1]
		}, Truncated, 26, "cp"},
		{"truncate in the middle of a line", func(t *testing.T, _ string, ls []logLine) []logLine {
			i := lineOfSeq(t, ls, 33)
			ls[i].text = ls[i].text[:40]
			return ls[:i+1]
		}, Modified, 33, "log"},
		{"replace the checkpoint key", func(t *testing.T, dir string, ls []logLine) []logLine {
			resign(t, dir, otherKey, nil)
			return ls
		}, BadCheckpoint, 10, "cp"},
		{"alter a checkpoint's hash", func(t *testing.T, dir string, ls []logLine) []logLine {
			resign(t, dir, testKey(t, 7), func(cp *Checkpoint) {
				if cp.Seq == 20 {
					cp.Hash = strings.Repeat("0", 64)
				}
			})
			return ls
		}, BadCheckpoint, 20, "cp"},
		{"forge a checkpoint signature", func(t *testing.T, dir string, ls []logLine) []logLine {
			path := filepath.Join(dir, checkpointName)
			data, _ := os.ReadFile(path)
			data = bytes.Replace(data, []byte(`"seq":30,`), []byte(`"seq":31,`), 1)
			os.WriteFile(path, data, 0o640)
			return ls
		}, BadCheckpoint, 31, "cp"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := tamperLog(t)
			if lines := tc.tamper(t, dir, logLines(t, dir)); lines != nil {
				writeLines(t, dir, lines)
			}
			rep, err := Verify(dir, VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			p := rep.Problem
			if p == nil {
				t.Fatalf("tampering went unnoticed: %+v", rep)
			}
			if p.Kind != tc.kind || p.Seq != tc.seq {
				t.Fatalf("got %v; want %s naming entry %d", p, tc.kind, tc.seq)
			}
			switch tc.file {
			case "log":
				if !strings.HasPrefix(p.At.File, logPrefix) || p.At.Line < 1 {
					t.Fatalf("problem not located in a log file: %v", p)
				}
			case "cp":
				if p.At.File != checkpointName {
					t.Fatalf("problem not located in the checkpoints: %v", p)
				}
			}
		})
	}
}

// resign rewrites every checkpoint, optionally altered, signed by key.
func resign(t *testing.T, dir string, key ed25519.PrivateKey, alter func(*Checkpoint)) {
	t.Helper()
	path := filepath.Join(dir, checkpointName)
	data, _ := os.ReadFile(path)
	var out []byte
	splitLines(data, func(_ int, line []byte) bool {
		cp, err := ParseCheckpoint(line)
		if err != nil {
			t.Fatal(err)
		}
		if alter != nil {
			alter(&cp)
		}
		out = append(out, signCheckpoint(key, &cp)...)
		return true
	})
	os.WriteFile(path, out, 0o640)
}

// A full rewrite with a new key (every entry re-chained, every checkpoint
// re-signed) is self-consistent; only a pinned key catches it.
func TestPinnedKeyCatchesFullRewrite(t *testing.T) {
	dir := tamperLog(t)
	attacker := testKey(t, 9)
	lines := logLines(t, dir)
	prev := GenesisHash
	for i := range lines {
		e, err := ParseLine(lines[i].text)
		if err != nil {
			t.Fatal(err)
		}
		if e.Action == ActionOpen {
			e.Attrs["checkpoint_key"] = KeyString(attacker.Public().(ed25519.PublicKey))
		}
		e.Prev = prev
		line := newSealer().seal(nil, &e)
		lines[i].text = line[:len(line)-1]
		prev = e.Hash
	}
	writeLines(t, dir, lines)
	bySeq := map[uint64]string{}
	for _, l := range lines {
		e, _ := ParseLine(l.text)
		bySeq[e.Seq] = e.Hash
	}
	resign(t, dir, attacker, func(cp *Checkpoint) { cp.Hash = bySeq[cp.Seq] })

	if rep := mustVerify(t, dir, VerifyOptions{}); rep.Entries != 40 {
		t.Fatalf("rewritten log should be self-consistent, got %+v", rep)
	}
	pinned := []ed25519.PublicKey{testKey(t, 7).Public().(ed25519.PublicKey)}
	rep, err := Verify(dir, VerifyOptions{TrustedKeys: pinned})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Problem == nil || rep.Problem.Kind != UntrustedKey || rep.Problem.Seq != 1 {
		t.Fatalf("pinned key did not catch the rewrite: %v", rep.Problem)
	}
}

func TestVerifyPrunedLog(t *testing.T) {
	dir := tamperLog(t)
	names, _ := listLogFiles(dir)
	os.Remove(filepath.Join(dir, names[0]))
	rep, err := Verify(dir, VerifyOptions{AllowPruned: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Problem != nil || rep.FirstSeq <= 1 || len(rep.Warnings) == 0 {
		t.Fatalf("pruned log: %+v %v", rep, rep.Problem)
	}
}

// The hash documented in docs/audit.md: SHA-256 over the line with the 74
// bytes of its ,"hash":"<64 hex>" member removed.
func TestDocumentedCanonicalBytes(t *testing.T) {
	dir := tamperLog(t)
	for _, l := range logLines(t, dir) {
		n := len(l.text)
		if !bytes.HasPrefix(l.text[n-75:], []byte(`,"hash":"`)) {
			t.Fatalf("line does not end with the hash member: %s", l.text)
		}
		canon := append(append([]byte{}, l.text[:n-75]...), '}')
		sum := sha256.Sum256(canon)
		if got := string(l.text[n-66 : n-2]); got != hex.EncodeToString(sum[:]) {
			t.Fatalf("hash %s is not SHA-256 of the documented canonical bytes", got)
		}
	}
}
