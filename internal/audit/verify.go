package audit

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// ProblemKind classifies the first thing Verify found wrong.
type ProblemKind string

// The problems Verify names.
const (
	Modified      ProblemKind = "modified"       // an entry's bytes changed
	Deleted       ProblemKind = "deleted"        // entries are missing from the chain
	Inserted      ProblemKind = "inserted"       // an entry that is not part of the chain
	Reordered     ProblemKind = "reordered"      // chain entries out of order
	Truncated     ProblemKind = "truncated"      // entries after a signed checkpoint are gone
	BadCheckpoint ProblemKind = "bad-checkpoint" // a checkpoint is forged, altered or disagrees
	UntrustedKey  ProblemKind = "untrusted-key"  // the log names a checkpoint key not pinned
)

// Location names a line of the log directory.
type Location struct {
	File string
	Line int
}

// String renders the location as file:line.
func (l Location) String() string { return fmt.Sprintf("%s:%d", l.File, l.Line) }

// Problem is the first defect Verify found.
type Problem struct {
	Kind ProblemKind
	// Seq is the entry (or, for checkpoint problems, the checkpointed
	// sequence number) the problem is about.
	Seq uint64
	// At is where the named entry or checkpoint is, or where a missing
	// entry should have been.
	At     Location
	Detail string
}

// Error renders the problem on one line, so a Problem can travel as an error.
func (p *Problem) Error() string {
	return fmt.Sprintf("%s: entry %d at %s: %s", p.Kind, p.Seq, p.At, p.Detail)
}

// Report is the outcome of Verify.
type Report struct {
	Files       int
	Entries     uint64
	FirstSeq    uint64
	LastSeq     uint64
	HeadHash    string
	Checkpoints int
	// SignedSeq is the highest sequence number covered by a valid
	// checkpoint; entries after it are chained but not yet signed.
	SignedSeq uint64
	// Warnings are facts worth knowing that are not tampering: a torn last
	// line left by a crash, saved torn tails, a log without checkpoints.
	Warnings []string
	// Problem is the first defect, or nil when the log verifies.
	Problem *Problem
}

// OK reports whether the log verified.
func (r *Report) OK() bool { return r.Problem == nil }

// VerifyOptions tunes Verify.
type VerifyOptions struct {
	// TrustedKeys pins the checkpoint keys. When set, every key the log
	// announces must be one of them; without it, the keys recorded in the
	// log's own audit:open entries are believed, which catches re-signed
	// checkpoints but not a rewrite of the whole log.
	TrustedKeys []ed25519.PublicKey
	// AllowPruned accepts a log whose oldest files were removed by
	// retention, so that it starts after sequence number 1.
	AllowPruned bool
	// Anchor is a head of this log recorded outside it (the controller
	// keeps the router's head in the sandbox's status): the log must still
	// hold entry Anchor.Seq, with Anchor.Hash. Checkpoints live beside the
	// log, so cutting the log's tail and checkpoints.jsonl together leaves
	// a log that verifies on its own; only a copy of the head kept
	// elsewhere shows what is missing.
	Anchor *Receipt
}

// Verify checks the log in dir offline: every line is a canonical entry
// whose hash matches, sequence numbers run without gaps, each entry records
// its predecessor's hash (across files), and every checkpoint is signed by
// the key in force, matches the entry it names and names an entry the log
// still has. It returns an error only when dir cannot be read; defects are
// in Report.Problem.
func Verify(dir string, opts VerifyOptions) (*Report, error) {
	names, err := listLogFiles(dir)
	if err != nil {
		return nil, err
	}
	rep := &Report{Files: len(names)}
	cps, cpLines, err := loadCheckpoints(dir, rep)
	if err != nil {
		return nil, err
	}
	if torn, _ := filepath.Glob(filepath.Join(dir, "*"+tornSuffix)); len(torn) > 0 {
		for _, t := range torn {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s holds bytes cut from a log tail at recovery", filepath.Base(t)))
		}
	}
	// A bad checkpoint line is reported unless walking the chain finds an
	// earlier cause.
	cpProblem := rep.Problem
	rep.Problem = nil
	v := &verifier{dir: dir, names: names, opts: opts, rep: rep, cps: cps, cpLines: cpLines}
	if err := v.run(); err != nil {
		return nil, err
	}
	if rep.Problem == nil {
		rep.Problem = cpProblem
	}
	return rep, nil
}

type verifier struct {
	dir     string
	names   []string
	opts    VerifyOptions
	rep     *Report
	cps     []Checkpoint
	cpLines []int
	cpNext  int

	// The last two chain entries, for classifying a break.
	prev, prevPrev *placed
	key            ed25519.PublicKey // checkpoint key in force
	keyAt          Location
	pruned         bool
	// pendingCP holds a checkpoint that disagrees with the entry it names.
	// It is reported after one more line, because when that line shows the
	// entry was inserted, "inserted" is the better name for the defect.
	pendingCP *Problem
}

type placed struct {
	e  Entry
	at Location
}

func (v *verifier) fail(kind ProblemKind, seq uint64, at Location, format string, args ...any) {
	v.rep.Problem = &Problem{Kind: kind, Seq: seq, At: at, Detail: fmt.Sprintf(format, args...)}
}

func (v *verifier) run() error {
	sc := &lineScanner{dir: v.dir, names: v.names}
	defer sc.close()
	for {
		data, at, terminated, ok, err := sc.next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if !terminated && sc.atEnd() {
			// A crash can tear the line being written; the writer cuts it
			// on its next start. Whether entries are missing is the
			// checkpoints' to say.
			v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("%s: incomplete last line (%d bytes), left by a crash while writing; the writer removes it when it next opens the log", at, len(data)))
			break
		}
		e, perr := ParseLine(data)
		if perr != nil {
			v.badLine(e, perr, at)
			return nil
		}
		if v.prev == nil {
			if !v.checkStart(e, at) {
				return nil
			}
		} else if e.Seq != v.prev.e.Seq+1 || e.Prev != v.prev.e.Hash {
			return v.classifyBreak(e, at, sc)
		}
		if v.pendingCP != nil {
			v.rep.Problem = v.pendingCP
			return nil
		}
		if !v.checkEntry(e, at) {
			return nil
		}
		if a := v.opts.Anchor; a != nil && e.Seq == a.Seq && e.Hash != a.Hash {
			v.fail(Modified, e.Seq, at, "entry %d has hash %s, but its head was recorded elsewhere as %s: the log was rewritten from entry %d on", e.Seq, e.Hash, a.Hash, e.Seq)
			return nil
		}
		v.prevPrev, v.prev = v.prev, &placed{e: e, at: at}
	}
	v.finish()
	return nil
}

// badLine reports a line that is not a valid entry. It is named by the
// sequence number it should have had.
func (v *verifier) badLine(e Entry, perr error, at Location) {
	want := uint64(1)
	if v.prev != nil {
		want = v.prev.e.Seq + 1
	}
	switch {
	case errors.Is(perr, errBadHash) && e.Seq == want:
		v.fail(Modified, want, at, "the entry's content no longer matches its hash")
	case errors.Is(perr, errBadHash) || errors.Is(perr, errNotCanonical):
		v.fail(Modified, want, at, "the entry (reading as sequence %d) was altered: %v", e.Seq, perr)
	default:
		v.fail(Modified, want, at, "the line is not a valid entry (%v)", perr)
	}
}

func (v *verifier) checkStart(e Entry, at Location) bool {
	v.rep.FirstSeq = e.Seq
	if e.Seq == 1 && e.Prev == GenesisHash {
		return true
	}
	if e.Seq == 1 || e.Prev == GenesisHash {
		v.fail(Modified, e.Seq, at, "the first entry does not start the chain (sequence 1 with the genesis hash)")
		return false
	}
	if !v.opts.AllowPruned {
		v.fail(Deleted, 1, at, "the log starts at entry %d: entries 1..%d are missing (pass AllowPruned if retention removed them)", e.Seq, e.Seq-1)
		return false
	}
	v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("the log starts at entry %d (older entries pruned); its first link cannot be checked", e.Seq))
	v.pruned = true
	return true
}

// checkEntry applies the per-entry checks that follow a good link: key
// announcements and checkpoints at this sequence number.
func (v *verifier) checkEntry(e Entry, at Location) bool {
	v.rep.Entries++
	v.rep.LastSeq, v.rep.HeadHash = e.Seq, e.Hash
	if e.Action == ActionOpen && e.Agent == "kars-audit" {
		if k := e.Attrs["checkpoint_key"]; k != "" {
			pub, err := base64.StdEncoding.DecodeString(k)
			if err != nil || len(pub) != ed25519.PublicKeySize {
				v.fail(Modified, e.Seq, at, "audit:open entry carries an unreadable checkpoint key")
				return false
			}
			if len(v.opts.TrustedKeys) > 0 && !keyIn(pub, v.opts.TrustedKeys) {
				v.fail(UntrustedKey, e.Seq, at, "the log announces checkpoint key %s, which is not one of the trusted keys", k)
				return false
			}
			v.key, v.keyAt = pub, at
		}
	}
	for v.cpNext < len(v.cps) && v.cps[v.cpNext].Seq <= e.Seq {
		cp := &v.cps[v.cpNext]
		cpAt := Location{checkpointName, v.cpLines[v.cpNext]}
		if cp.Seq < e.Seq {
			// Only possible when the log starts after this checkpoint.
			v.cpNext++
			continue
		}
		if cp.Hash != e.Hash {
			v.pendingCP = &Problem{Kind: BadCheckpoint, Seq: cp.Seq, At: cpAt,
				Detail: fmt.Sprintf("checkpoint says entry %d has hash %s, but the log's entry at %s has %s", cp.Seq, cp.Hash, at, e.Hash)}
			return true
		}
		if v.key == nil && v.pruned {
			// The entry announcing the key was pruned with the old files.
			if len(v.opts.TrustedKeys) > 0 && !keyIn(cp.Key, v.opts.TrustedKeys) {
				v.fail(UntrustedKey, cp.Seq, cpAt, "checkpoint is signed by %s, which is not one of the trusted keys", KeyString(cp.Key))
				return false
			}
			v.key, v.keyAt = cp.Key, cpAt
			v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("the entry announcing the checkpoint key was pruned; checkpoints are checked against the key of %s", cpAt))
		}
		if v.key == nil {
			v.fail(BadCheckpoint, cp.Seq, cpAt, "checkpoint is signed by %s, but the log announced no checkpoint key before entry %d", KeyString(cp.Key), cp.Seq)
			return false
		}
		if !bytes.Equal(cp.Key, v.key) {
			v.fail(BadCheckpoint, cp.Seq, cpAt, "checkpoint is signed by %s, but the key in force (announced at %s) is %s: the checkpoint key was replaced",
				KeyString(cp.Key), v.keyAt, KeyString(v.key))
			return false
		}
		v.rep.SignedSeq = cp.Seq
		v.cpNext++
	}
	return true
}

func (v *verifier) finish() {
	if v.pendingCP != nil {
		v.rep.Problem = v.pendingCP
		return
	}
	if v.cpNext < len(v.cps) {
		cp := v.cps[v.cpNext]
		at := Location{checkpointName, v.cpLines[v.cpNext]}
		if v.prev == nil {
			v.fail(Truncated, cp.Seq, at, "the log holds no entries, but a checkpoint covers entries up to %d", cp.Seq)
			return
		}
		v.fail(Truncated, v.prev.e.Seq+1, at, "the log ends at entry %d (%s), but a checkpoint covers entries up to %d: entries %d..%d were deleted",
			v.prev.e.Seq, v.prev.at, cp.Seq, v.prev.e.Seq+1, cp.Seq)
		return
	}
	if a := v.opts.Anchor; a != nil && a.Seq > 0 {
		switch {
		case v.prev == nil:
			v.fail(Truncated, a.Seq, Location{}, "the log holds no entries, but entry %d (hash %s) was recorded as written", a.Seq, a.Hash)
			return
		case v.prev.e.Seq < a.Seq:
			v.fail(Truncated, v.prev.e.Seq+1, v.prev.at, "the log ends at entry %d, but entry %d (hash %s) was recorded as written: entries %d..%d were cut, checkpoints included",
				v.prev.e.Seq, a.Seq, a.Hash, v.prev.e.Seq+1, a.Seq)
			return
		case v.rep.FirstSeq > a.Seq:
			v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("the recorded head (entry %d) is older than the oldest entry kept (%d): it cannot be checked", a.Seq, v.rep.FirstSeq))
		}
	}
	if v.prev != nil && v.rep.SignedSeq < v.prev.e.Seq {
		if len(v.cps) == 0 {
			v.rep.Warnings = append(v.rep.Warnings, "the log has no checkpoints: a rewrite of the whole log would go unnoticed")
		} else {
			v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("entries %d..%d are chained but not yet covered by a checkpoint", v.rep.SignedSeq+1, v.prev.e.Seq))
		}
	}
}

func keyIn(k ed25519.PublicKey, keys []ed25519.PublicKey) bool {
	for _, t := range keys {
		if bytes.Equal(k, t) {
			return true
		}
	}
	return false
}

// loadCheckpoints parses checkpoints.jsonl. A torn last line is a warning;
// any other bad line, a bad signature or a sequence that goes backwards is a
// problem recorded in rep (Verify then still walks the log for context, but
// reports the checkpoint).
func loadCheckpoints(dir string, rep *Report) ([]Checkpoint, []int, error) {
	data, err := os.ReadFile(filepath.Join(dir, checkpointName))
	if os.IsNotExist(err) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("audit: reading checkpoints: %w", err)
	}
	var cps []Checkpoint
	var lines []int
	n := 0
	end := splitLines(data, func(_ int, line []byte) bool {
		n++
		at := Location{checkpointName, n}
		cp, perr := ParseCheckpoint(line)
		switch {
		case errors.Is(perr, errBadSignature):
			rep.Problem = &Problem{Kind: BadCheckpoint, Seq: cp.Seq, At: at, Detail: "the checkpoint's signature does not verify under the key it names"}
		case perr != nil:
			rep.Problem = &Problem{Kind: BadCheckpoint, Seq: cp.Seq, At: at, Detail: fmt.Sprintf("the line is not a valid checkpoint (%v)", perr)}
		case len(cps) > 0 && cp.Seq <= cps[len(cps)-1].Seq:
			rep.Problem = &Problem{Kind: BadCheckpoint, Seq: cp.Seq, At: at, Detail: fmt.Sprintf("checkpoints go backwards (entry %d after entry %d)", cp.Seq, cps[len(cps)-1].Seq)}
		default:
			cps = append(cps, cp)
			lines = append(lines, n)
			return true
		}
		return false
	})
	if rep.Problem == nil && end < len(data) {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s:%d: incomplete last checkpoint, left by a crash while writing", checkpointName, n+1))
	}
	rep.Checkpoints = len(cps)
	return cps, lines, nil
}

// lineScanner reads the log files' lines in chain order.
type lineScanner struct {
	dir   string
	names []string
	fi    int
	f     *os.File
	r     *bufio.Reader
	line  int
	eof   bool // the current file is exhausted
}

// next returns the next line without its newline; terminated is false when
// the file ended before a newline.
func (s *lineScanner) next() (data []byte, at Location, terminated, ok bool, err error) {
	for {
		if s.r == nil {
			if s.fi >= len(s.names) {
				return nil, Location{}, false, false, nil
			}
			if s.f, err = os.Open(filepath.Join(s.dir, s.names[s.fi])); err != nil {
				return nil, Location{}, false, false, fmt.Errorf("audit: %w", err)
			}
			s.r, s.line, s.eof = bufio.NewReaderSize(s.f, 1<<20), 0, false
		}
		data, err = s.r.ReadBytes('\n')
		if err != nil && err != io.EOF {
			return nil, Location{}, false, false, fmt.Errorf("audit: reading %s: %w", s.names[s.fi], err)
		}
		if len(data) == 0 && err == io.EOF {
			s.f.Close()
			s.f, s.r = nil, nil
			s.fi++
			continue
		}
		s.line++
		at = Location{s.names[s.fi], s.line}
		if err == io.EOF {
			s.eof = true
			return data, at, false, true, nil
		}
		return data[:len(data)-1], at, true, true, nil
	}
}

// atEnd reports whether the last line returned was the last of the last
// file.
func (s *lineScanner) atEnd() bool { return s.eof && s.fi == len(s.names)-1 }

func (s *lineScanner) close() {
	if s.f != nil {
		s.f.Close()
	}
}

// classifyBreak names what went wrong where entry e does not continue the
// chain from v.prev. It reads ahead (once; Verify stops after the first
// problem) to tell a forged entry, which nothing links to, from a genuine
// entry out of place, which its successor still links to.
func (v *verifier) classifyBreak(e Entry, at Location, sc *lineScanner) error {
	prev := v.prev
	expected := prev.e.Seq + 1
	var next *placed
	var expectedAt *Location
	linked := false
	for {
		data, loc, _, ok, err := sc.next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		x, perr := ParseLine(data)
		if perr != nil {
			continue
		}
		if next == nil {
			next = &placed{e: x, at: loc}
		}
		if x.Seq == expected && expectedAt == nil {
			l := loc
			expectedAt = &l
		}
		linked = linked || x.Prev == e.Hash
	}
	nextContinuesPrev := next != nil && next.e.Seq == expected && next.e.Prev == prev.e.Hash
	switch {
	case v.prevPrev != nil && e.Seq == v.prevPrev.e.Seq+1 && e.Prev == v.prevPrev.e.Hash:
		v.fail(Inserted, prev.e.Seq, prev.at, "entry %d at %s follows entry %d directly; the entry at %s is not part of the chain", e.Seq, at, v.prevPrev.e.Seq, prev.at)
	case e.Seq == expected && nextContinuesPrev:
		v.fail(Inserted, e.Seq, at, "the entry is not part of the chain: the next line continues from entry %d", prev.e.Seq)
	case e.Seq == expected:
		v.fail(Modified, prev.e.Seq, prev.at, "entry %d at %s recorded a different hash for it: its content was altered and its hash recomputed", e.Seq, at)
	case linked && expectedAt != nil:
		v.fail(Reordered, e.Seq, at, "entry %d appears after entry %d but before entry %d (at %s)", e.Seq, prev.e.Seq, expected, *expectedAt)
	case linked && e.Seq > expected:
		v.fail(Deleted, expected, at, "entries %d..%d are missing between %s and %s", expected, e.Seq-1, prev.at, at)
	case linked:
		v.fail(Reordered, e.Seq, at, "entry %d appears after entry %d", e.Seq, prev.e.Seq)
	case nextContinuesPrev:
		v.fail(Inserted, e.Seq, at, "the entry is not part of the chain: the next line continues from entry %d", prev.e.Seq)
	case expectedAt != nil:
		v.fail(Reordered, e.Seq, at, "entry %d appears after entry %d but before entry %d (at %s)", e.Seq, prev.e.Seq, expected, *expectedAt)
	case next == nil && e.Seq > expected && e.Prev != prev.e.Hash:
		v.fail(Deleted, expected, at, "entries %d..%d are missing between %s and %s", expected, e.Seq-1, prev.at, at)
	default:
		v.fail(Inserted, e.Seq, at, "the entry does not continue the chain from entry %d (%s)", prev.e.Seq, prev.at)
	}
	return nil
}
