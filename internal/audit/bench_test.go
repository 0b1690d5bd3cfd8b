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

// BenchmarkAppendGroupCommit measures durable appends from many concurrent
// callers, as a busy router has requests in flight: throughput in
// entries/s and the p50/p99 latency from calling Append to the durable
// acknowledgement. The sub-benchmarks vary how many appends are in flight;
// by Little's law throughput is in-flight divided by latency, so more
// callers buy throughput with latency.
func BenchmarkAppendGroupCommit(b *testing.B) {
	for _, inflight := range []int{64, 256, 512} {
		b.Run(fmt.Sprintf("inflight=%d", inflight), func(b *testing.B) { benchGroupCommit(b, inflight) })
	}
}

func benchGroupCommit(b *testing.B, inflight int) {
	dir := b.TempDir()
	w, err := Open(Options{Dir: dir, Sandbox: "bench", SigningKey: testKey(b, 1)})
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	var lat []time.Duration
	var failed atomic.Bool
	b.SetParallelism(max(1, inflight/runtime.GOMAXPROCS(0)))
	b.ReportAllocs()
	start, cpu0 := time.Now(), processCPU()
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
	elapsed, cpu := time.Since(start), processCPU()-cpu0
	b.StopTimer()
	if failed.Load() {
		b.Fatal("append failed")
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	reportLatency(b, lat, elapsed)
	if cpu > 0 {
		b.ReportMetric(float64(cpu)/float64(len(lat))/1e3, "cpu-µs/entry")
	}
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
