package seccomp

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel tests re-execute the test binary: the child installs the
// filter on its locked main thread and then either probes system calls or
// executes another program, exactly as the local substrate does.
const (
	childModeEnv = "KARS_SECCOMP_TEST_CHILD"
	probeMode    = "probe"
	execMode     = "exec"
)

func TestMain(m *testing.M) {
	switch os.Getenv(childModeEnv) {
	case probeMode:
		runtime.LockOSThread()
		installOrDie()
		probeChild()
		os.Exit(0)
	case execMode:
		runtime.LockOSThread()
		installOrDie()
		args := os.Args[1:]
		err := syscall.Exec(args[0], args, os.Environ())
		fmt.Fprintln(os.Stderr, "exec:", err)
		os.Exit(111)
	}
	os.Exit(m.Run())
}

func installOrDie() {
	prog, err := Strict().Compile()
	if err == nil {
		if err = unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err == nil {
			err = prog.InstallThread()
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "install:", err)
		os.Exit(112)
	}
}

// probeChild prints one line per probe: name=errno-name.
func probeChild() {
	res := func(name string, errno syscall.Errno) {
		fmt.Printf("%s=%s\n", name, errName(errno))
	}
	_, _, e := unix.RawSyscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0)
	res("ptrace", e)
	_, _, e = unix.RawSyscall(unix.SYS_UNSHARE, unix.CLONE_NEWUSER, 0, 0)
	res("unshare", e)
	_, _, e = unix.RawSyscall(unix.SYS_SETNS, 0, 0, 0)
	res("setns", e)
	src, _ := unix.BytePtrFromString("none")
	dst, _ := unix.BytePtrFromString("/tmp")
	_, _, e = unix.RawSyscall6(unix.SYS_MOUNT, uintptr(unsafe.Pointer(src)), uintptr(unsafe.Pointer(dst)), uintptr(unsafe.Pointer(src)), 0, 0, 0)
	res("mount", e)
	_, _, e = unix.RawSyscall(unix.SYS_BPF, 0, 0, 0)
	res("bpf", e)
	_, _, e = unix.RawSyscall(unix.SYS_KEYCTL, 0, 0, 0)
	res("keyctl", e)
	_, _, e = unix.RawSyscall(unix.SYS_CLONE3, 0, 0, 0)
	res("clone3", e)
	// clone with CLONE_NEWUSER must be refused before the kernel looks at
	// anything else; without the flag the same call would create a child.
	_, _, e = unix.RawSyscall(unix.SYS_CLONE, unix.CLONE_NEWUSER|uintptr(unix.SIGCHLD), 0, 0)
	res("clone_newuser", e)
	_, _, e = unix.RawSyscall(unix.SYS_GETPID, 0, 0, 0)
	res("getpid", e)
	fd, _, e := unix.RawSyscall(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, ipprotoMPTCP)
	res("socket_mptcp", e)
	if e == 0 {
		unix.Close(int(fd))
	}
	fd, _, e = unix.RawSyscall(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0)
	res("socket_tcp", e)
	if e == 0 {
		unix.Close(int(fd))
	}
}

func errName(e syscall.Errno) string {
	switch e {
	case 0:
		return "ok"
	case unix.EPERM:
		return "EPERM"
	case unix.ENOSYS:
		return "ENOSYS"
	}
	return fmt.Sprintf("errno%d", int(e))
}

func childCmd(t *testing.T, mode string, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), childModeEnv+"="+mode)
	return cmd
}

func TestKernelDeniesDangerousCalls(t *testing.T) {
	out, err := childCmd(t, probeMode).CombinedOutput()
	if err != nil {
		t.Fatalf("probe child: %v\n%s", err, out)
	}
	want := map[string]string{
		"ptrace": "EPERM", "unshare": "EPERM", "setns": "EPERM", "mount": "EPERM", "bpf": "EPERM",
		"keyctl": "EPERM", "clone3": "ENOSYS", "clone_newuser": "EPERM", "getpid": "ok",
		"socket_mptcp": "EPERM", "socket_tcp": "ok",
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		got[k] = v
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %q, want %q", k, got[k], v)
		}
	}
}

// TestRuntimesRunUnderStrict runs real agent runtimes under the filter: a
// profile that is too tight shows up here, not in production.
func TestRuntimesRunUnderStrict(t *testing.T) {
	cases := map[string][]string{
		"shell": {"/bin/sh", "-c", "echo shell-ok | cat"},
		"python": {"python3", "-c", `
import subprocess, threading, socket, json, hashlib, tempfile, os, asyncio, multiprocessing
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); s.close()
t = threading.Thread(target=lambda: None); t.start(); t.join()
assert subprocess.run(["true"]).returncode == 0
with tempfile.TemporaryFile() as f: f.write(b"x")
async def main(): await asyncio.sleep(0.01)
asyncio.run(main())
with multiprocessing.Pool(2) as p: assert p.map(abs, [-1, -2]) == [1, 2]
print("python-ok")`},
		"node": {"node", "-e", `
const cp = require("child_process"), net = require("net"), fs = require("fs"), os = require("os");
cp.execSync("true");
fs.writeFileSync(os.tmpdir() + "/kars-seccomp-" + process.pid, "x");
fs.unlinkSync(os.tmpdir() + "/kars-seccomp-" + process.pid);
const srv = net.createServer().listen(0, "127.0.0.1", () => { srv.close(); console.log("node-ok"); });`},
	}
	for name, argv := range cases {
		t.Run(name, func(t *testing.T) {
			path, err := exec.LookPath(argv[0])
			if err != nil {
				t.Skipf("%s not installed: %v", argv[0], err)
			}
			argv[0] = path
			out, err := childCmd(t, execMode, argv...).CombinedOutput()
			if err != nil {
				t.Fatalf("%s under kars-strict: %v\n%s", name, err, out)
			}
			if !strings.Contains(string(out), name+"-ok") {
				t.Fatalf("%s did not finish: %s", name, out)
			}
		})
	}
	// The Go runtime itself (threads, signals, netpoller) is exercised by
	// the probe child, which runs this very test binary under the filter.
}
