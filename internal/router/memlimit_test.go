package router

import (
	"os"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"testing"
	"time"
)

func TestParseMemorySize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"", 0, true},
		{"536870912", 512 << 20, true}, // limits.memory through the downward API
		{" 64Mi\n", 64 << 20, true},
		{"1Gi", 1 << 30, true},
		{"96Ki", 96 << 10, true},
		{"2Ti", 2 << 40, true},
		{"500M", 500e6, true},
		{"3G", 3e9, true},
		{"7k", 7000, true},
		{"1T", 1e12, true},
		{"64MB", 0, false},
		{"Mi", 0, false},
		{"-1", 0, false},
		{"1.5Gi", 0, false},
		{"9000000Ti", 0, false}, // overflows int64
	} {
		got, err := ParseMemorySize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseMemorySize(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestSetMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	if got := SetMemoryLimit(0); got != 0 || debug.SetMemoryLimit(-1) != prev {
		t.Fatalf("a zero container limit changed the runtime's limit (returned %d)", got)
	}
	if got := SetMemoryLimit(100 << 20); got != 90<<20 || debug.SetMemoryLimit(-1) != 90<<20 {
		t.Fatalf("SetMemoryLimit(100 MiB) = %d, runtime limit %d; want 90 MiB for both", got, debug.SetMemoryLimit(-1))
	}
}

// gogc reads the collector's GOGC.
func gogc() uint64 {
	s := []rtmetrics.Sample{{Name: "/gc/gogc:percent"}}
	rtmetrics.Read(s)
	return s[0].Value.Uint64()
}

// TestTuneGC: with more than largeHeap surviving a collection the
// collector runs at largeHeapGOGC, and back at smallHeapGOGC once it is
// gone.
func TestTuneGC(t *testing.T) {
	if os.Getenv("GOGC") != "" {
		t.Skip("GOGC is set: TuneGC leaves it alone")
	}
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	stop := TuneGC()
	defer stop()
	await := func(want uint64) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); gogc() != want; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("GOGC %d, want %d", gogc(), want)
			}
			runtime.GC()
		}
	}
	big := make([][]byte, 0, 64)
	for range 40 {
		big = append(big, make([]byte, 1<<20)) // 40 MiB live
	}
	await(largeHeapGOGC)
	runtime.KeepAlive(big)
	big = nil
	await(smallHeapGOGC)
}

func TestSetMinProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	if n := SetMinProcs(); n != MinProcs || runtime.GOMAXPROCS(0) != MinProcs {
		t.Fatalf("one P raised to %d (GOMAXPROCS %d), want %d", n, runtime.GOMAXPROCS(0), MinProcs)
	}
	runtime.GOMAXPROCS(MinProcs + 3)
	if n := SetMinProcs(); n != MinProcs+3 {
		t.Fatalf("%d Ps changed to %d", MinProcs+3, n)
	}
}
