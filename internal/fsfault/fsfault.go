//go:build linux

package fsfault

import (
	"syscall"
	"testing"
)

// LimitFileSize makes writes that would take any file past size bytes
// fail, until the returned function (also registered with tb.Cleanup) lifts
// the limit again. Only the soft limit is lowered, so lifting it needs no
// privilege.
func LimitFileSize(tb testing.TB, size int64) (lift func()) {
	tb.Helper()
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
