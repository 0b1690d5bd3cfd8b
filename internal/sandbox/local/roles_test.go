package local

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The test binary doubles as every program of a test pod, chosen by
// roleEnv: a stand-in router, the probe agent, a memory hog, an agent that
// ends with a chosen status, a parent that is SIGKILLed mid-flight, and the
// rootless runner.
const roleEnv = "KARS_LOCAL_TEST_ROLE"

func TestMain(m *testing.M) {
	InitMain()
	switch os.Getenv(roleEnv) {
	case "":
		code := m.Run()
		if binPath != "" {
			os.RemoveAll(filepath.Dir(binPath))
		}
		os.Exit(code)
	case "router":
		standInRouter()
	case "probe":
		probe()
	case "imageprobe":
		imageProbe()
	case "alloc":
		alloc()
	case "readfile":
		if _, err := os.ReadFile(os.Getenv("READ_PATH")); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
	case "sleep":
		time.Sleep(time.Hour)
	case "fill":
		fill()
	case "exit":
		// EXIT_SIGNAL kills the agent with that signal, else it exits
		// with EXIT_CODE.
		if sig, _ := strconv.Atoi(os.Getenv("EXIT_SIGNAL")); sig > 0 {
			syscall.Kill(os.Getpid(), syscall.Signal(sig))
			time.Sleep(time.Hour)
		}
		code, _ := strconv.Atoi(os.Getenv("EXIT_CODE"))
		os.Exit(code)
	case "parent":
		crashingParent()
	case "rootless":
		rootlessRunner()
	}
	os.Exit(0)
}

// standInRouter serves the activation listeners it was handed. On the
// router port a line protocol: "PING" → "PONG", "TCP addr" and "UDP addr"
// relay one exchange to an upstream, "WHOAMI" → uid. Other ports answer
// with their port number. In root mode it also listens on [::1]:8443 so
// that the agent's IPv6 refusal is the guard's doing, not a missing
// listener.
func standInRouter() {
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || n == 0 {
		fmt.Println("router: bad activation environment")
		os.Exit(2)
	}
	for i := range n {
		l, err := net.FileListener(os.NewFile(uintptr(3+i), "listener"))
		if err != nil {
			fmt.Println("router:", err)
			os.Exit(2)
		}
		go serveRouter(l, names[i])
	}
	if l, err := net.Listen("tcp", "[::1]:8443"); err == nil {
		go serveRouter(l, "8443")
	}
	fmt.Println("router: serving", names, "uid", os.Getuid())
	select {}
}

func serveRouter(l net.Listener, name string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if name != "8443" {
				fmt.Fprintln(c, name)
				return
			}
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				cmd, arg, _ := strings.Cut(sc.Text(), " ")
				switch cmd {
				case "PING":
					fmt.Fprintln(c, "PONG")
				case "WHOAMI":
					fmt.Fprintln(c, os.Getuid())
				case "READ":
					if _, err := os.ReadFile(arg); err != nil {
						fmt.Fprintln(c, "ERR", err)
					} else {
						fmt.Fprintln(c, "ok")
					}
				case "WRITE":
					if err := os.WriteFile(arg, []byte("router was here"), 0o600); err != nil {
						fmt.Fprintln(c, "ERR", err)
					} else {
						fmt.Fprintln(c, "ok")
					}
				case "TCP", "UDP":
					reply, err := exchange(strings.ToLower(cmd), arg)
					if err != nil {
						reply = "ERR " + err.Error()
					}
					fmt.Fprintln(c, reply)
				}
			}
		}()
	}
}

// exchange sends "hello" to addr and returns the first line of the reply.
func exchange(network, addr string) (string, error) {
	c, err := net.DialTimeout(network, addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintln(c, "hello"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// probe runs the agent-side checks and prints them as one JSON line:
// check name → "ok" or the error. With PROBE_SERVE set it then listens on
// 127.0.0.1:18789 until terminated.
func probe() {
	res := map[string]string{}
	check := func(name string, err error) {
		if err == nil {
			res[name] = "ok"
		} else {
			res[name] = err.Error()
		}
	}
	env := os.Getenv
	// Descriptors first, before the runtime opens its own: anything
	// beyond stdio and the directory being read was leaked to the agent.
	fdEntries, _ := os.ReadDir("/proc/self/fd")
	var leaked []string
	for _, e := range fdEntries {
		n, _ := strconv.Atoi(e.Name())
		if flags, err := unix.FcntlInt(uintptr(n), unix.F_GETFD, 0); n > 2 && err == nil && flags&unix.FD_CLOEXEC == 0 {
			target, _ := os.Readlink("/proc/self/fd/" + e.Name())
			leaked = append(leaked, e.Name()+"->"+target)
		}
	}
	res["leaked-fds"] = strings.Join(leaked, ",")
	syscallChecks(check)
	if env("PROBE_ONLY") == "syscalls" {
		out, _ := json.Marshal(res)
		fmt.Printf("PROBE %s\n", out)
		return
	}
	gw := defaultGateway()
	upTCP, upUDP := net.JoinHostPort(gw, env("PROBE_UPSTREAM_TCP_PORT")), net.JoinHostPort(gw, env("PROBE_UPSTREAM_UDP_PORT"))
	check("router", func() error {
		got, err := routerSays("PING")
		if err == nil && got != "PONG" {
			err = fmt.Errorf("router said %q", got)
		}
		return err
	}())
	check("router-upstream-tcp", viaRouter("TCP "+upTCP))
	check("router-upstream-udp", viaRouter("UDP "+upUDP))
	for _, f := range strings.Split(env("PROBE_ROUTER_READS"), ",") {
		if f != "" {
			got, err := routerSays("READ " + f)
			if err == nil && got != "ok" {
				err = errors.New(got)
			}
			check("router-read-"+f, err)
		}
	}
	check("tcp-host", dialOnly("tcp", upTCP))
	check("udp-host-dns", udpExchange(upUDP))
	check("tcp-metadata", dialOnly("tcp", "169.254.169.254:80"))
	check("tcp-ipv6-loopback", dialOnly("tcp", "[::1]:8443"))
	check("tcp-other-loopback-port", dialOnly("tcp", "127.0.0.1:9090"))
	for _, f := range strings.Split(env("PROBE_SECRETS"), ",") {
		if f != "" {
			_, err := os.ReadFile(f)
			check("read-"+f, err)
		}
	}
	check("read-system-file", func() error { _, err := os.ReadFile("/etc/passwd"); return err }())
	for _, p := range []string{"/sandbox/probe-file", "/tmp/probe-file", "/etc/probe-file", "/usr/probe-file", "/probe-file", "/var/tmp/probe-file", "/dev/shm/probe-file"} {
		check("write-"+p, os.WriteFile(p, []byte("x"), 0o600))
	}
	check("socket-mptcp", func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_MPTCP)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}())
	check("bind-agent-port", bindOnly(18789))
	check("bind-other-port", bindOnly(7777))
	status, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(status), "\n") {
		for _, k := range []string{"Uid", "CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"} {
			if v, ok := strings.CutPrefix(line, k+":"); ok {
				res["status-"+k] = strings.Join(strings.Fields(v), " ")
			}
		}
	}
	hn, _ := os.Hostname()
	res["hostname"] = hn
	out, _ := json.Marshal(res)
	fmt.Printf("PROBE %s\n", out)
	if env("PROBE_SERVE") == "" {
		return
	}
	l, err := net.Listen("tcp", "127.0.0.1:18789")
	if err != nil {
		fmt.Println("serve:", err)
		return
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "agent")
			c.Close()
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	fmt.Println("agent: terminated")
}

// syscallChecks are the checks that also run, as a control, outside any
// sandbox: there they must not fail with EPERM.
func syscallChecks(check func(string, error)) {
	check("ptrace", rawErr(unix.SYS_PTRACE, unix.PTRACE_PEEKDATA, uintptr(os.Getppid()), 0))
	check("unshare", rawErr(unix.SYS_UNSHARE, unix.CLONE_NEWUTS, 0, 0))
	check("setns", rawErr(unix.SYS_SETNS, 0, unix.CLONE_NEWNET, 0))
	check("bpf", rawErr(unix.SYS_BPF, 0, 0, 0))
	check("mount", mountTmpfs(os.Getenv("PROBE_MOUNT_TARGET")))
	check("pid-namespace", func() error {
		entries, _ := os.ReadDir("/proc")
		var pids []string
		for _, e := range entries {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				pids = append(pids, e.Name())
			}
		}
		init, _ := os.ReadFile("/proc/1/cmdline")
		if len(pids) > 3 || !strings.HasPrefix(string(init), podInitArgv0) {
			return fmt.Errorf("sees %d processes, pid 1 is %q", len(pids), strings.ReplaceAll(string(init), "\x00", " "))
		}
		return nil
	}())
}

// defaultGateway reads the pod's default route (the host side of its
// link) from /proc/net/route; rootless pods have none, and use loopback.
func defaultGateway() string {
	data, _ := os.ReadFile("/proc/net/route")
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 2 && f[1] == "00000000" {
			v, err := strconv.ParseUint(f[2], 16, 32)
			if err == nil {
				return net.IPv4(byte(v), byte(v>>8), byte(v>>16), byte(v>>24)).String()
			}
		}
	}
	return "127.0.0.1"
}

func routerSays(line string) (string, error) {
	c, err := net.DialTimeout("tcp", "127.0.0.1:8443", 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(c, line)
	got, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(got), err
}

func viaRouter(line string) error {
	got, err := routerSays(line)
	if err == nil && got != "hello" {
		err = fmt.Errorf("upstream relay said %q", got)
	}
	return err
}

func dialOnly(network, addr string) error {
	c, err := net.DialTimeout(network, addr, 2*time.Second)
	if err == nil {
		c.Close()
	}
	return err
}

func udpExchange(addr string) error {
	got, err := exchange("udp", addr)
	if err == nil && got != "hello" {
		err = fmt.Errorf("reply %q", got)
	}
	return err
}

func bindOnly(port int) error {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err == nil {
		l.Close()
	}
	return err
}

func rawErr(nr, a1, a2, a3 uintptr) error {
	if _, _, e := unix.RawSyscall(nr, a1, a2, a3); e != 0 {
		return e
	}
	return nil
}

func mountTmpfs(target string) error {
	if target == "" {
		target = "/tmp"
	}
	src, _ := unix.BytePtrFromString("tmpfs")
	dst, _ := unix.BytePtrFromString(target)
	return rawErr6(unix.SYS_MOUNT, uintptr(unsafe.Pointer(src)), uintptr(unsafe.Pointer(dst)), uintptr(unsafe.Pointer(src)))
}

func rawErr6(nr, a1, a2, a3 uintptr) error {
	if _, _, e := unix.RawSyscall6(nr, a1, a2, a3, 0, 0, 0); e != 0 {
		return e
	}
	return nil
}

// alloc touches ALLOC_MIB mebibytes and exits 0 if it survives.
// fill writes /sandbox/fill in 1 MiB chunks until a write fails, reports
// how far it got and why, then reads the files named in PROBE_SECRETS.
func fill() {
	res := map[string]string{}
	f, err := os.Create("/sandbox/fill")
	var n int64
	if err == nil {
		chunk := make([]byte, 1<<20)
		for n < 1<<30 {
			var w int
			w, err = f.Write(chunk)
			n += int64(w)
			if err != nil {
				break
			}
		}
		if err == nil {
			err = f.Sync()
		}
		f.Close()
	}
	res["filled"] = strconv.FormatInt(n, 10)
	res["fill-error"] = fmt.Sprint(err)
	for _, p := range strings.Split(os.Getenv("PROBE_SECRETS"), ",") {
		if p != "" {
			data, err := os.ReadFile(p)
			switch {
			case err != nil:
				res["read-"+p] = err.Error()
			default:
				res["read-"+p] = "read " + strconv.Itoa(len(data)) + " bytes"
			}
		}
	}
	out, _ := json.Marshal(res)
	fmt.Printf("PROBE %s\n", out)
}

func alloc() {
	mib, _ := strconv.Atoi(os.Getenv("ALLOC_MIB"))
	buf := make([][]byte, 0, mib)
	for range mib {
		b := make([]byte, 1<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		buf = append(buf, b)
	}
	fmt.Println("allocated", len(buf), "MiB")
}
