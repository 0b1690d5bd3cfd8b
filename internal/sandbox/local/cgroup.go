package local

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// hierarchy is one mounted cgroup hierarchy that hosts at least one of the
// controllers kars limits. A host may mix versions: this project's CI has
// memory, cpu and pids on v1 and only hugetlb on v2.
type hierarchy struct {
	Mount       string   `json:"mount"`
	V2          bool     `json:"v2"`
	Controllers []string `json:"controllers"`
}

var wantedControllers = []string{"memory", "cpu", "pids"}

// findHierarchies reads /proc/self/mountinfo and returns, for each wanted
// controller, the hierarchy that hosts it (v1 wins when a controller is
// bound to a v1 hierarchy, since it is then unusable on v2).
func findHierarchies() ([]hierarchy, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []hierarchy
	var v2 *hierarchy
	have := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		mount := UnescapeMountPath(pf[4])
		switch qf[0] {
		case "cgroup":
			var ctrls []string
			for _, o := range strings.Split(qf[2], ",") {
				if slices.Contains(wantedControllers, o) && !have[o] {
					ctrls = append(ctrls, o)
				}
			}
			if len(ctrls) > 0 {
				for _, c := range ctrls {
					have[c] = true
				}
				out = append(out, hierarchy{Mount: mount, Controllers: ctrls})
			}
		case "cgroup2":
			if v2 == nil {
				v2 = &hierarchy{Mount: mount, V2: true}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if v2 != nil {
		data, _ := os.ReadFile(filepath.Join(v2.Mount, "cgroup.controllers"))
		for _, c := range strings.Fields(string(data)) {
			if slices.Contains(wantedControllers, c) && !have[c] {
				have[c] = true
				v2.Controllers = append(v2.Controllers, c)
			}
		}
		if len(v2.Controllers) > 0 {
			out = append(out, *v2)
		}
	}
	return out, nil
}

// cgroupRoles are the children of a pod's cgroup. "init" holds the pod
// init on v1 hierarchies, outside the agent's limits: under memory
// pressure the kernel may fault the init too, and it must survive to
// report the agent's end. On v2 a process's threads cannot be split
// across cgroups, so there the init shares the agent's cgroup.
var cgroupRoles = []string{"agent", "router", "init"}

// cgroups is the set of cgroup directories of one pod: <mount>/kars/<id>
// with one child per role in every hierarchy used.
type cgroups struct {
	Hierarchies []hierarchy `json:"hierarchies"`
	Rel         string      `json:"rel"` // kars/<id>
}

func (c *cgroups) dirsIn(h hierarchy) []string {
	var out []string
	for _, role := range cgroupRoles {
		out = append(out, filepath.Join(h.Mount, c.Rel, role))
	}
	return out
}

// joinInit places the pod init: in "init" on v1 hierarchies (the agent
// thread moves itself into "agent" before it forks, see agentTaskFiles),
// in "agent" on v2.
func (c *cgroups) joinInit(pid int) error {
	for _, h := range c.Hierarchies {
		role := "init"
		if h.V2 {
			role = "agent"
		}
		f := filepath.Join(h.Mount, c.Rel, role, "cgroup.procs")
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("cgroups: join %s: %w", f, err)
		}
	}
	return nil
}

// agentTaskFiles opens the v1 "tasks" files of the agent's cgroups. The
// pod init's agent thread writes "0" to them, moving only itself, right
// before it forks the agent, which inherits the placement: the agent never
// runs outside its limits, and the init never runs inside them.
func (c *cgroups) agentTaskFiles() ([]*os.File, error) {
	var out []*os.File
	for _, h := range c.Hierarchies {
		if h.V2 {
			continue
		}
		f, err := os.OpenFile(filepath.Join(h.Mount, c.Rel, "agent", "tasks"), os.O_WRONLY, 0)
		if err != nil {
			for _, o := range out {
				o.Close()
			}
			return nil, fmt.Errorf("cgroups: %w", err)
		}
		out = append(out, f)
	}
	return out, nil
}

func (c *cgroups) dirs(role string) []string {
	var out []string
	for _, h := range c.Hierarchies {
		out = append(out, filepath.Join(h.Mount, c.Rel, role))
	}
	return out
}

// newCgroups creates the pod's cgroups and applies the agent's limits.
func newCgroups(id string, l Limits) (*cgroups, error) {
	hs, err := findHierarchies()
	if err != nil {
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	have := map[string]bool{}
	for _, h := range hs {
		for _, c := range h.Controllers {
			have[c] = true
		}
	}
	for _, c := range wantedControllers {
		if !have[c] {
			return nil, fmt.Errorf("cgroups: controller %q is not mounted (v1 or v2)", c)
		}
	}
	cg := &cgroups{Hierarchies: hs, Rel: filepath.Join("kars", id)}
	for _, h := range hs {
		if h.V2 {
			// Controllers must be enabled top-down before leaves can use them.
			enable := "+" + strings.Join(h.Controllers, " +")
			for _, d := range []string{h.Mount, filepath.Join(h.Mount, "kars"), filepath.Join(h.Mount, cg.Rel)} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					return cg, fmt.Errorf("cgroups: %w", err)
				}
				if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte(enable), 0); err != nil {
					return cg, fmt.Errorf("cgroups: enable %s in %s: %w", enable, d, err)
				}
			}
		}
		for _, role := range cgroupRoles {
			if err := mkdirCgroup(filepath.Join(h.Mount, cg.Rel, role)); err != nil {
				return cg, fmt.Errorf("cgroups: %w", err)
			}
		}
		if err := applyLimits(h, filepath.Join(h.Mount, cg.Rel, "agent"), l); err != nil {
			return cg, err
		}
	}
	return cg, nil
}

// mkdirCgroup creates dir and its parents. Another pod's teardown may
// remove the shared "kars" parent between MkdirAll's steps; that shows as
// ENOENT and is retried.
func mkdirCgroup(dir string) error {
	var err error
	for range 5 {
		if err = os.MkdirAll(dir, 0o755); !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return err
}

func applyLimits(h hierarchy, dir string, l Limits) error {
	type setting struct{ file, value string }
	var set []setting
	for _, c := range h.Controllers {
		switch {
		case c == "memory" && l.MemoryBytes > 0 && h.V2:
			set = append(set, setting{"memory.max", strconv.FormatInt(l.MemoryBytes, 10)}, setting{"memory.swap.max", "0"})
		case c == "memory" && l.MemoryBytes > 0:
			v := strconv.FormatInt(l.MemoryBytes, 10)
			set = append(set, setting{"memory.limit_in_bytes", v}, setting{"memory.memsw.limit_in_bytes", v})
		case c == "cpu" && l.CPUMillis > 0 && h.V2:
			set = append(set, setting{"cpu.max", fmt.Sprintf("%d 100000", l.CPUMillis*100)})
		case c == "cpu" && l.CPUMillis > 0:
			set = append(set, setting{"cpu.cfs_period_us", "100000"}, setting{"cpu.cfs_quota_us", strconv.FormatInt(l.CPUMillis*100, 10)})
		case c == "pids" && l.PIDs > 0:
			set = append(set, setting{"pids.max", strconv.FormatInt(l.PIDs, 10)})
		}
	}
	for _, s := range set {
		err := os.WriteFile(filepath.Join(dir, s.file), []byte(s.value), 0)
		// Swap limits exist only with swap accounting; without it there
		// is no swap to escape into either.
		if err != nil && !(errors.Is(err, fs.ErrNotExist) && strings.Contains(s.file, "sw")) {
			return fmt.Errorf("cgroups: set %s=%s in %s: %w", s.file, s.value, dir, err)
		}
	}
	return nil
}

// join moves pid into the role's cgroup in every hierarchy.
func (c *cgroups) join(role string, pid int) error {
	for _, d := range c.dirs(role) {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("cgroups: join %s: %w", d, err)
		}
	}
	return nil
}

// procs lists the processes left in the pod's cgroups.
func (c *cgroups) procs() []int {
	var out []int
	for _, role := range cgroupRoles {
		for _, d := range c.dirs(role) {
			data, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(out, pid) {
					out = append(out, pid)
				}
			}
		}
	}
	return out
}

// remove kills whatever is still in the pod's cgroups and deletes them.
func (c *cgroups) remove(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids := c.procs()
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroups: processes %v survive SIGKILL", pids)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var errs []error
	for _, h := range c.Hierarchies {
		for _, d := range append(c.dirsIn(h), filepath.Join(h.Mount, c.Rel)) {
			if err := rmdirRetry(d, deadline); err != nil {
				errs = append(errs, err)
			}
		}
		// The shared "kars" parent goes with its last pod; while other
		// pods use it the kernel refuses (EBUSY), which is fine.
		syscall.Rmdir(filepath.Join(h.Mount, filepath.Dir(c.Rel)))
	}
	return errors.Join(errs...)
}

// rmdirRetry removes a cgroup directory; the kernel reports EBUSY for a
// short while after the last task exited.
func rmdirRetry(d string, deadline time.Time) error {
	for {
		err := syscall.Rmdir(d)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("cgroups: remove %s: %w", d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// memoryKilled reports whether the agent's end is the memory limit's
// doing: the OOM killer fired in its memory cgroup, or the cgroup hit its
// limit (under memcg pressure the kernel may fail to write a signal frame
// and kill with SIGSEGV instead of choosing an OOM victim).
func (c *cgroups) memoryKilled(signaled bool) bool {
	for _, h := range c.Hierarchies {
		if !slices.Contains(h.Controllers, "memory") {
			continue
		}
		dir := filepath.Join(h.Mount, c.Rel, "agent")
		if h.V2 {
			ev := readKeyed(filepath.Join(dir, "memory.events"))
			return ev["oom_kill"] > 0 || signaled && ev["max"] > 0
		}
		oc := readKeyed(filepath.Join(dir, "memory.oom_control"))
		fail, _ := os.ReadFile(filepath.Join(dir, "memory.failcnt"))
		n, _ := strconv.Atoi(strings.TrimSpace(string(fail)))
		return oc["oom_kill"] > 0 || signaled && n > 0
	}
	return false
}

// readKeyed parses a cgroup "key value" file.
func readKeyed(path string) map[string]int {
	out := map[string]int{}
	data, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			out[k] = n
		}
	}
	return out
}
