package router

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// The socket-activation environment (sd_listen_fds(3)).
const (
	envListenPID     = "LISTEN_PID"
	envListenFDs     = "LISTEN_FDS"
	envListenFDNames = "LISTEN_FDNAMES"
	// listenFDsStart is the first passed descriptor (SD_LISTEN_FDS_START).
	listenFDsStart = 3
)

// ActivatedListeners takes the listening sockets a launcher passed with the
// systemd socket-activation protocol: LISTEN_FDS sockets from descriptor 3
// on, for the process whose pid is LISTEN_PID, named in LISTEN_FDNAMES
// (colon-separated). The local substrate binds the router's ports on
// 127.0.0.1 inside the pod's network namespace and names each socket with
// its port number, e.g. "8443:8444"; Serve picks the agent's and the
// admin's sockets by their configured ports.
//
// Like sd_listen_fds(1) it unsets the three variables whatever it finds, so
// that nothing the router starts inherits them, and marks the descriptors
// close-on-exec. When LISTEN_PID is not this process the sockets are
// someone else's: it returns none and leaves the descriptors alone. A
// malformed environment, unnamed sockets or a descriptor that is not a
// listening socket is an error: the launcher meant to hand over sockets, and
// the router must not silently bind in their place.
func ActivatedListeners() (map[string]net.Listener, error) {
	pid, fds, names := os.Getenv(envListenPID), os.Getenv(envListenFDs), os.Getenv(envListenFDNames)
	os.Unsetenv(envListenPID)
	os.Unsetenv(envListenFDs)
	os.Unsetenv(envListenFDNames)
	if pid == "" || fds == "" {
		return nil, nil
	}
	if p, err := strconv.Atoi(pid); err != nil || p <= 0 {
		return nil, fmt.Errorf("socket activation: %s=%q is not a pid", envListenPID, pid)
	} else if p != os.Getpid() {
		return nil, nil
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("socket activation: %s=%q is not a count of descriptors", envListenFDs, fds)
	}
	if n == 0 {
		return nil, nil
	}
	split := strings.Split(names, ":")
	if names == "" || len(split) != n {
		return nil, fmt.Errorf("socket activation: %s=%q must name each of the %d sockets with its port, e.g. 8443:8444", envListenFDNames, names, n)
	}
	out := make(map[string]net.Listener, n)
	fail := func(err error) (map[string]net.Listener, error) {
		for _, l := range out {
			l.Close()
		}
		return nil, err
	}
	for i, name := range split {
		fd := listenFDsStart + i
		if _, dup := out[name]; dup || name == "" {
			return fail(fmt.Errorf("socket activation: %s=%q: names must be distinct and non-empty", envListenFDNames, names))
		}
		syscall.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), "LISTEN_FD_"+name)
		l, err := net.FileListener(f) // duplicates the descriptor
		f.Close()
		if err != nil {
			return fail(fmt.Errorf("socket activation: descriptor %d (%s) is not a listening socket: %w", fd, name, err))
		}
		out[name] = l
	}
	return out, nil
}

// portOf returns the port of a host:port address, or "" if it has none.
func portOf(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return port
}
