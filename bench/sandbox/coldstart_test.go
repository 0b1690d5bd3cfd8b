// Package sandbox benchmarks the local sandbox substrate: the cold start of
// a pod (Start until the agent has been executed with every isolation
// layer in place) against a plain fork/exec of the same binary measured in
// the same run. Results and the command that produced them are in
// RESULTS.md.
package sandbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/sandbox/local"
)

const roleEnv = "KARS_BENCH_ROLE"

func TestMain(m *testing.M) {
	local.InitMain()
	if os.Getenv(roleEnv) == "sleep" {
		time.Sleep(time.Hour)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// binary copies the test binary where UIDs 1000 and 1001 can execute it
// and the agent's fresh /tmp does not hide it.
func binary(b *testing.B) string {
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	dir, err := os.MkdirTemp("/var/tmp", "kars-bench-bin-")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	data, err := os.ReadFile(self)
	if err != nil {
		b.Fatal(err)
	}
	p := filepath.Join(dir, "agent")
	if err := os.WriteFile(p, data, 0o755); err != nil {
		b.Fatal(err)
	}
	return p
}

func percentile(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkColdStart alternates a baseline (exec.Cmd.Start of the agent
// binary: returns once the child has executed it) and a sandbox cold start
// (local.Start: namespaces, veth, NAT and egress tables, cgroups, mounts,
// pivot_root, Landlock, seccomp, UID switch, router start; returns once
// the agent has been executed), and reports p50/p90 of both and their
// ratio. Stop is not timed.
func BenchmarkColdStart(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("the local substrate's root mode needs root")
	}
	bin := binary(b)
	root, err := os.MkdirTemp("", "kars-bench-state-")
	if err == nil {
		err = os.Chmod(root, 0o711)
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(root) })
	ctx := context.Background()
	env := []string{roleEnv + "=sleep"}
	var base, cold, stop []time.Duration
	i := 0
	for b.Loop() {
		i++
		t0 := time.Now()
		cmd := exec.Command(bin)
		cmd.Env = env
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		base = append(base, time.Since(t0))
		cmd.Process.Kill()
		cmd.Wait()

		t0 = time.Now()
		p, err := local.Start(ctx, local.Spec{
			ID: fmt.Sprintf("bench-%d", i), StateRoot: root,
			Router: local.Process{Path: bin, Env: env},
			Agent:  local.Process{Path: bin, Env: env},
			Limits: local.Limits{MemoryBytes: 256 << 20, CPUMillis: 1000, PIDs: 128},
		})
		if err != nil {
			b.Fatal(err)
		}
		cold = append(cold, time.Since(t0))
		t0 = time.Now()
		if err := p.Stop(ctx); err != nil {
			b.Fatal(err)
		}
		stop = append(stop, time.Since(t0))
	}
	b.ReportMetric(ms(percentile(cold, 0.5)), "start-p50-ms")
	b.ReportMetric(ms(percentile(cold, 0.9)), "start-p90-ms")
	b.ReportMetric(ms(percentile(base, 0.5)), "baseline-p50-ms")
	b.ReportMetric(float64(percentile(cold, 0.5))/float64(percentile(base, 0.5)), "start/baseline-p50")
	b.ReportMetric(ms(percentile(stop, 0.5)), "stop-p50-ms")
}
