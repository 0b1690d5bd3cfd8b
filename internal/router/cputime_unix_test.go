//go:build unix

package router

import (
	"syscall"
	"time"
)

// processCPU returns the user plus system CPU time this process has used,
// so that benchmarks can report CPU per call.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
