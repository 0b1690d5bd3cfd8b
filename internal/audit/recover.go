package audit

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// recoveryWindow is how much of a log file's tail recovery reads. Only
// unsynced bytes can be torn, and a batch is written and synced whole, so
// the damage a crash can do is bounded by the largest batch; 16 MiB covers
// tens of thousands of entries. Damage reaching further back is not a crash
// artefact, and Open refuses to guess.
const recoveryWindow = 16 << 20

type recovery struct {
	head       Entry  // last valid entry (Seq 0, GenesisHash for a new log)
	headDay    string // day of the file holding head; "" for a new log
	cutBytes   int64
	tornFile   string
	checkpoint Checkpoint
}

// recoverDir finds the chain head of the log in dir, cutting a torn tail off
// the newest file(s), and checks the checkpoints file against it.
func recoverDir(dir string) (recovery, error) {
	rec := recovery{head: Entry{Hash: GenesisHash}}
	names, err := listLogFiles(dir)
	if err != nil {
		return rec, err
	}
	for i := len(names) - 1; i >= 0; i-- {
		day, _ := dayOfFile(names[i])
		last, found, cut, torn, err := recoverTail(joinDir(dir, names[i]))
		if err != nil {
			return rec, err
		}
		rec.cutBytes += cut
		if torn != "" {
			rec.tornFile = filepath.Base(torn)
		}
		if found {
			rec.head, rec.headDay = last, day
			break
		}
		// The file holds no complete entry (it was created just before a
		// crash): the head is in an older file.
	}
	cp, err := recoverCheckpoints(dir)
	if err != nil {
		return rec, err
	}
	if cp.Seq > rec.head.Seq {
		return rec, fmt.Errorf("audit: %s: checkpoint for entry %d but the log ends at entry %d: the log was truncated; run 'kars audit verify %s' and keep the directory for investigation",
			dir, cp.Seq, rec.head.Seq, dir)
	}
	rec.checkpoint = cp
	return rec, nil
}

// recoverTail validates the tail of one log file and cuts everything after
// the last entry that parses, hashes correctly and links to its predecessor.
// Bytes cut that contained complete lines are kept in a ".torn" file next to
// the log, since complete lines after a bad one are not a plain torn write.
func recoverTail(path string) (last Entry, found bool, cut int64, torn string, err error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return last, false, 0, "", fmt.Errorf("audit: opening %s for recovery: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return last, false, 0, "", fmt.Errorf("audit: %s: %w", path, err)
	}
	size := st.Size()
	start := max(0, size-recoveryWindow)
	buf := make([]byte, size-start)
	if _, err := f.ReadAt(buf, start); err != nil && err != io.EOF {
		return last, false, 0, "", fmt.Errorf("audit: reading %s: %w", path, err)
	}
	data := buf
	if start > 0 {
		// Skip the partial line the window starts in.
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return last, false, 0, "", fmt.Errorf("audit: %s: no line break in the last %d bytes; the file is damaged beyond crash recovery", path, recoveryWindow)
		}
		data = data[i+1:]
		start += int64(i + 1)
	}
	good := splitLines(data, func(_ int, line []byte) bool {
		e, perr := ParseLine(line)
		if perr != nil || (found && (e.Seq != last.Seq+1 || e.Prev != last.Hash)) {
			return false
		}
		last, found = e, true
		return true
	})
	end := start + int64(good)
	if end == size {
		return last, found, 0, "", nil
	}
	if !found && start > 0 {
		return last, false, 0, "", fmt.Errorf("audit: %s: no valid entry in the last %d bytes; the file is damaged beyond crash recovery", path, recoveryWindow)
	}
	tail := buf[end-(size-int64(len(buf))):]
	if bytes.IndexByte(tail, '\n') >= 0 {
		torn = path + "." + strconv.FormatInt(time.Now().UnixNano(), 10) + tornSuffix
		if err := os.WriteFile(torn, tail, 0o640); err != nil {
			return last, found, 0, "", fmt.Errorf("audit: saving the damaged tail of %s: %w", path, err)
		}
	}
	if err := f.Truncate(end); err != nil {
		return last, found, 0, "", fmt.Errorf("audit: cutting the torn tail of %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return last, found, 0, "", fmt.Errorf("audit: syncing %s after recovery: %w", path, err)
	}
	return last, found, size - end, torn, nil
}

// recoverCheckpoints returns the last valid checkpoint, cutting a torn tail
// off the checkpoints file.
func recoverCheckpoints(dir string) (Checkpoint, error) {
	path := joinDir(dir, checkpointName)
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return Checkpoint{}, nil
	}
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit: reading %s: %w", path, err)
	}
	var last Checkpoint
	good := splitLines(data, func(_ int, line []byte) bool {
		cp, perr := ParseCheckpoint(line)
		if perr != nil {
			return false
		}
		last = cp
		return true
	})
	if good < len(data) {
		if bytes.IndexByte(data[good:], '\n') >= 0 {
			return last, fmt.Errorf("audit: %s: checkpoint at byte %d is invalid and more follow; not a torn write: run 'kars audit verify %s'", path, good, dir)
		}
		if err := os.Truncate(path, int64(good)); err != nil {
			return last, fmt.Errorf("audit: cutting the torn tail of %s: %w", path, err)
		}
	}
	return last, nil
}
