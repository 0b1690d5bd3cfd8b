package audit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// A log directory holds one file per UTC day, named audit-YYYY-MM-DD.jsonl,
// and checkpoints.jsonl. The chain runs through the day files in name order;
// names sort by date, so listing the directory recovers the order.
const (
	logPrefix      = "audit-"
	logSuffix      = ".jsonl"
	dayLayout      = "2006-01-02"
	checkpointName = "checkpoints.jsonl"
	lockName       = ".lock"
	// tornSuffix marks bytes cut from a log's tail at recovery, kept for
	// inspection instead of deleted.
	tornSuffix = ".torn"
)

// errLocked reports that another writer holds the log directory.
var errLocked = errors.New("another process is writing this audit log")

func logFileName(day string) string { return logPrefix + day + logSuffix }

// dayOfFile returns the day a log file name stands for, or false if the
// name is not a log file's.
func dayOfFile(name string) (string, bool) {
	if !strings.HasPrefix(name, logPrefix) || !strings.HasSuffix(name, logSuffix) {
		return "", false
	}
	day := strings.TrimSuffix(strings.TrimPrefix(name, logPrefix), logSuffix)
	if _, err := time.Parse(dayLayout, day); err != nil {
		return "", false
	}
	return day, true
}

// listLogFiles returns the log files in dir in chain order.
func listLogFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: reading log directory: %w", err)
	}
	var names []string
	for _, e := range ents {
		if _, ok := dayOfFile(e.Name()); ok && e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

// syncDir makes renames and creations in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// splitLines calls fn for each newline-terminated line of data with its
// byte offset, and returns the offset just past the last complete line.
func splitLines(data []byte, fn func(off int, line []byte) bool) int {
	off := 0
	for off < len(data) {
		i := slices.Index(data[off:], '\n')
		if i < 0 {
			break
		}
		if !fn(off, data[off:off+i]) {
			return off
		}
		off += i + 1
	}
	return off
}

func joinDir(dir, name string) string { return filepath.Join(dir, name) }
