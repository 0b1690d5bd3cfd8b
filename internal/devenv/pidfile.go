package devenv

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// daemonPID returns the pid recorded in the pid file if that process is
// alive and is a kars dev daemon (the pid file may be stale after a crash).
func daemonPID(p Paths) (int, bool) {
	raw, err := os.ReadFile(p.PIDFile())
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return 0, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte("dev\x00serve")) {
		return 0, false
	}
	return pid, true
}

// Running reports whether a dev daemon is running for p.
func Running(p Paths) bool {
	_, ok := daemonPID(p)
	return ok
}

// lockDaemon takes the daemon's exclusive lock so that two daemons never
// share one state folder, and records the pid.
func lockDaemon(p Paths) (release func(), err error) {
	f, err := os.OpenFile(p.PIDFile()+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another kars dev daemon holds %s: %w", p.PIDFile()+".lock", err)
	}
	if err := os.WriteFile(p.PIDFile(), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		_ = os.Remove(p.PIDFile())
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
