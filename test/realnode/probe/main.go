//go:build linux

// Command probe is the one program the real-node proof puts into pods: as
// "pause" it is the pod sandbox's pause container (the image registry.k8s.io
// would serve is unreachable here), as "syscalls" it reports, one line per
// call, what the kernel answered to system calls the kars-strict seccomp
// profile denies and an unconfined container may make, together with its
// UID and the Seccomp mode of /proc/self/status; as "dial HOST:PORT" it
// reports what one TCP connection attempt got.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe pause|syscalls")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "pause":
		// The pause container only holds the pod's namespaces open.
		waitForSignal()
	case "syscalls":
		syscalls()
		if len(os.Args) > 2 && os.Args[2] == "--wait" {
			// Stay up so that the pod stays Running until the proof
			// has read the log.
			waitForSignal()
		}
	case "dial":
		// dial ADDR: one TCP connection attempt, the outcome on stdout.
		if len(os.Args) < 3 {
			fmt.Fprintln(os.Stderr, "usage: probe dial HOST:PORT")
			os.Exit(2)
		}
		c, err := net.DialTimeout("tcp", os.Args[2], 5*time.Second)
		if err != nil {
			var errno syscall.Errno
			if errors.As(err, &errno) {
				fmt.Printf("dial=%s\n", errnoName(errno))
				return
			}
			fmt.Printf("dial=error %v\n", err)
			return
		}
		c.Close()
		fmt.Println("dial=ok")
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}

func waitForSignal() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}

// Linux x86-64 numbers of the calls probed (arch/x86/entry/syscalls).
const (
	sysKeyctl      = 250
	sysAddKey      = 248
	sysPersonality = 135
	sysSyslog      = 103
	// KEYCTL_GET_KEYRING_ID on KEY_SPEC_SESSION_KEYRING, create=0: an
	// unprivileged, read-only query.
	keyctlGetKeyringID = 0
	keySpecSession     = -3
)

func syscalls() {
	fmt.Printf("uid=%d gid=%d\n", os.Getuid(), os.Getgid())
	fmt.Printf("seccomp=%s\n", statusField("Seccomp"))
	report("keyctl", func() syscall.Errno {
		_, _, e := syscall.RawSyscall(sysKeyctl, keyctlGetKeyringID, sessionKeyring(), 0)
		return e
	})
	report("add_key", func() syscall.Errno {
		typ, _ := syscall.BytePtrFromString("user")
		desc, _ := syscall.BytePtrFromString("kars-realnode")
		payload := []byte("x")
		_, _, e := syscall.RawSyscall6(sysAddKey, uintptr(unsafe.Pointer(typ)), uintptr(unsafe.Pointer(desc)),
			uintptr(unsafe.Pointer(&payload[0])), 1, sessionKeyring(), 0)
		return e
	})
	report("personality", func() syscall.Errno {
		// 0xffffffff queries the persona without changing it.
		_, _, e := syscall.RawSyscall(sysPersonality, 0xffffffff, 0, 0)
		return e
	})
	report("syslog", func() syscall.Errno {
		// SYSLOG_ACTION_SIZE_BUFFER (10).
		_, _, e := syscall.RawSyscall(sysSyslog, 10, 0, 0)
		return e
	})
}

// sessionKeyring is KEY_SPEC_SESSION_KEYRING as a register value.
func sessionKeyring() uintptr {
	v := int64(keySpecSession)
	return uintptr(v)
}

func report(name string, call func() syscall.Errno) {
	if e := call(); e != 0 {
		fmt.Printf("%s=%s\n", name, errnoName(e))
		return
	}
	fmt.Printf("%s=ok\n", name)
}

func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.EPERM:
		return "EPERM"
	case syscall.EACCES:
		return "EACCES"
	case syscall.ENOSYS:
		return "ENOSYS"
	case syscall.ENOKEY:
		return "ENOKEY"
	case syscall.ECONNREFUSED:
		return "ECONNREFUSED"
	case syscall.EHOSTUNREACH:
		return "EHOSTUNREACH"
	case syscall.ENETUNREACH:
		return "ENETUNREACH"
	}
	return fmt.Sprintf("errno%d", int(e))
}

func statusField(name string) string {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
