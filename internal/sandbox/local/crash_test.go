package local

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// crashingParent starts a pod and then waits to be SIGKILLed, as kars
// would be by an OOM kill or a power user's kill -9.
func crashingParent() {
	s := Spec{
		ID: os.Getenv("CRASH_ID"), StateRoot: os.Getenv("CRASH_STATE_ROOT"),
		Router: Process{Path: os.Getenv("CRASH_BIN"), Env: []string{roleEnv + "=router"}},
		Agent:  Process{Path: os.Getenv("CRASH_BIN"), Env: []string{roleEnv + "=sleep"}},
		Limits: Limits{MemoryBytes: 64 << 20},
	}
	p, err := Start(context.Background(), s)
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	fmt.Println("STARTED", p.Dir)
	select {}
}

// leftovers lists what of the pod recorded in rec still exists.
func leftovers(rec *record, dir string) []string {
	var out []string
	for _, p := range rec.Procs {
		if p.alive() {
			out = append(out, fmt.Sprintf("process %d", p.PID))
		}
	}
	if rec.Link != nil {
		// By index: once the pod's link is gone, its name may already
		// belong to a pod of another kars process on this host.
		if l, err := netlink.LinkByIndex(rec.Link.HostIfIndex); err == nil && l.Attrs().Name == rec.Link.HostIf {
			out = append(out, fmt.Sprintf("link %s (index %d)", rec.Link.HostIf, rec.Link.HostIfIndex))
		}
		c, _ := nftables.New()
		tables, _ := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
		for _, t := range tables {
			if t.Name == rec.Link.Table {
				out = append(out, "nft table ip "+t.Name)
			}
		}
	}
	if rec.Cgroups != nil {
		for _, h := range rec.Cgroups.Hierarchies {
			if _, err := os.Stat(filepath.Join(h.Mount, rec.Cgroups.Rel)); err == nil {
				out = append(out, "cgroup "+filepath.Join(h.Mount, rec.Cgroups.Rel))
			}
		}
	}
	if rec.NetnsInode != 0 && netnsInUse(rec.NetnsInode, rec.NetnsCookie) {
		out = append(out, fmt.Sprintf("network namespace net:[%d]", rec.NetnsInode))
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), dir) {
		out = append(out, "mount under "+dir)
	}
	if _, err := os.Stat(dir); err == nil {
		out = append(out, "state dir "+dir)
	}
	return out
}

// netnsInUse reports whether any process still holds the namespace, as
// its namespace or through an open descriptor. A namespace with the same
// inode is confirmed by its cookie: once the pod's namespace is gone, the
// kernel gives its inode number to the next namespace created on the host.
func netnsInUse(ino, cookie uint64) bool {
	want := fmt.Sprintf("net:[%d]", ino)
	holds := func(path string) bool {
		if l, err := os.Readlink(path); err != nil || l != want {
			return false
		}
		f, err := os.Open(path)
		if err != nil {
			return false
		}
		defer f.Close()
		var got uint64
		err = inNetns(f, func() (err error) {
			got, err = netnsCookie()
			return err
		})
		return err == nil && got == cookie
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if holds(filepath.Join("/proc", p.Name(), "ns", "net")) {
			return true
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, fd := range fds {
			if holds(filepath.Join("/proc", p.Name(), "fd", fd.Name())) {
				return true
			}
		}
	}
	return false
}

func TestStopLeavesNothing(t *testing.T) {
	requireRoot(t)
	s := baseSpec(t, "stop", "sleep")
	p := startPod(t, s)
	p.mu.Lock()
	rec := *p.rec
	p.mu.Unlock()
	if rec.NetnsInode == 0 || rec.NetnsCookie == 0 || rec.Link == nil || rec.Link.HostIfIndex == 0 || rec.Cgroups == nil || len(rec.Procs) != 2 {
		t.Fatalf("record is incomplete: %+v", rec)
	}
	// While running, the resources exist: the check below can fail.
	if got := leftovers(&rec, p.Dir); len(got) < 6 {
		t.Fatalf("running pod shows only %v", got)
	}
	start := time.Now()
	if err := p.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := leftovers(&rec, p.Dir); len(got) != 0 {
		t.Fatalf("after Stop: %v", got)
	}
	st := p.Status()
	if st.Agent.Running || st.Router.Running || st.Agent.Signal != syscall.SIGTERM {
		t.Errorf("status after Stop: %+v", st)
	}
	t.Logf("Stop took %v", time.Since(start))
}

func TestParentCrashThenCleanupStale(t *testing.T) {
	requireRoot(t)
	root, id := newStateRoot(t), podID("crash")
	cmd := exec.Command(testBinary(t))
	cmd.Env = []string{roleEnv + "=parent", "CRASH_ID=" + id, "CRASH_STATE_ROOT=" + root, "CRASH_BIN=" + testBinary(t)}
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if !strings.HasPrefix(line, "STARTED") {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("parent: %q", line)
	}
	dir := filepath.Join(root, id)
	rec, err := loadRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	// The pod's processes follow their parent (parent-death signal and
	// the pod init's control socket closing).
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range rec.Procs {
		for p.alive() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if p.alive() {
			t.Errorf("process %d survived its parent", p.PID)
		}
	}
	// Host-side state survives a crash: that is what CleanupStale is for.
	left := leftovers(rec, dir)
	if !slices.ContainsFunc(left, func(s string) bool { return strings.HasPrefix(s, "nft table") }) ||
		!slices.ContainsFunc(left, func(s string) bool { return strings.HasPrefix(s, "cgroup") }) {
		t.Fatalf("expected the host table and cgroups to outlive the crash, found %v", left)
	}
	cleaned, err := CleanupStale(root)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cleaned, []string{id}) {
		t.Fatalf("CleanupStale cleaned %v, want [%s]", cleaned, id)
	}
	if got := leftovers(rec, dir); len(got) != 0 {
		t.Fatalf("after CleanupStale: %v", got)
	}
}

func TestCleanupStaleSparesLivePods(t *testing.T) {
	requireRoot(t)
	s := baseSpec(t, "live", "sleep")
	p := startPod(t, s)
	cleaned, err := CleanupStale(s.StateRoot)
	if err != nil || len(cleaned) != 0 {
		t.Fatalf("CleanupStale = %v, %v; want nothing cleaned", cleaned, err)
	}
	if !p.Status().Agent.Running {
		t.Fatal("the live pod was disturbed")
	}
	// A second Start of the same ID while it runs is refused.
	if _, err := Start(context.Background(), s); err == nil || !strings.Contains(err.Error(), "already runs") {
		t.Fatalf("second Start: %v", err)
	}
	data, _ := json.Marshal(p.Guarantees)
	t.Logf("guarantees: %s", data)
}

// TestConcurrentPodsGetDistinctLinks starts pods of different state roots
// at once: the host-wide link lock must hand each its own /30.
func TestConcurrentPodsGetDistinctLinks(t *testing.T) {
	requireRoot(t)
	const n = 4
	pods := make([]*Pod, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		s := baseSpec(t, "conc", "sleep")
		wg.Add(1)
		go func() {
			defer wg.Done()
			pods[i], errs[i] = Start(context.Background(), s)
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, p := range pods {
		if errs[i] != nil {
			t.Errorf("pod %d: %v", i, errs[i])
			continue
		}
		defer p.Stop(context.Background())
		l := p.rec.Link
		for _, k := range []string{l.HostIf, l.HostAddr.String(), l.PodAddr.String()} {
			if seen[k] {
				t.Errorf("pod %d reuses %s", i, k)
			}
			seen[k] = true
		}
	}
}
