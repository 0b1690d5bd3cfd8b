// Package devlock serialises the tests that start `kars dev`. kars dev is
// machine-global (fixed ports, nftables tables), and `go test ./...` runs
// packages in parallel, so two packages that each start it would collide:
// one of them would find the ports taken. Every such test holds this lock
// for its whole run.
package devlock

import (
	"os"
	"syscall"
	"testing"
	"time"
)

// Path is the lock file. It is not /tmp/kars-dev.lock, which people take
// around a whole `go test` run with flock(1): a test taking that one from
// inside such a run would wait for itself.
const Path = "/tmp/kars-dev-tests.lock"

// Hold blocks until this test owns the machine's kars dev, and releases it
// when the test and its cleanups are done (register it before the cleanup
// that stops kars dev, so that one runs first). A wait of more than
// timeout fails the test.
func Hold(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	f, err := os.OpenFile(Path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		tb.Fatalf("kars dev lock: %v", err)
	}
	deadline := time.Now().Add(timeout)
	logged := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if err != syscall.EWOULDBLOCK {
			f.Close()
			tb.Fatalf("kars dev lock %s: %v", Path, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			tb.Fatalf("another test held the kars dev lock %s for more than %s", Path, timeout)
		}
		if !logged {
			tb.Logf("waiting for the kars dev lock %s (another package's kars dev test is running)", Path)
			logged = true
		}
		time.Sleep(time.Second)
	}
	tb.Cleanup(func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	})
}
