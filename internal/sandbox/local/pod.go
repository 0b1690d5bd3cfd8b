package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Pod is a running local sandbox. Its methods are safe for concurrent use.
type Pod struct {
	// ID is the pod's Spec.ID.
	ID string
	// Dir is the pod's state directory (<StateRoot>/<ID>).
	Dir string
	// Guarantees lists the isolation layers actually in force.
	Guarantees Guarantees

	spec   Spec
	rec    *record
	netns  *os.File      // root mode only
	ctl    *net.UnixConn // the parent's end of the control socket
	init   *exec.Cmd
	router *exec.Cmd
	// sidecars are further programs in the pod's network namespace.
	sidecars []*Sidecar

	mu            sync.Mutex
	status        Status
	agentReported bool // the pod init reported the agent's wait status
	agentDone     chan struct{}
	routerDone    chan struct{}
	readyc        chan readyResult
	dialMu        sync.Mutex // one rootless dial in flight at a time
	dialc         chan dialResult
	stopOnce      sync.Once
	stopErr       error
}

type readyResult struct {
	msg   ctlMsg
	files []*os.File
	err   error
}

type dialResult struct {
	file *os.File
	err  error
}

// Status is the observed state of a pod's two processes.
type Status struct {
	Agent, Router ProcessStatus
}

// ProcessStatus describes one process of the pod.
type ProcessStatus struct {
	Running    bool
	StartedAt  time.Time
	FinishedAt time.Time
	// ExitCode is the exit status when the process exited normally, -1
	// when a signal ended it.
	ExitCode int
	// Signal ended the process (0 if it exited normally).
	Signal syscall.Signal
	// OOMKilled: the agent ended at its memory limit — the OOM killer
	// fired in its memory cgroup, or a signal killed it while the cgroup
	// was at its limit (agent only).
	OOMKilled bool
}

// Logs returns the paths of the agent's and the router's combined
// stdout/stderr logs. They are removed by Stop with the rest of Dir.
func (p *Pod) Logs() (agent, router string) {
	return filepath.Join(p.Dir, "logs", "agent.log"), filepath.Join(p.Dir, "logs", "router.log")
}

// Start realises s as a local pod and returns once the agent has been
// executed with every isolation layer in place. On error nothing of the
// pod is left behind. The calling binary must honour the InitMain
// contract.
func Start(ctx context.Context, s Spec) (_ *Pod, err error) {
	if s, err = s.normalize(); err != nil {
		return nil, err
	}
	// The state root is hidden from the agent by path (mount and Landlock),
	// so it must be the real path, not one through a symlink.
	if err := os.MkdirAll(s.StateRoot, 0o711); err != nil {
		return nil, fmt.Errorf("local: pod %s: state root: %w", s.ID, err)
	}
	real, err := filepath.EvalSymlinks(s.StateRoot)
	if err != nil {
		return nil, fmt.Errorf("local: pod %s: state root: %w", s.ID, err)
	}
	if s.Workspace == filepath.Join(s.StateRoot, s.ID, "workspace") {
		s.Workspace = filepath.Join(real, s.ID, "workspace")
	}
	s.StateRoot = real
	rootless := os.Geteuid() != 0
	if rootless && s.Isolation == Enhanced {
		return nil, fmt.Errorf("local: pod %s: isolation \"enhanced\" needs root (network namespace with egress guard, separate UIDs, cgroups); run kars as root or use \"standard\"", s.ID)
	}
	p := &Pod{ID: s.ID, Dir: filepath.Join(s.StateRoot, s.ID), spec: s,
		agentDone: make(chan struct{}), routerDone: make(chan struct{}),
		readyc: make(chan readyResult, 1), dialc: make(chan dialResult, 1)}
	if err := p.prepare(rootless); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			p.teardown()
		}
	}()
	if err := p.startAll(ctx); err != nil {
		return nil, fmt.Errorf("local: pod %s: %w", s.ID, err)
	}
	return p, nil
}

// prepare claims the state directory under the state root's lock.
func (p *Pod) prepare(rootless bool) error {
	s := p.spec
	unlock, err := lockRoot(s.StateRoot)
	if err != nil {
		return fmt.Errorf("local: pod %s: state root: %w", s.ID, err)
	}
	defer unlock()
	if old, err := loadRecord(p.Dir); err == nil {
		if old.Owner.alive() {
			return fmt.Errorf("local: pod %s already runs (owner pid %d); stop it first", s.ID, old.Owner.PID)
		}
		if err := old.undo(p.Dir); err != nil {
			return fmt.Errorf("local: pod %s: clean up previous run: %w", s.ID, err)
		}
	}
	if err := os.Mkdir(p.Dir, 0o711); err != nil {
		return fmt.Errorf("local: pod %s: %w", s.ID, err)
	}
	p.rec = &record{ID: s.ID, Owner: refOf(os.Getpid()), Rootless: rootless, Workspace: s.Workspace, Created: time.Now()}
	if err := p.rec.save(p.Dir); err != nil {
		os.RemoveAll(p.Dir)
		return fmt.Errorf("local: pod %s: %w", s.ID, err)
	}
	return nil
}

func (p *Pod) save() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rec.save(p.Dir)
}

// Done is closed when the agent has exited.
func (p *Pod) Done() <-chan struct{} { return p.agentDone }

// Wait blocks until the agent exits or ctx ends, and returns the status.
func (p *Pod) Wait(ctx context.Context) (Status, error) {
	select {
	case <-p.agentDone:
		return p.Status(), nil
	case <-ctx.Done():
		return p.Status(), ctx.Err()
	}
}

// Status returns the current state of the agent and the router.
func (p *Pod) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

// Stop ends the pod: SIGTERM to the agent (through the pod init) and the
// router, SIGKILL when ctx ends (or after 10 s without a deadline), then
// removes every namespace, link, rule, cgroup and the state directory.
// Stop is idempotent.
func (p *Pod) Stop(ctx context.Context) error {
	p.stopOnce.Do(func() {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
		}
		if p.init != nil && p.init.Process != nil {
			p.init.Process.Signal(syscall.SIGTERM)
		}
		if p.router != nil && p.router.Process != nil {
			p.router.Process.Signal(syscall.SIGTERM)
		}
		for _, done := range []chan struct{}{p.agentDone, p.routerDone} {
			select {
			case <-done:
			case <-ctx.Done():
			}
		}
		p.stopErr = p.teardown()
	})
	return p.stopErr
}

// teardown kills what is left and undoes the record.
func (p *Pod) teardown() error {
	p.killSidecars()
	for _, c := range []*exec.Cmd{p.init, p.router} {
		if c != nil && c.Process != nil {
			c.Process.Kill()
		}
	}
	if p.ctl != nil {
		p.ctl.Close()
	}
	for _, w := range []struct {
		cmd  *exec.Cmd
		done chan struct{}
	}{{p.init, p.agentDone}, {p.router, p.routerDone}} {
		if w.cmd == nil {
			continue
		}
		select {
		case <-w.done:
		case <-time.After(5 * time.Second):
		}
	}
	if p.netns != nil {
		p.netns.Close()
	}
	p.mu.Lock()
	rec := p.rec
	p.mu.Unlock()
	if err := rec.undo(p.Dir); err != nil {
		return fmt.Errorf("local: pod %s: teardown: %w", p.ID, err)
	}
	return nil
}

// DialContext connects to addr inside the pod's network namespace, e.g.
// "127.0.0.1:18789" for the agent's chat endpoint or the router's admin
// port. In root mode the socket is created by a thread that has joined the
// pod's namespace (and returned afterwards); in rootless mode the pod init
// dials and passes the connection back.
func (p *Pod) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if p.netns != nil {
		var conn net.Conn
		err := inNetns(p.netns, func() error {
			var err error
			conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	select {
	case <-p.agentDone:
		return nil, fmt.Errorf("local: pod %s: dial %s: pod has exited", p.ID, addr)
	default:
	}
	data, _, err := encodeMsg(ctlMsg{Op: opDial, Network: network, Addr: addr})
	if err == nil {
		_, _, err = p.ctl.WriteMsgUnix(data, nil, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("local: pod %s: dial %s: %w", p.ID, addr, err)
	}
	select {
	case r := <-p.dialc:
		if r.err != nil {
			return nil, fmt.Errorf("local: pod %s: dial %s: %w", p.ID, addr, r.err)
		}
		defer r.file.Close()
		return net.FileConn(r.file)
	case <-p.agentDone:
		return nil, fmt.Errorf("local: pod %s: dial %s: pod has exited", p.ID, addr)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// readControl dispatches the pod init's messages until its socket closes.
func (p *Pod) readControl() {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(16*4))
	for {
		n, oobn, _, _, err := p.ctl.ReadMsgUnix(buf, oob)
		var m ctlMsg
		var files []*os.File
		if err == nil {
			m, files, err = parseMsg(buf[:n], oob[:oobn])
		}
		if err != nil {
			select {
			case p.readyc <- readyResult{err: fmt.Errorf("pod init exited before the agent started (see %s)", filepath.Join(p.Dir, "logs", "agent.log"))}:
			default:
			}
			return
		}
		switch m.Op {
		case opReady:
			p.readyc <- readyResult{msg: m, files: files}
		case opExit:
			ws := syscall.WaitStatus(m.Status)
			p.mu.Lock()
			p.agentReported = true
			p.status.Agent.ExitCode = ws.ExitStatus()
			if ws.Signaled() {
				p.status.Agent.Signal = ws.Signal()
			}
			p.mu.Unlock()
		case opDialed:
			var f *os.File
			if len(files) > 0 {
				f = files[0]
			} else if m.Err == "" {
				m.Err = "no connection passed"
			}
			var err error
			if m.Err != "" {
				err = errors.New(m.Err)
			}
			select {
			case p.dialc <- dialResult{file: f, err: err}:
			default:
				if f != nil {
					f.Close()
				}
			}
		}
	}
}

func marshal(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
