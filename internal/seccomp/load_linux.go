package seccomp

import (
	"fmt"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Program is an assembled filter ready to install.
type Program struct {
	filter []unix.SockFilter
}

// Compile assembles p once so that installing it later does no allocation
// or parsing; the local substrate compiles before it forks and installs
// right before exec.
func (p Profile) Compile() (*Program, error) {
	raw, err := p.Assemble()
	if err != nil {
		return nil, err
	}
	return newProgram(raw), nil
}

func newProgram(raw []bpf.RawInstruction) *Program {
	f := make([]unix.SockFilter, len(raw))
	for i, in := range raw {
		f[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	return &Program{filter: f}
}

// InstallThread installs the filter on the calling OS thread only. The
// caller must hold runtime.LockOSThread, must have set no_new_privs (or hold
// CAP_SYS_ADMIN), and must not unlock the thread afterwards: the filter is
// meant for the program that thread executes or forks next, not for the
// rest of the Go process.
func (prog *Program) InstallThread() error {
	fprog := unix.SockFprog{Len: uint16(len(prog.filter)), Filter: &prog.filter[0]}
	_, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&fprog)))
	if errno != 0 {
		return fmt.Errorf("seccomp: install filter: %w", errno)
	}
	return nil
}
