package audit

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchRecord is a typical governed tool call.
var benchRecord = Record{
	Sandbox: "research-7f3c", Agent: "agent-research", Action: "mcp:github.create_issue", Decision: "allow",
	Rule: "github-write", Reason: `rule "github-write" (priority 10) allows mcp:github.*`,
	PayloadSHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
	Latency:       1830 * time.Microsecond, Attrs: map[string]string{"model": "gpt-4.1", "tokens": "1532"},
}

// windows are the commit windows the benchmarks compare: 0 is the writer
// without a window (a batch is committed as soon as the previous sync
// allows), the same-run baseline for DefaultCommitWindow.
var windows = []time.Duration{0, DefaultCommitWindow}

// BenchmarkAppendGroupCommit measures durable appends from many concurrent
// callers, as a busy router has requests in flight: throughput in
// entries/s and the p50/p99 latency from calling Append to the durable
// acknowledgement. The sub-benchmarks vary how many appends are in flight;
// by Little's law throughput is in-flight divided by latency, so more
// callers buy throughput with latency.
func BenchmarkAppendGroupCommit(b *testing.B) {
	for _, inflight := range []int{4, 16, 64, 256, 512} {
		for _, window := range windows {
			b.Run(fmt.Sprintf("inflight=%d/window=%v", inflight, window), func(b *testing.B) { benchGroupCommit(b, inflight, window) })
		}
	}
}

func benchGroupCommit(b *testing.B, inflight int, window time.Duration) {
	w := openBench(b, window)
	var mu sync.Mutex
	var lat []time.Duration
	var failed atomic.Bool
	b.SetParallelism(max(1, inflight/runtime.GOMAXPROCS(0)))
	b.ReportAllocs()
	start, cpu0, syncs0 := time.Now(), processCPU(), w.Syncs()
	b.RunParallel(func(pb *testing.PB) {
		local := make([]time.Duration, 0, b.N/inflight+1024)
		for pb.Next() {
			t0 := time.Now()
			if _, err := w.Append(context.Background(), benchRecord); err != nil {
				failed.Store(true)
				return
			}
			local = append(local, time.Since(t0))
		}
		mu.Lock()
		lat = append(lat, local...)
		mu.Unlock()
	})
	finishBench(b, w, failed.Load(), lat, start, cpu0, syncs0)
}

// BenchmarkAppendOpenLoop appends at a fixed rate, each entry from its own
// goroutine at its scheduled time, as requests arrive at a router
// independently of each other; latency is measured from the scheduled time.
// This is where a commit window matters: syncs are quick next to the gaps
// between appends, so without one nearly every append pays a whole sync.
func BenchmarkAppendOpenLoop(b *testing.B) {
	for _, rate := range []int{500, 1000, 2000, 5000} {
		for _, window := range windows {
			b.Run(fmt.Sprintf("rate=%d/window=%v", rate, window), func(b *testing.B) { benchOpenLoop(b, rate, window) })
		}
	}
}

func benchOpenLoop(b *testing.B, rate int, window time.Duration) {
	w := openBench(b, window)
	interval := time.Second / time.Duration(rate)
	lat := make([]time.Duration, b.N)
	var failed atomic.Bool
	var wg sync.WaitGroup
	b.ReportAllocs()
	start, cpu0, syncs0 := time.Now(), processCPU(), w.Syncs()
	for i := range b.N {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		wg.Go(func() {
			if _, err := w.Append(context.Background(), benchRecord); err != nil {
				failed.Store(true)
			}
			lat[i] = time.Since(at)
		})
	}
	wg.Wait()
	finishBench(b, w, failed.Load(), lat, start, cpu0, syncs0)
}

// BenchmarkAppendIdle is one caller alone, appending every 5 ms ("spaced",
// an idle router) or again as soon as its previous entry is durable
// ("back-to-back"). A commit window must not delay either: there is nobody
// to wait for.
func BenchmarkAppendIdle(b *testing.B) {
	for _, pause := range []time.Duration{5 * time.Millisecond, 0} {
		name := "spaced"
		if pause == 0 {
			name = "back-to-back"
		}
		for _, window := range windows {
			b.Run(fmt.Sprintf("%s/window=%v", name, window), func(b *testing.B) {
				w := openBench(b, window)
				lat := make([]time.Duration, 0, b.N)
				b.ReportAllocs()
				start, cpu0, syncs0 := time.Now(), processCPU(), w.Syncs()
				for b.Loop() {
					time.Sleep(pause)
					t0 := time.Now()
					if _, err := w.Append(context.Background(), benchRecord); err != nil {
						b.Fatal(err)
					}
					lat = append(lat, time.Since(t0))
				}
				finishBench(b, w, false, lat, start, cpu0, syncs0)
			})
		}
	}
}

// openBench opens a signed log (checkpoints every 1000 entries) in a fresh
// directory.
func openBench(b *testing.B, window time.Duration) *Writer {
	w, err := Open(Options{Dir: b.TempDir(), Sandbox: "bench", SigningKey: testKey(b, 1), CommitWindow: window})
	if err != nil {
		b.Fatal(err)
	}
	return w
}

// finishBench closes w and reports throughput, latency percentiles, CPU
// per entry and fdatasync calls a second.
func finishBench(b *testing.B, w *Writer, failed bool, lat []time.Duration, start time.Time, cpu0 time.Duration, syncs0 uint64) {
	elapsed, cpu, syncs := time.Since(start), processCPU()-cpu0, w.Syncs()-syncs0
	b.StopTimer()
	if failed {
		b.Fatal("append failed")
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	reportLatency(b, lat, elapsed)
	if cpu > 0 {
		b.ReportMetric(float64(cpu)/float64(len(lat))/1e3, "cpu-µs/entry")
	}
	b.ReportMetric(float64(syncs)/elapsed.Seconds(), "syncs/s")
}

// BenchmarkAppendWriteSyncBaseline is the baseline: the same lines written
// with one f.Write and one fdatasync per entry, from one goroutine (a single
// file cannot usefully take concurrent syncs without batching them).
func BenchmarkAppendWriteSyncBaseline(b *testing.B) {
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "baseline.jsonl"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	s := newSealer()
	e := entryFromRecord(&benchRecord)
	e.Prev = GenesisHash
	var buf []byte
	var lat []time.Duration
	b.ReportAllocs()
	start, cpu0 := time.Now(), processCPU()
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		e.Seq, e.Time = uint64(i+1), time.Now()
		buf = s.seal(buf[:0], &e)
		e.Prev = e.Hash
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := syncData(f); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	elapsed, cpu := time.Since(start), processCPU()-cpu0
	reportLatency(b, lat, elapsed)
	if cpu > 0 {
		b.ReportMetric(float64(cpu)/float64(len(lat))/1e3, "cpu-µs/entry")
	}
}

func reportLatency(b *testing.B, lat []time.Duration, elapsed time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "entries/s")
	b.ReportMetric(float64(lat[len(lat)/2])/1e6, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100])/1e6, "p99-ms")
}

// BenchmarkSeal is the CPU cost of encoding and hashing one entry.
func BenchmarkSeal(b *testing.B) {
	s := newSealer()
	e := entryFromRecord(&benchRecord)
	e.Prev, e.Time = GenesisHash, time.Now()
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = s.seal(buf[:0], &e)
	}
}
