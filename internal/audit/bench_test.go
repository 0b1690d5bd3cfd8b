package audit

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
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

// appender is one way of making an entry durable, and how many syncs it
// has made.
type appender interface {
	append() error
	syncs() uint64
	close() error
}

// kinds are the two appenders each benchmark compares in the same run:
// the Writer, and the baseline with no group commit — each entry written
// and fdatasynced by its own caller.
var kinds = []struct {
	name string
	open func(b *testing.B) appender
}{
	{"write+fdatasync", openBareSync},
	{"writer", openWriter},
}

// BenchmarkAppend is the append path alone: appenders concurrent callers,
// each appending again as soon as its previous entry is durable, as calls
// in flight in a router each wait for their entry. It reports throughput,
// the p50/p99 time from calling Append to the durable acknowledgement,
// entries per fdatasync and CPU per entry, for the Writer and, as the
// same-run baseline, for the same callers each doing write+fdatasync on the
// same file. With one caller the two should be alike (a lone append is
// synced at once); with more, group commit should put more entries in each
// sync.
func BenchmarkAppend(b *testing.B) {
	for _, n := range []int{1, 16, 256} {
		for _, k := range kinds {
			b.Run(fmt.Sprintf("appenders=%d/%s", n, k.name), func(b *testing.B) { benchClosed(b, k.open(b), n) })
		}
	}
}

func benchClosed(b *testing.B, a appender, callers int) {
	var next atomic.Int64
	lat := make([]time.Duration, b.N)
	var failed atomic.Bool
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0, syncs0 := time.Now(), processCPU(), a.syncs()
	for range callers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				t0 := time.Now()
				if err := a.append(); err != nil {
					failed.Store(true)
					return
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	finishBench(b, a, failed.Load(), lat, start, cpu0, syncs0)
}

// BenchmarkAppendOpenLoop appends at a fixed rate, each entry from its own
// goroutine at its scheduled time, as independent calls reach a router;
// latency is measured from the scheduled time. At low rates almost every
// entry finds the committer idle and is synced alone, as fast as the
// baseline's; as the rate grows entries share syncs.
func BenchmarkAppendOpenLoop(b *testing.B) {
	for _, rate := range []int{100, 500, 1000, 2000, 5000} {
		for _, k := range kinds {
			b.Run(fmt.Sprintf("rate=%d/%s", rate, k.name), func(b *testing.B) { benchOpenLoop(b, k.open(b), rate) })
		}
	}
}

func benchOpenLoop(b *testing.B, a appender, rate int) {
	interval := time.Second / time.Duration(rate)
	lat := make([]time.Duration, b.N)
	var failed atomic.Bool
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0, syncs0 := time.Now(), processCPU(), a.syncs()
	for i := range b.N {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		wg.Go(func() {
			if err := a.append(); err != nil {
				failed.Store(true)
			}
			lat[i] = time.Since(at)
		})
	}
	wg.Wait()
	finishBench(b, a, failed.Load(), lat, start, cpu0, syncs0)
}

// writerAppender is the Writer, signing a checkpoint every 1000 entries.
type writerAppender struct{ w *Writer }

func openWriter(b *testing.B) appender {
	w, err := Open(Options{Dir: b.TempDir(), Sandbox: "bench", SigningKey: testKey(b, 1)})
	if err != nil {
		b.Fatal(err)
	}
	return writerAppender{w}
}

func (a writerAppender) append() error {
	_, err := a.w.Append(context.Background(), benchRecord)
	return err
}
func (a writerAppender) syncs() uint64 { return a.w.Syncs() }
func (a writerAppender) close() error  { return a.w.Close() }

// bareSync is the baseline: each caller encodes and hashes the same entry
// (without the chain, which needs an order), writes it with one write(2)
// to a shared O_APPEND file and fdatasyncs it.
type bareSync struct {
	f *os.File
	n atomic.Uint64
}

func openBareSync(b *testing.B) appender {
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "baseline.jsonl"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		b.Fatal(err)
	}
	return &bareSync{f: f}
}

func (a *bareSync) append() error {
	e := entryFromRecord(&benchRecord)
	e.Seq, e.Time, e.Prev = a.n.Add(1), time.Now(), GenesisHash
	bp := bodies.Get().(*[]byte)
	defer bodies.Put(bp)
	*bp = newSealer().seal((*bp)[:0], &e)
	if _, err := a.f.Write(*bp); err != nil {
		return err
	}
	return syncData(a.f)
}
func (a *bareSync) syncs() uint64 { return a.n.Load() }
func (a *bareSync) close() error  { return a.f.Close() }

// finishBench closes a and reports throughput, latency percentiles,
// entries per fdatasync and CPU per entry.
func finishBench(b *testing.B, a appender, failed bool, lat []time.Duration, start time.Time, cpu0 time.Duration, syncs0 uint64) {
	elapsed, cpu, syncs := time.Since(start), processCPU()-cpu0, a.syncs()-syncs0
	b.StopTimer()
	if failed {
		b.Fatal("append failed")
	}
	if err := a.close(); err != nil {
		b.Fatal(err)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "entries/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	if syncs > 0 {
		b.ReportMetric(float64(len(lat))/float64(syncs), "entries/sync")
	}
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Microseconds())/float64(len(lat)), "cpu-µs/entry")
	}
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
