package local

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestMemoryLimitKillsAgent(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name     string
		limit    int64
		wantKill bool
	}{
		{"400MiB under 128MiB is killed", 128 << 20, true},
		{"400MiB under 1GiB completes", 1 << 30, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := baseSpec(t, "mem", "alloc", "ALLOC_MIB=400")
			s.Limits = Limits{MemoryBytes: tc.limit, CPUMillis: 2000, PIDs: 64}
			p := startPod(t, s)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			st, err := p.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// The OOM killer sends SIGKILL; a process faulting at the limit
			// inside the kernel gets SIGSEGV instead.
			killed := st.Agent.Signal == syscall.SIGKILL || st.Agent.Signal == syscall.SIGSEGV
			if killed != tc.wantKill || st.Agent.OOMKilled != tc.wantKill {
				agentLog, _ := p.Logs()
				data, _ := os.ReadFile(agentLog)
				t.Fatalf("agent status %+v, want killed=%v\n%s", st.Agent, tc.wantKill, data)
			}
			if !tc.wantKill && st.Agent.ExitCode != 0 {
				t.Fatalf("agent exit %d", st.Agent.ExitCode)
			}
		})
	}
}

func TestLimitsAreWritten(t *testing.T) {
	requireRoot(t)
	s := baseSpec(t, "lim", "sleep")
	s.Limits = Limits{MemoryBytes: 100 << 20, CPUMillis: 500, PIDs: 42}
	p := startPod(t, s)
	want := map[string]string{"memory.limit_in_bytes": "104857600", "memory.max": "104857600",
		"cpu.cfs_quota_us": "50000", "cpu.max": "50000 100000", "pids.max": "42"}
	found := 0
	for _, h := range p.rec.Cgroups.Hierarchies {
		dir := filepath.Join(h.Mount, p.rec.Cgroups.Rel, "agent")
		for f, v := range want {
			data, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				continue
			}
			found++
			if strings.TrimSpace(string(data)) != v {
				t.Errorf("%s/%s = %q, want %q", dir, f, strings.TrimSpace(string(data)), v)
			}
		}
		// On v1 the agent alone is limited; the pod init sits in "init".
		procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		initProcs, _ := os.ReadFile(filepath.Join(filepath.Dir(dir), "init", "cgroup.procs"))
		if !h.V2 && (len(strings.Fields(string(procs))) != 1 || strings.TrimSpace(string(initProcs)) != strconv.Itoa(p.init.Process.Pid)) {
			t.Errorf("%s holds %q and init holds %q, want the agent and the pod init %d", dir, procs, initProcs, p.init.Process.Pid)
		}
	}
	if found < 3 {
		t.Fatalf("found %d of the memory, cpu and pids limits", found)
	}
}
