package audit

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

// ActionRecover is the action of the entry a Writer appends when it has
// recovered from a failed write or sync without restarting: the gap marker.
// Its attributes say what failed (error, failed_at), how many appends the
// log refused meanwhile (refused_entries: their calls were refused, so none
// of them was acknowledged), the durable entry the chain continues from
// (previous_seq) and how many unconfirmed bytes were cut (cut_bytes).
const ActionRecover = "audit:recover"

// gap is what a failure has cost until the log recovers.
type gap struct {
	since   time.Time
	first   error
	entries uint64 // appends that failed or were refused
}

// recoverLog tries to bring a failing log back, in the committer. After a
// failed fsync the kernel's page cache no longer says what reached the
// disk, so the log is not continued from what the files show: every byte
// past the last synced batch is cut (truncated, and day files started
// since removed), the cut is synced, the directory is recovered exactly as
// Open does it and must end with the last entry the Writer made durable,
// and the files are reopened. Then an audit:recover entry continues the
// chain from that entry, and once it is durable Append accepts entries
// again. Sequence numbers of the refused entries, none of which was
// acknowledged, are reused, as after a crash.
//
// Any step that fails leaves the log failing; the committer tries again
// with back-off.
func (w *Writer) recoverLog() {
	w.closeLogFiles()
	cut, err := w.cutUnconfirmed()
	if err == nil {
		err = w.reopen()
	}
	w.mu.Lock()
	g := w.gap
	if err != nil {
		w.mu.Unlock()
		w.fail(fmt.Errorf("%v; recovery failed: %w", g.first, err), 0)
		return
	}
	w.next = w.headSeq + 1
	marker := Record{Sandbox: w.opts.Sandbox, Agent: "kars-audit", Action: ActionRecover, Decision: "record",
		Reason: "audit log recovered after a failed write; the appends it refused meanwhile were not recorded and their calls were refused",
		Attrs: map[string]string{
			"error":           g.first.Error(),
			"failed_at":       string(appendTime(nil, g.since)),
			"refused_entries": strconv.FormatUint(g.entries, 10),
			"previous_seq":    strconv.FormatUint(w.headSeq, 10),
			"cut_bytes":       strconv.FormatInt(cut, 10),
		}}
	e := entryFromRecord(&marker)
	b, _, _ := w.stage(appendBody(nil, &e))
	w.queue = w.queue[:0] // b is committed here, not by the loop
	w.mu.Unlock()
	if err := w.commit(b); err != nil {
		w.fail(err, 0)
		return
	}
	w.mu.Lock()
	w.err, w.gap = nil, gap{}
	w.mu.Unlock()
}

// cutUnconfirmed removes every byte written after the last durable entry:
// it truncates that entry's file after it, removes day files started since,
// and truncates checkpoints.jsonl to the checkpoints that were synced. It
// returns how many bytes it cut.
func (w *Writer) cutUnconfirmed() (int64, error) {
	names, err := listLogFiles(w.opts.Dir)
	if err != nil {
		return 0, err
	}
	var cut int64
	for _, name := range names {
		path := joinDir(w.opts.Dir, name)
		switch {
		case name > w.durable.name:
			st, err := os.Stat(path)
			if err != nil {
				return cut, err
			}
			if err := os.Remove(path); err != nil {
				return cut, err
			}
			cut += st.Size()
		case name == w.durable.name:
			n, err := truncateSynced(path, w.durable.size)
			cut += n
			if err != nil {
				return cut, err
			}
		}
	}
	if w.opts.SigningKey != nil {
		if _, err := truncateSynced(joinDir(w.opts.Dir, checkpointName), w.cpSize); err != nil && !os.IsNotExist(err) {
			return cut, err
		}
	}
	if err := syncDir(w.opts.Dir); err != nil {
		return cut, fmt.Errorf("syncing the directory: %w", err)
	}
	return cut, nil
}

// truncateSynced cuts the file at path to size, if it is longer, and syncs
// it. It returns how many bytes it cut.
func truncateSynced(path string, size int64) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if st.Size() <= size {
		return 0, nil
	}
	if err := f.Truncate(size); err != nil {
		return 0, fmt.Errorf("truncating %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("syncing %s: %w", path, err)
	}
	return st.Size() - size, nil
}

// reopen recovers the directory as Open does, checks that it ends with the
// last durable entry, and reopens the files.
func (w *Writer) reopen() error {
	rec, err := recoverDir(w.opts.Dir)
	if err != nil {
		return err
	}
	head := w.Head()
	if rec.head.Seq != head.Seq || rec.head.Hash != head.Hash {
		return fmt.Errorf("the log in %s ends at entry %d, not at entry %d, the last one made durable: something else changed it; run 'kars audit verify %s'",
			w.opts.Dir, rec.head.Seq, head.Seq, w.opts.Dir)
	}
	if err := w.openFiles(rec.headDay); err != nil {
		w.closeLogFiles()
		return err
	}
	w.prev, w.cpSeq = head.Hash, rec.checkpoint.Seq
	return nil
}
