package local

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kars-io/kars/internal/seccomp"
)

// Descriptors the parent passes to the pod init.
const (
	podCfgFD = 3 // pipe: the podConfig as JSON, written after cgroup placement
	podCtlFD = 4 // control socket
)

// podConfig is what the pod init needs to build the agent's world.
type podConfig struct {
	Rootless  bool     `json:"rootless"`
	Hostname  string   `json:"hostname"`
	RootDir   string   `json:"rootDir"`
	Workspace string   `json:"workspace"`
	Hide      []string `json:"hide"`
	// ImageRoot replaces the host's tree as the agent's root; AgentCode is
	// bound at AgentCodeMount (Spec.AgentRoot, Spec.AgentCode).
	ImageRoot string   `json:"imageRoot,omitempty"`
	AgentCode string   `json:"agentCode,omitempty"`
	Agent     Process  `json:"agent"`
	AgentPort []uint16 `json:"agentPorts"`
	// RouterPorts are bound here and sent to the parent in rootless mode,
	// where the router lives outside the pod's network namespace.
	RouterPorts []uint16 `json:"routerPorts"`
	// CgroupTaskFDs are the agent's v1 cgroup "tasks" files, inherited as
	// descriptors because cgroupfs is not mounted in the agent's root.
	CgroupTaskFDs []int `json:"cgroupTaskFDs"`
	// RequireLandlockNet makes a kernel without Landlock TCP rules fatal
	// (isolation "enhanced").
	RequireLandlockNet bool `json:"requireLandlockNet"`
}

// podInitMain is PID 1 of the pod's PID namespace. It builds the agent's
// filesystem, starts the agent from a confined thread, then stays as a
// minimal init: it forwards termination signals, reaps orphans, reports
// the agent's exit, serves dial requests (rootless), and kills the pod if
// the parent disappears.
func podInitMain() int {
	// Descriptors the embedding binary inherited without close-on-exec
	// (a terminal, a secret handed down by a supervisor) must not reach
	// the agent: mark everything above stdio close-on-exec, ours included.
	if err := unix.CloseRange(podCfgFD, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fmt.Fprintln(os.Stderr, "kars-pod-init: close_range:", err)
		return 125
	}
	// Catch termination signals before anything else: the Go runtime's
	// default handling of SIGTERM re-raises it, which PID 1 of a PID
	// namespace ignores, and the runtime then exits with status 2 instead
	// of letting the agent stop. Signals that arrive during set-up wait in
	// the channel and are forwarded once the agent runs.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGCHLD)
	fail := func(err error) int {
		sendMsg(podCtlFD, ctlMsg{Op: opReady, Err: err.Error()})
		fmt.Fprintln(os.Stderr, "kars-pod-init:", err)
		return 125
	}
	data, err := io.ReadAll(os.NewFile(podCfgFD, "config"))
	if err != nil {
		return fail(err)
	}
	var cfg podConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return fail(fmt.Errorf("config: %w", err))
	}
	var listeners []*os.File
	if cfg.Rootless {
		if listeners, err = rootlessNetwork(cfg.RouterPorts); err != nil {
			return fail(err)
		}
	}
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		return fail(fmt.Errorf("hostname: %w", err))
	}
	if err := buildRoot(rootLayout{dir: cfg.RootDir, workspace: cfg.Workspace, hide: cfg.Hide, image: cfg.ImageRoot, code: cfg.AgentCode}); err != nil {
		return fail(err)
	}
	ready := ctlMsg{Op: opReady, LandlockABI: landlockABI()}
	conf, err := agentConfinement(&cfg, &ready)
	if err != nil {
		return fail(err)
	}
	agentPID, err := startConfined(cfg.Agent, conf)
	if conf.LandlockFD >= 0 {
		unix.Close(conf.LandlockFD)
	}
	if err != nil {
		return fail(fmt.Errorf("start agent %s: %w", cfg.Agent.Path, err))
	}
	if err := sendMsg(podCtlFD, ready, listeners...); err != nil {
		syscall.Kill(agentPID, syscall.SIGKILL)
		return 125
	}
	for _, l := range listeners {
		l.Close()
	}
	if !cfg.Rootless {
		if err := dropInitPrivileges(); err != nil {
			fmt.Fprintln(os.Stderr, "kars-pod-init:", err)
			syscall.Kill(agentPID, syscall.SIGKILL)
			return 125
		}
	}
	return superviseAgent(agentPID, sigs)
}

// rootlessNetwork brings up loopback in the pod's own network namespace
// and binds the router's listeners there: the agent reaches the router
// only through these sockets, which the router accepts on from outside.
func rootlessNetwork(ports []uint16) ([]*os.File, error) {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return nil, fmt.Errorf("loopback: %w", err)
	}
	var out []*os.File
	for _, p := range ports {
		f, err := listenLoopback(p)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

func agentConfinement(cfg *podConfig, ready *ctlMsg) (confinement, error) {
	c := confinement{SetIDs: !cfg.Rootless, UID: AgentUID, GID: AgentUID, Securebits: true, LandlockFD: -1,
		CgroupTaskFDs: cfg.CgroupTaskFDs}
	prog, err := seccomp.Strict().Compile()
	if err != nil {
		return c, err
	}
	c.Seccomp = prog
	if ready.LandlockABI == 0 {
		if cfg.RequireLandlockNet {
			return c, fmt.Errorf("landlock is not available in this kernel; isolation \"enhanced\" requires it")
		}
		return c, nil
	}
	if ready.LandlockABI < 4 && cfg.RequireLandlockNet {
		return c, fmt.Errorf("landlock ABI %d has no TCP rules (need 4); isolation \"enhanced\" requires them", ready.LandlockABI)
	}
	fd, flags, err := agentLandlock(cfg.Rootless).NewRulesetFD(landlockRules(cfg.Hide, cfg.AgentPort, cfg.Rootless)...)
	if err != nil {
		return c, fmt.Errorf("landlock ruleset: %w", err)
	}
	c.LandlockFD, c.LandlockFlags = fd, flags
	ready.LandlockFS = fd >= 0
	ready.LandlockNet = fd >= 0 && ready.LandlockABI >= 4
	return c, nil
}

// startConfined starts p from a fresh OS thread that carries the
// confinement; the child inherits it through fork and keeps it across
// exec. The thread is never unlocked, so the runtime destroys it when the
// goroutine ends instead of reusing a confined thread for the init.
//
// startConfined returns only once that thread is gone: a later all-thread
// credential change (dropInitPrivileges; glibc's setxid broadcast when cgo
// is linked) would otherwise reach a thread whose credentials differ, and
// glibc aborts the process when the threads' results disagree.
func startConfined(p Process, c confinement) (int, error) {
	type result struct {
		pid, tid int
		err      error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		tid := unix.Gettid()
		if err := c.apply(); err != nil {
			ch <- result{tid: tid, err: err}
			return
		}
		cmd := exec.Command(p.Path, p.Args...)
		cmd.Args[0] = p.Path
		cmd.Env = p.Env
		if cmd.Env == nil {
			cmd.Env = []string{}
		}
		cmd.Dir = p.Dir
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			ch <- result{tid: tid, err: err}
			return
		}
		ch <- result{pid: cmd.Process.Pid, tid: tid}
	}()
	r := <-ch
	task := fmt.Sprintf("/proc/self/task/%d", r.tid)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, err := os.Stat(task); err != nil {
			break
		}
		if time.Now().After(deadline) {
			if r.pid > 0 {
				syscall.Kill(r.pid, syscall.SIGKILL)
			}
			return 0, fmt.Errorf("confined thread %d did not exit", r.tid)
		}
	}
	return r.pid, r.err
}

// dropInitPrivileges turns the root pod init into an ordinary process of
// the agent's UID (every thread, via the runtime's all-thread setuid),
// without capabilities and not dumpable, so neither a compromised agent
// nor the init itself holds root inside the pod. The agent cannot signal
// or ptrace it: Landlock scopes its signals and seccomp denies ptrace.
func dropInitPrivileges() error {
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("init setgroups: %w", err)
	}
	if err := syscall.Setresgid(AgentUID, AgentUID, AgentUID); err != nil {
		return fmt.Errorf("init setresgid: %w", err)
	}
	if err := syscall.Setresuid(AgentUID, AgentUID, AgentUID); err != nil {
		return fmt.Errorf("init setresuid: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return err
	}
	return unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0)
}

// superviseAgent runs the init loop until the agent exits.
func superviseAgent(agentPID int, sigs <-chan os.Signal) int {
	parentGone := make(chan struct{})
	go serveControl(parentGone)
	for {
		select {
		case s := <-sigs:
			if s != syscall.SIGCHLD {
				syscall.Kill(agentPID, s.(syscall.Signal))
			}
		case <-parentGone:
			// kars died or closed the pod: nothing may outlive it.
			syscall.Kill(-1, syscall.SIGKILL)
			return 137
		case <-time.After(time.Second):
			// SIGCHLD can coalesce; poll as a backstop.
		}
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
			if pid == agentPID {
				err := sendMsg(podCtlFD, ctlMsg{Op: opExit, Status: int(ws)})
				// Orphans of the agent die with the pod, as in a container.
				syscall.Kill(-1, syscall.SIGKILL)
				if err != nil {
					// The parent reads the init's own status instead: it
					// must not look like a clean exit of the agent.
					fmt.Fprintln(os.Stderr, "kars-pod-init: report the agent's exit:", err)
					return 125
				}
				return 0
			}
		}
	}
}

// serveControl answers dial requests from the parent (the rootless path
// to ports inside the pod) and closes parentGone when the parent's end of
// the control socket closes.
func serveControl(parentGone chan<- struct{}) {
	defer close(parentGone)
	for {
		m, files, err := recvMsg(podCtlFD)
		for _, f := range files {
			f.Close()
		}
		if err != nil {
			return
		}
		if m.Op != opDial {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := (&net.Dialer{}).DialContext(ctx, m.Network, m.Addr)
		cancel()
		if err != nil {
			sendMsg(podCtlFD, ctlMsg{Op: opDialed, Err: err.Error()})
			continue
		}
		f, err := conn.(interface{ File() (*os.File, error) }).File()
		conn.Close()
		if err != nil {
			sendMsg(podCtlFD, ctlMsg{Op: opDialed, Err: err.Error()})
			continue
		}
		sendMsg(podCtlFD, ctlMsg{Op: opDialed}, f)
		f.Close()
	}
}
