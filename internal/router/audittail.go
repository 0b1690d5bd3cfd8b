package router

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/kars-io/kars/internal/audit"
)

// AuditTail returns the last n entries of the audit log in dir, oldest
// first, for the admin API. It reads the day files newest first and stops
// once it has n entries; each line is checked (canonical form and hash) as
// it is parsed, so a tampered tail shows up as an error here too.
func AuditTail(dir string, n int) ([]audit.Entry, error) {
	files, err := filepath.Glob(filepath.Join(dir, "audit-*.jsonl"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var out []audit.Entry
	for i := len(files) - 1; i >= 0 && len(out) < n; i-- {
		b, err := os.ReadFile(files[i])
		if err != nil {
			return nil, fmt.Errorf("audit tail: %w", err)
		}
		var entries []audit.Entry
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			if len(sc.Bytes()) == 0 {
				continue
			}
			e, err := audit.ParseLine(sc.Bytes())
			if err != nil {
				return nil, fmt.Errorf("audit tail: %s: %w", filepath.Base(files[i]), err)
			}
			entries = append(entries, e)
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("audit tail: %w", err)
		}
		out = append(entries, out...)
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out, nil
}
