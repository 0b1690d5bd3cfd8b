package audit

import (
	"syscall"
	"time"
)

// processCPU returns the user plus system CPU time this process has used,
// so benchmarks can report CPU per entry, a figure that other load on a
// shared machine disturbs far less than wall-clock throughput.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
