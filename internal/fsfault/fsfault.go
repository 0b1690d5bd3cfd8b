//go:build linux

package fsfault

import (
	"flag"
	"syscall"
	"testing"
)

// LimitFileSize makes writes that would take any file past size bytes
// fail, until the returned function (also registered with tb.Cleanup) lifts
// the limit again. Only the soft limit is lowered, so lifting it needs no
// privilege.
func LimitFileSize(tb testing.TB, size int64) (lift func()) {
	tb.Helper()
	// go test writes a log of the test's file accesses (for its result
	// cache) while the test runs; the limit would cut it and fail the
	// package. -count=1 (as make test runs) turns that log off.
	if f := flag.Lookup("test.testlogfile"); f != nil && f.Value.String() != "" {
		tb.Skip("a process-wide file-size limit would cut go test's own log; run with -count=1")
	}
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		tb.Fatalf("getrlimit: %v", err)
	}
	if old.Cur != ^uint64(0) && old.Cur < uint64(size) {
		tb.Skipf("RLIMIT_FSIZE is already %d bytes", old.Cur)
	}
	lim := old
	lim.Cur = uint64(size)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		tb.Fatalf("setrlimit: %v", err)
	}
	lifted := false
	lift = func() {
		if lifted {
			return
		}
		lifted = true
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
			tb.Errorf("restoring RLIMIT_FSIZE: %v", err)
		}
	}
	tb.Cleanup(lift)
	return lift
}
