package local

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	llsyscall "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"

	"github.com/kars-io/kars/internal/seccomp"
)

// securebits (include/uapi/linux/securebits.h). NOROOT stops UID 0 from
// regaining capabilities through execve — the agent is UID 0 inside its
// user namespace in rootless mode — and NO_CAP_AMBIENT_RAISE closes the
// ambient route. Both are locked so the agent cannot undo them.
const (
	secbitNoRoot                  = 1 << 0
	secbitNoRootLocked            = 1 << 1
	secbitNoCapAmbientRaise       = 1 << 6
	secbitNoCapAmbientRaiseLocked = 1 << 7
)

// confinement is everything applied to one OS thread right before it
// executes (or forks and executes) a sandboxed program.
type confinement struct {
	// SetIDs switches to UID/GID (root mode). In rootless mode the
	// process keeps namespace UID 0, which maps to the invoking user.
	SetIDs   bool
	UID, GID int
	// Securebits are set while CAP_SETPCAP is still held.
	Securebits bool
	// CgroupTaskFDs are v1 "tasks" files the thread moves itself into.
	CgroupTaskFDs []int
	// LandlockFD is a ruleset to enforce, or -1.
	LandlockFD    int
	LandlockFlags uint32
	Seccomp       *seccomp.Program
}

// apply confines the calling thread. The caller holds
// runtime.LockOSThread and never unlocks it: every step below is
// per-thread, which is exactly what lets the rest of the Go process (the
// pod init, still privileged) keep running unconfined.
func (c confinement) apply() error {
	for _, fd := range c.CgroupTaskFDs {
		// "0" means the writing thread (not its whole process).
		if _, err := unix.Write(fd, []byte("0")); err != nil {
			return fmt.Errorf("join agent cgroup: %w", err)
		}
	}
	if c.Securebits {
		bits := secbitNoRoot | secbitNoRootLocked | secbitNoCapAmbientRaise | secbitNoCapAmbientRaiseLocked
		if err := unix.Prctl(unix.PR_SET_SECUREBITS, uintptr(bits), 0, 0, 0); err != nil {
			return fmt.Errorf("securebits: %w", err)
		}
	}
	if err := dropBoundingSet(); err != nil {
		return err
	}
	if c.SetIDs {
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
			return fmt.Errorf("setgroups: %w", e)
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(c.GID), uintptr(c.GID), uintptr(c.GID)); e != 0 {
			return fmt.Errorf("setresgid %d: %w", c.GID, e)
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(c.UID), uintptr(c.UID), uintptr(c.UID)); e != 0 {
			return fmt.Errorf("setresuid %d: %w", c.UID, e)
		}
	}
	if err := clearCaps(); err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if c.LandlockFD >= 0 {
		if err := llsyscall.LandlockRestrictSelf(c.LandlockFD, c.LandlockFlags); err != nil {
			return fmt.Errorf("landlock: %w", err)
		}
	}
	if c.Seccomp != nil {
		if err := c.Seccomp.InstallThread(); err != nil {
			return err
		}
	}
	return nil
}

// dropBoundingSet removes every capability from the thread's bounding set,
// so no later execve can grant one. Without CAP_SETPCAP (an unprivileged
// router in rootless mode) there is nothing to drop: such a process has no
// capabilities to begin with and no_new_privs blocks file capabilities.
func dropBoundingSet() error {
	last := lastCap()
	for c := 0; c <= last; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			if err == unix.EPERM && !hasCap(unix.CAP_SETPCAP) {
				return nil
			}
			return fmt.Errorf("drop capability %d from bounding set: %w", c, err)
		}
	}
	return nil
}

func lastCap() int {
	data, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
			return n
		}
	}
	return unix.CAP_LAST_CAP
}

func capHeader() unix.CapUserHeader {
	return unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
}

func hasCap(c int) bool {
	hdr := capHeader()
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(c%32)) != 0
}

// clearCaps empties the permitted, effective, inheritable and ambient sets
// of the calling thread.
func clearCaps() error {
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && err != unix.EINVAL {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := capHeader()
	var data [2]unix.CapUserData
	if _, _, e := unix.RawSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return fmt.Errorf("capset: %w", e)
	}
	return nil
}
