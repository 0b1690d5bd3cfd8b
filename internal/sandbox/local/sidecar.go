package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"time"
)

// SidecarUID runs sidecars (the MCP servers kars runs under `kars dev`):
// not the agent's UID, so the egress guard's owner rules keep the agent
// from connecting to them, and not the router's, so they cannot read its
// credentials.
const SidecarUID = 1003

// Sidecar is a further program in the pod's network namespace, confined
// like the router (no capabilities, no_new_privs, its own UID, Landlock
// keeping it out of the state root and writing only its directory).
type Sidecar struct {
	Name string
	cmd  *exec.Cmd
	done chan struct{}
}

// Done is closed when the sidecar has exited.
func (s *Sidecar) Done() <-chan struct{} { return s.done }

var sidecarName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// StartSidecar starts proc as the named sidecar. Its directory
// <pod>/sidecars/<name> is its working directory, TMPDIR and only writable
// place; its output goes to logs/sidecar-<name>.log. It listens where it
// likes inside the pod's network namespace (the router reaches it on
// 127.0.0.1). Stop ends it with the pod; Stop on the sidecar ends it alone.
func (p *Pod) StartSidecar(name string, proc Process) (*Sidecar, error) {
	if !sidecarName.MatchString(name) {
		return nil, fmt.Errorf("local: pod %s: sidecar name %q: want a DNS label", p.ID, name)
	}
	if !filepath.IsAbs(proc.Path) {
		return nil, fmt.Errorf("local: pod %s: sidecar %s: path %q must be absolute", p.ID, name, proc.Path)
	}
	// The parent is traversable by the sidecar's UID; the directory is
	// its alone.
	parent := filepath.Join(p.Dir, "sidecars")
	if err := os.Mkdir(parent, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	rootless := p.rec.Rootless
	if !rootless {
		if err := os.Chown(dir, SidecarUID, SidecarUID); err != nil {
			return nil, err
		}
	}
	log, err := os.OpenFile(filepath.Join(p.Dir, "logs", "sidecar-"+name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	wd := proc.Dir
	if wd == "" {
		wd = dir
	}
	env := append([]string{"TMPDIR=" + dir, "HOME=" + dir}, proc.Env...)
	rc := routerConfig{Path: proc.Path, Args: proc.Args, Env: env, Dir: wd,
		SetIDs: !rootless, UID: SidecarUID, GID: SidecarUID, Hide: p.hidden(), Writable: []string{dir}}
	cmd := &exec.Cmd{Path: "/proc/self/exe", Args: []string{routerInitArg},
		Env:    []string{initEnv + "=" + stageRouter, routerCfgEnv + "=" + marshal(rc)},
		Stdout: log, Stderr: log, SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}}
	if p.netns != nil {
		err = inNetns(p.netns, cmd.Start)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return nil, fmt.Errorf("local: pod %s: start sidecar %s: %w", p.ID, name, err)
	}
	s := &Sidecar{Name: name, cmd: cmd, done: make(chan struct{})}
	p.mu.Lock()
	p.rec.Procs = append(p.rec.Procs, refOf(cmd.Process.Pid))
	p.sidecars = append(p.sidecars, s)
	p.mu.Unlock()
	go func() {
		cmd.Wait()
		close(s.done)
	}()
	return s, p.save()
}

// Stop ends the sidecar: SIGTERM to its process group, SIGKILL after
// ctx ends or 5 s.
func (s *Sidecar) Stop(ctx context.Context) error {
	select {
	case <-s.done:
		return nil
	default:
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
	case <-t.C:
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
	return errors.New("sidecar " + s.Name + " did not stop on SIGTERM; killed")
}

// killSidecars ends every sidecar of the pod (its teardown).
func (p *Pod) killSidecars() {
	p.mu.Lock()
	sc := p.sidecars
	p.sidecars = nil
	p.mu.Unlock()
	for _, s := range sc {
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
		}
	}
}
