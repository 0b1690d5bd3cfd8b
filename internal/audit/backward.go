package audit

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// backwardBlock is how much ReadBackward reads at a time, from a file's end
// towards its start.
const backwardBlock = 64 << 10

// ReadBackward calls fn with the entries of the log in dir, newest first,
// until fn returns false or the oldest entry has been passed. It reads each
// day file from its end in blocks, so a caller that looks at the recent past
// (the router closing out the approvals a restart cut off) reads only that,
// however long the log is.
//
// Each line is checked as ParseLine checks it; a line that fails ends the
// walk with an error naming its file and offset, after fn has seen every
// newer entry. Empty lines are skipped, and so are bytes after a file's last
// newline (a write in progress: Open cuts a torn tail before anyone reads).
// The links between entries are not checked: Verify does that.
func ReadBackward(dir string, fn func(Entry) bool) error {
	names, err := listLogFiles(dir)
	if err != nil {
		return err
	}
	for i := len(names) - 1; i >= 0; i-- {
		more, err := readFileBackward(joinDir(dir, names[i]), backwardBlock, fn)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// readFileBackward walks one file's lines from its end, reading block bytes
// at a time, and reports whether fn wants more.
func readFileBackward(path string, block int, fn func(Entry) bool) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("audit: %w", err)
	}
	// buf holds the file's bytes [pos, pos+len(buf)) not yet walked. Once
	// trimmed, it ends just after a newline (or is empty): the end of the
	// next line to hand to fn.
	pos := st.Size()
	var buf []byte
	trimmed := false
	for {
		if !trimmed {
			if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
				buf, trimmed = buf[:i+1], true
			}
		}
		for trimmed && len(buf) > 0 {
			j := bytes.LastIndexByte(buf[:len(buf)-1], '\n')
			if j < 0 && pos > 0 {
				break // the line starts in an earlier block
			}
			line := buf[j+1 : len(buf)-1]
			if len(line) > 0 {
				e, err := ParseLine(line)
				if err != nil {
					return false, fmt.Errorf("audit: %s at byte %d: %w", filepath.Base(path), pos+int64(j+1), err)
				}
				if !fn(e) {
					return false, nil
				}
			}
			buf = buf[:j+1]
		}
		if pos == 0 {
			return true, nil
		}
		if len(buf) > recoveryWindow {
			return false, fmt.Errorf("audit: %s: no line break in the %d bytes before byte %d; the file is damaged", filepath.Base(path), len(buf), pos+int64(len(buf)))
		}
		// A line longer than a block doubles the read, so that walking it
		// costs its length, not its length squared.
		n := int64(max(block, len(buf)))
		if n > pos {
			n = pos
		}
		pos -= n
		grown := make([]byte, int(n)+len(buf))
		if _, err := f.ReadAt(grown[:n], pos); err != nil && err != io.EOF {
			return false, fmt.Errorf("audit: reading %s: %w", filepath.Base(path), err)
		}
		copy(grown[n:], buf)
		buf = grown
	}
}
