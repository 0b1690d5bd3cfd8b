package local

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// startAll creates the pod's directories, cgroups and network, then the
// pod init (which starts the agent) and the router.
func (p *Pod) startAll(ctx context.Context) error {
	s, rootless := p.spec, p.rec.Rootless
	g := Guarantees{Rootless: rootless, NetworkNamespace: true, Seccomp: true, ReadOnlyRoot: true,
		PIDNamespace: true, NoNewPrivsNoCaps: true}
	if !rootless {
		if err := checkTraversable(s.StateRoot); err != nil {
			return err
		}
	}
	logDir, routerDir, rootDir := filepath.Join(p.Dir, "logs"), filepath.Join(p.Dir, "router"), filepath.Join(p.Dir, "rootfs")
	for _, d := range []string{logDir, routerDir, rootDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	if err := os.Chmod(rootDir, 0o755); err != nil {
		return err
	}
	routerOwner, agentOwner := -1, -1
	if !rootless {
		routerOwner, agentOwner = RouterUID, AgentUID
	}
	if err := chownIf(routerDir, routerOwner); err != nil {
		return err
	}
	if s.Workspace == filepath.Join(p.Dir, "workspace") {
		if err := os.Mkdir(s.Workspace, 0o700); err != nil {
			return err
		}
		if err := chownIf(s.Workspace, agentOwner); err != nil {
			return err
		}
	} else if fi, err := os.Stat(s.Workspace); err != nil || !fi.IsDir() {
		return fmt.Errorf("workspace %s must be an existing directory", s.Workspace)
	}
	if s.RouterState != "" {
		if err := linkRouterState(routerDir, s.RouterStateLink, s.RouterState, routerOwner); err != nil {
			return err
		}
	}
	switch {
	case s.WorkspaceQuota <= 0:
		g.Notes = append(g.Notes, "no workspace quota requested: the agent can fill the disk its workspace is on")
	default:
		err := mountWorkspace(s.Workspace, s.WorkspaceQuota, agentOwner)
		if err == nil {
			p.mu.Lock()
			p.rec.WorkspaceMount = s.Workspace
			p.mu.Unlock()
			err = p.save()
		}
		switch {
		case err == nil:
			g.WorkspaceQuota = true
		case s.Isolation == Enhanced:
			return err
		default:
			g.Notes = append(g.Notes, "workspace quota unavailable, the agent can fill the disk its workspace is on: "+err.Error())
		}
	}
	if err := placeFiles(routerDir, s.Router.Files, routerOwner); err != nil {
		return fmt.Errorf("router files: %w", err)
	}
	if err := placeFiles(s.Workspace, s.Agent.Files, agentOwner); err != nil {
		return fmt.Errorf("agent files: %w", err)
	}
	agentLog, err := os.OpenFile(filepath.Join(logDir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer agentLog.Close()
	routerLog, err := os.OpenFile(filepath.Join(logDir, "router.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer routerLog.Close()

	var listeners []*os.File
	if rootless {
		g.Notes = append(g.Notes,
			"rootless: agent and router share the invoking user's host UID; the router's files are kept from the agent by the mount namespace and Landlock, not by file modes",
			"rootless: no nftables egress guard (needs CAP_NET_ADMIN on the host); the agent's network namespace has only loopback, and Landlock limits TCP connect to the router port",
			"rootless: the router uses the host's network stack directly, not a pod link",
			"rootless: no cgroup limits (no delegated cgroup); Limits are not enforced")
	} else {
		cg, err := newCgroups(s.ID, s.Limits)
		p.mu.Lock()
		p.rec.Cgroups = cg
		p.mu.Unlock()
		if err := p.save(); err != nil {
			return err
		}
		switch {
		case err == nil:
			g.CgroupLimits = true
		case s.Isolation == Enhanced:
			return err
		default:
			g.Notes = append(g.Notes, "cgroup limits unavailable: "+err.Error())
		}
		unlock, err := lockHostLinks()
		if err != nil {
			return fmt.Errorf("host link lock: %w", err)
		}
		defer unlock()
		l, err := allocateLink(s.AddressPool, s.ID)
		if err != nil {
			return err
		}
		p.mu.Lock()
		p.rec.Link = &l
		p.mu.Unlock()
		if err := p.save(); err != nil {
			return err
		}
		if p.netns, err = newNetns(); err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Fstat(int(p.netns.Fd()), &st); err == nil {
			var cookie uint64
			inNetns(p.netns, func() (err error) {
				cookie, err = netnsCookie()
				return err
			})
			p.mu.Lock()
			p.rec.NetnsInode, p.rec.NetnsCookie = st.Ino, cookie
			p.mu.Unlock()
		}
		ifIndex, err := setupLink(p.netns, l)
		p.mu.Lock()
		p.rec.Link.HostIfIndex = ifIndex
		p.mu.Unlock()
		if err := p.save(); err != nil {
			return err
		}
		if err != nil {
			return err
		}
		unlock()
		g.SeparateUIDs, g.EgressGuard, g.RouterEgressViaPodLink = true, true, true
		err = inNetns(p.netns, func() error {
			for _, port := range s.RouterPorts {
				f, err := listenLoopback(port)
				if err != nil {
					return err
				}
				listeners = append(listeners, f)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()

	ready, passed, err := p.startInit(ctx, rootDir, agentLog)
	if err != nil {
		return err
	}
	if rootless {
		if len(passed) != len(s.RouterPorts) {
			return fmt.Errorf("pod init passed %d router listeners, want %d", len(passed), len(s.RouterPorts))
		}
		listeners = passed
	}
	g.LandlockABI, g.LandlockFS, g.LandlockNet = ready.LandlockABI, ready.LandlockFS, ready.LandlockNet
	if !g.LandlockFS {
		g.Notes = append(g.Notes, fmt.Sprintf("Landlock unavailable (ABI %d): filesystem confinement rests on the read-only root and file modes", g.LandlockABI))
	} else if !g.LandlockNet {
		g.Notes = append(g.Notes, fmt.Sprintf("Landlock ABI %d has no TCP rules", g.LandlockABI))
	}
	g.RouterLandlockFS = g.LandlockABI > 0
	p.Guarantees = g
	if err := p.startRouter(routerDir, routerLog, listeners); err != nil {
		return err
	}
	return nil
}

// checkTraversable makes sure UID 1001 can reach its directory under root.
func checkTraversable(root string) error {
	for d := root; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("state root %s: %s is not traversable by other users (mode %v); the router (uid %d) must reach its directory: chmod o+x it or choose another StateRoot", root, d, fi.Mode().Perm(), RouterUID)
		}
		if d == "/" {
			return nil
		}
	}
}

func chownIf(path string, uid int) error {
	if uid < 0 {
		return nil
	}
	return os.Chown(path, uid, uid)
}

func placeFiles(dir string, files map[string][]byte, owner int) error {
	for rel, data := range files {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		for d := filepath.Dir(p); d != dir && strings.HasPrefix(d, dir); d = filepath.Dir(d) {
			if err := chownIf(d, owner); err != nil {
				return err
			}
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			return err
		}
		if err := chownIf(p, owner); err != nil {
			return err
		}
	}
	return nil
}

// startInit starts the pod init in fresh mount, PID, UTS and IPC
// namespaces (plus user and network namespaces in rootless mode), places it
// in the agent's cgroups before it does anything, hands it its
// configuration, and waits until it reports the agent started.
func (p *Pod) startInit(ctx context.Context, rootDir string, log *os.File) (ctlMsg, []*os.File, error) {
	s := p.spec
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return ctlMsg{}, nil, err
	}
	defer cfgW.Close()
	ctlParent, ctlChild, err := socketPair()
	if err != nil {
		cfgR.Close()
		return ctlMsg{}, nil, err
	}
	conn, err := net.FileConn(ctlParent)
	ctlParent.Close()
	if err != nil {
		cfgR.Close()
		ctlChild.Close()
		return ctlMsg{}, nil, fmt.Errorf("control socket: %w", err)
	}
	p.ctl = conn.(*net.UnixConn)
	attr := &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
		Pdeathsig:  syscall.SIGKILL,
	}
	if p.rec.Rootless {
		attr.Cloneflags |= syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}
		attr.GidMappingsEnableSetgroups = false
	}
	extra := []*os.File{cfgR, ctlChild}
	var taskFDs []int
	if cg := p.rec.Cgroups; cg != nil && len(cg.Hierarchies) > 0 {
		files, err := cg.agentTaskFiles()
		if err != nil {
			cfgR.Close()
			ctlChild.Close()
			return ctlMsg{}, nil, err
		}
		defer func() {
			for _, f := range files {
				f.Close()
			}
		}()
		for i, f := range files {
			taskFDs = append(taskFDs, podCtlFD+1+i)
			extra = append(extra, f)
		}
	}
	cmd := &exec.Cmd{Path: "/proc/self/exe", Args: []string{podInitArgv0}, Env: []string{initEnv + "=" + stagePod},
		ExtraFiles: extra, Stdout: log, Stderr: log, SysProcAttr: attr}
	if p.netns != nil {
		err = inNetns(p.netns, cmd.Start)
	} else {
		err = cmd.Start()
	}
	cfgR.Close()
	ctlChild.Close()
	if err != nil && p.rec.Rootless && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.ENOSPC)) {
		return ctlMsg{}, nil, fmt.Errorf("start pod init: unprivileged user namespaces are not allowed on this host (see user.max_user_namespaces, kernel.apparmor_restrict_unprivileged_userns): run kars as root: %w", err)
	}
	if err != nil {
		return ctlMsg{}, nil, fmt.Errorf("start pod init: %w", err)
	}
	p.init = cmd
	now := time.Now()
	p.mu.Lock()
	p.rec.Procs = append(p.rec.Procs, refOf(cmd.Process.Pid))
	p.status.Agent = ProcessStatus{Running: true, StartedAt: now}
	p.mu.Unlock()
	if err := p.save(); err != nil {
		return ctlMsg{}, nil, err
	}
	ctlDone := make(chan struct{})
	go func() {
		p.readControl()
		close(ctlDone)
	}()
	go p.watchInit(ctlDone)
	if cg := p.rec.Cgroups; cg != nil && len(cg.Hierarchies) > 0 {
		if err := cg.joinInit(cmd.Process.Pid); err != nil && s.Isolation == Enhanced {
			return ctlMsg{}, nil, err
		}
	}
	cfg := podConfig{
		Rootless: p.rec.Rootless, Hostname: s.ID, RootDir: rootDir, Workspace: s.Workspace,
		Hide: p.hidden(), Agent: s.Agent, AgentPort: s.AgentPorts, RouterPorts: s.RouterPorts,
		ImageRoot: s.AgentRoot, AgentCode: s.AgentCode,
		RequireLandlockNet: s.Isolation == Enhanced, CgroupTaskFDs: taskFDs,
	}
	if _, err := cfgW.WriteString(marshal(cfg)); err != nil {
		return ctlMsg{}, nil, fmt.Errorf("configure pod init: %w", err)
	}
	cfgW.Close()
	select {
	case r := <-p.readyc:
		if r.err == nil && r.msg.Err != "" {
			r.err = fmt.Errorf("pod init: %s", r.msg.Err)
		}
		return r.msg, r.files, r.err
	case <-ctx.Done():
		return ctlMsg{}, nil, ctx.Err()
	}
}

// watchInit records the agent's end when the pod init exits.
//
// The init's last act is to report the agent's wait status on the control
// socket; that message may still be queued when Wait returns. readControl
// reads until end of file, which comes once the init (the only holder of
// the other end: it is close-on-exec everywhere) is gone, so the socket is
// closed only after it: closing it first would drop the report and turn
// a killed agent into a clean exit.
func (p *Pod) watchInit(ctlDone <-chan struct{}) {
	p.init.Wait()
	<-ctlDone
	p.ctl.Close()
	p.mu.Lock()
	a := &p.status.Agent
	a.Running, a.FinishedAt = false, time.Now()
	if !p.agentReported {
		// The init died without reporting (killed, or failed to set up):
		// report its own end.
		if ws, ok := p.init.ProcessState.Sys().(syscall.WaitStatus); ok {
			a.ExitCode = ws.ExitStatus()
			if ws.Signaled() {
				a.Signal = ws.Signal()
			}
		}
	}
	if a.Signal != 0 {
		a.ExitCode = -1
	}
	if cg := p.rec.Cgroups; cg != nil {
		a.OOMKilled = cg.memoryKilled(a.Signal != 0)
	}
	p.mu.Unlock()
	close(p.agentDone)
}

// startRouter starts the router stage in the pod's network namespace
// (root mode) with its listeners as fds 3….
func (p *Pod) startRouter(routerDir string, log *os.File, listeners []*os.File) error {
	s := p.spec
	dir := s.Router.Dir
	if dir == "" {
		dir = routerDir
	}
	tmp := filepath.Join(routerDir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	if !p.rec.Rootless {
		if err := os.Chown(tmp, RouterUID, RouterUID); err != nil {
			return err
		}
	}
	env := append([]string{"KARS_ROUTER_DIR=" + routerDir, "TMPDIR=" + tmp}, s.Router.Env...)
	rc := routerConfig{Path: s.Router.Path, Args: s.Router.Args, Env: env, Dir: dir, Ports: s.RouterPorts,
		SetIDs: !p.rec.Rootless, UID: RouterUID, GID: RouterUID,
		Hide: p.hidden(), Writable: append([]string{routerDir}, s.routerWritable()...)}
	cmd := &exec.Cmd{Path: "/proc/self/exe", Args: []string{routerInitArg},
		Env:        []string{initEnv + "=" + stageRouter, routerCfgEnv + "=" + marshal(rc)},
		ExtraFiles: listeners, Stdout: log, Stderr: log,
		SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}}
	var err error
	if p.netns != nil {
		err = inNetns(p.netns, cmd.Start)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return fmt.Errorf("start router: %w", err)
	}
	p.router = cmd
	p.mu.Lock()
	p.rec.Procs = append(p.rec.Procs, refOf(cmd.Process.Pid))
	p.status.Router = ProcessStatus{Running: true, StartedAt: time.Now()}
	p.mu.Unlock()
	if cg := p.rec.Cgroups; cg != nil && len(cg.Hierarchies) > 0 {
		cg.join("router", cmd.Process.Pid)
	}
	go func() {
		cmd.Wait()
		p.mu.Lock()
		r := &p.status.Router
		r.Running, r.FinishedAt = false, time.Now()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			r.ExitCode = ws.ExitStatus()
			if ws.Signaled() {
				r.Signal, r.ExitCode = ws.Signal(), -1
			}
		}
		p.mu.Unlock()
		close(p.routerDone)
	}()
	return p.save()
}
