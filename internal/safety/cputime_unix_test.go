//go:build unix

package safety

import (
	"syscall"
	"time"
)

// threadCPU returns the CPU time the calling thread has used: a benchmark's
// cost per operation that other load on a shared machine disturbs far less
// than its wall-clock time.
func threadCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_THREAD, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
