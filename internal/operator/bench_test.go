package operator

import (
	"context"
	"fmt"
	"io"
	"slices"
	"syscall"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// BenchmarkUpdateToFrame is the operator's cost from one watch event to the
// redrawn frame (Update, then View) with 10 sandboxes (the baseline) and
// 1,000. The goal is a p99 under 250 ms at 1,000; p99-ms is reported.
func BenchmarkUpdateToFrame(b *testing.B) {
	for _, n := range []int{10, 1000} {
		for _, kind := range []string{"status", "add-delete"} {
			b.Run(fmt.Sprintf("sandboxes=%d/%s", n, kind), func(b *testing.B) {
				m := New(Options{Renderer: plain(), Actions: &recorder{}})
				m.Update(tea.WindowSizeMsg{Width: 160, Height: 50})
				for i := range n {
					ns := fmt.Sprintf("team-%03d", i%50)
					m.Update(ObjectMsg{Obj: sandbox(ns, fmt.Sprintf("agent-%04d", i), karsv1.SandboxRunning)})
					m.Update(ObjectMsg{Obj: inference(ns, fmt.Sprintf("agent-%04d-inference", i), "gpt-4.1", 100_000)})
				}
				m.Update(SyncedMsg{})
				// Select one in the middle: the list window scrolls to it.
				for range n / 2 {
					m.Update(key("down"))
				}
				changing := sandbox("team-007", "agent-0007", karsv1.SandboxRunning)
				extra := sandbox("team-000", "agent-extra", karsv1.SandboxPending)
				times := make([]time.Duration, 0, b.N)
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; b.Loop(); i++ {
					start := time.Now()
					switch kind {
					case "status":
						c := changing.DeepCopy()
						c.Status.Phase = []karsv1.SandboxPhase{karsv1.SandboxRunning, karsv1.SandboxDegraded}[i%2]
						m.Update(ObjectMsg{Obj: c})
					case "add-delete":
						m.Update(ObjectMsg{Obj: extra, Deleted: i%2 == 1})
					}
					_ = m.View()
					times = append(times, time.Since(start))
				}
				b.StopTimer()
				slices.Sort(times)
				b.ReportMetric(float64(times[len(times)*99/100].Microseconds())/1000, "p99-ms")
			})
		}
	}
}

// BenchmarkIdleCPU is the process CPU time a running operator program uses
// per second when nothing changes, against the same second with no program
// (the baseline). The operator starts no timer of its own; what remains is
// bubbletea's renderer loop.
func BenchmarkIdleCPU(b *testing.B) {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	idle := func(b *testing.B, run bool) {
		var total time.Duration
		for b.Loop() {
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			if run {
				in, _ := io.Pipe()
				m := fixture(&testing.T{}, 120, 40, &recorder{})
				p := tea.NewProgram(m, tea.WithContext(ctx), tea.WithInput(in), tea.WithOutput(io.Discard), tea.WithFPS(FPS))
				go func() { p.Run(); close(done) }()
			} else {
				close(done)
			}
			time.Sleep(200 * time.Millisecond) // let it start and draw
			before := cpu()
			time.Sleep(time.Second)
			total += cpu() - before
			cancel()
			<-done
		}
		b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "cpu-ms/s")
	}
	b.Run("baseline-no-program", func(b *testing.B) { idle(b, false) })
	b.Run("operator-idle", func(b *testing.B) { idle(b, true) })
}
