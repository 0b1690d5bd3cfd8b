package router

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
)

// EnvMemoryLimit names the container's memory limit for kars-router, as the
// Kubernetes downward API renders limits.memory (resourceFieldRef, in
// bytes). The controller can set it so that the garbage collector knows the
// limit; kars-router's -memory-limit flag defaults to it.
const EnvMemoryLimit = "KARS_ROUTER_MEMORY_LIMIT"

// ParseMemorySize reads a memory size in bytes: a plain number, as the
// downward API writes it, or a number with a Kubernetes quantity suffix
// (Ki, Mi, Gi, Ti, or k, M, G, T). Empty means no limit (0).
func ParseMemorySize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	num, mult := s, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("memory size %q: want a number of bytes, optionally with a suffix Ki, Mi, Gi, Ti, k, M, G or T", s)
	}
	return n * mult, nil
}

// SetMemoryLimit makes the garbage collector aware of the container's
// memory limit: it sets the Go runtime's soft limit (debug.SetMemoryLimit,
// which also overrides GOMEMLIMIT) to 90% of it and returns that soft limit.
// Below the soft limit the collector paces itself by GOGC as usual; near it
// the collector runs more often and returns freed memory to the OS sooner,
// trading CPU for memory (at most about half the CPU, when the live heap
// itself reaches the limit) rather than letting the kernel kill the router.
// A container limit of 0 leaves the runtime's setting alone and returns 0.
func SetMemoryLimit(container int64) int64 {
	if container <= 0 {
		return 0
	}
	// The other 10% is for memory the runtime does not count: the
	// binary's pages and what the kernel charges the container for its
	// sockets.
	soft := container - container/10
	debug.SetMemoryLimit(soft)
	return soft
}

// MinProcs is the fewest Ps (runtime.GOMAXPROCS) kars-router runs with.
const MinProcs = 2

// SetMinProcs raises GOMAXPROCS to MinProcs when the runtime chose fewer
// (and the GOMAXPROCS environment variable does not set it), and returns
// the value in force. Go picks GOMAXPROCS from the CPUs the
// process may run on (sched_getaffinity) and rounds a cgroup CPU limit up
// to at least 2; pinned to one CPU (taskset, or Kubernetes' static CPU
// manager) it runs one P. With one P, the audit log's committer holds it
// for the whole of each fdatasync until the scheduler's monitor takes it
// back, so no other call gets as far as its audit entry meanwhile and
// group commit degenerates to a sync per call (bench/router measured 1.2
// entries per sync and a quarter of the throughput, against ~20 entries per
// sync with two Ps). A second P lets calls keep arriving while a sync is in
// flight; on one CPU the two share it.
func SetMinProcs() int {
	if n := runtime.GOMAXPROCS(0); n >= MinProcs || os.Getenv("GOMAXPROCS") != "" {
		return n
	}
	runtime.GOMAXPROCS(MinProcs)
	return MinProcs
}

// Garbage collection targets for TuneGC: the collector lets the heap grow
// by GOGC percent of the live heap and stacks before it collects. Small
// heaps (a router serving short calls) keep Go's default, which spends
// the least CPU; past largeHeap (hundreds of open streams, whose state is
// long-lived and whose allocation rate is low, so that collections are
// rare either way) the heap may grow by half as much.
const (
	smallHeapGOGC = 100
	largeHeapGOGC = 50
	largeHeap     = 16 << 20
)

// TuneGC adjusts the collector's GOGC after every collection to the size of
// what survived it (live heap plus goroutine stacks): smallHeapGOGC below
// largeHeap, largeHeapGOGC above. It does nothing if the GOGC environment
// variable is set: an operator's choice stands. The returned function stops
// it.
//
// Why: the heap's peak is the live heap plus GOGC percent of it and of the
// stacks, and with a thousand open streams that headroom, not the streams'
// state, is most of the router's memory (bench/router: 65 MB at the
// default, under 60 MB at 50), while at the default a router serving short
// calls spends a quarter less CPU per call than at 50.
func TuneGC() (stop func()) {
	if os.Getenv("GOGC") != "" {
		return func() {}
	}
	t := &gcTuner{percent: smallHeapGOGC, samples: []rtmetrics.Sample{
		{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/stacks:bytes"},
	}}
	t.arm()
	return func() { t.stopped.Store(true) }
}

// gcTuner runs after each collection, on the runtime's cleanup goroutine.
type gcTuner struct {
	stopped atomic.Bool
	percent int
	samples []rtmetrics.Sample
}

// sentinel is a heap object that lives until the next collection; its
// cleanup marks the end of one.
type sentinel struct{ _ *int }

func (t *gcTuner) arm() {
	runtime.AddCleanup(&sentinel{}, func(t *gcTuner) { t.collected() }, t)
}

func (t *gcTuner) collected() {
	if t.stopped.Load() {
		return
	}
	rtmetrics.Read(t.samples)
	live := t.samples[0].Value.Uint64() + t.samples[1].Value.Uint64()
	want := smallHeapGOGC
	if live > largeHeap {
		want = largeHeapGOGC
	}
	if want != t.percent {
		debug.SetGCPercent(want)
		t.percent = want
	}
	t.arm()
}
