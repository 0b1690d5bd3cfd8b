package local

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// requireRoot skips tests that need root and namespaces; CI runs as root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, nftables, cgroups, setuid); CI runs these as root")
	}
}

// requireLandlockNet skips tests that assert Landlock's TCP rules and
// signal scoping on kernels that lack them (ABI < 6).
func requireLandlockNet(t testing.TB) {
	t.Helper()
	if abi := landlockABI(); abi < 6 {
		t.Skipf("kernel Landlock ABI %d; these checks need ABI 6 (TCP rules, scoping)", abi)
	}
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// testBinary returns a copy of this test binary in a directory every UID
// can traverse: it runs as the router (1001) and the agent (1000), and the
// go test build directory is private to root.
func testBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			binErr = err
			return
		}
		// Not under /tmp: the agent gets a fresh tmpfs there.
		dir, err := os.MkdirTemp("/var/tmp", "kars-local-bin-")
		if err == nil {
			err = os.Chmod(dir, 0o755)
		}
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "local.test")
		data, err := os.ReadFile(self)
		if err == nil {
			err = os.WriteFile(binPath, data, 0o755)
		}
		binErr = err
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// newStateRoot makes a state root other UIDs can traverse, removed at the
// end of the test.
func newStateRoot(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "kars-local-state-")
	if err == nil {
		err = os.Chmod(d, 0o711)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func podID(prefix string) string {
	b := make([]byte, 3)
	rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// baseSpec is a pod of the stand-in router and an agent in the given role.
func baseSpec(t testing.TB, prefix, agentRole string, agentEnv ...string) Spec {
	bin := testBinary(t)
	return Spec{
		ID:        podID(prefix),
		StateRoot: newStateRoot(t),
		Router: Process{Path: bin, Env: []string{roleEnv + "=router"}, Files: map[string][]byte{
			"credential.json": []byte(`{"apiKey":"sk-test-secret"}`),
			"admin-token":     []byte("admin-secret"),
		}},
		RouterPorts: []uint16{9090},
		Agent:       Process{Path: bin, Env: append([]string{roleEnv + "=" + agentRole}, agentEnv...)},
		AgentPorts:  []uint16{18789},
		Limits:      Limits{MemoryBytes: 256 << 20, CPUMillis: 1000, PIDs: 256},
	}
}

func startPod(t testing.TB, s Spec) *Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := Start(ctx, s)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Stop(context.Background()); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return p
}

// probeResult waits for the probe's JSON line in the agent log.
func probeResult(t testing.TB, p *Pod) map[string]string {
	t.Helper()
	res, err := readProbe(p, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func readProbe(p *Pod, timeout time.Duration) (map[string]string, error) {
	agentLog, _ := p.Logs()
	deadline := time.Now().Add(timeout)
	find := func() (map[string]string, bool, error) {
		data, _ := os.ReadFile(agentLog)
		for _, line := range strings.Split(string(data), "\n") {
			if js, ok := strings.CutPrefix(line, "PROBE "); ok {
				var res map[string]string
				err := json.Unmarshal([]byte(js), &res)
				return res, true, err
			}
		}
		return nil, false, nil
	}
	for time.Now().Before(deadline) {
		if res, ok, err := find(); ok {
			return res, err
		}
		select {
		case <-p.Done():
			// The agent may have written its result and exited since
			// the last look.
			if res, ok, err := find(); ok {
				return res, err
			}
			data, _ := os.ReadFile(agentLog)
			return nil, fmt.Errorf("agent exited without a probe result: %+v\n%s", p.Status(), data)
		case <-time.After(20 * time.Millisecond):
		}
	}
	data, _ := os.ReadFile(agentLog)
	return nil, fmt.Errorf("no probe result in time:\n%s", data)
}

// upstream is a stand-in for an upstream on the host: TCP and UDP
// responders that answer "hello" to a line, on all host addresses.
type upstream struct{ tcpPort, udpPort int }

func startUpstream(t testing.TB) upstream {
	t.Helper()
	l, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				bufio.NewReader(c).ReadString('\n')
				io.WriteString(c, "hello\n")
			}()
		}
	}()
	// Port 53, as DNS would be; any free port when something holds it.
	pc, err := net.ListenPacket("udp4", "0.0.0.0:53")
	if err != nil {
		pc, err = net.ListenPacket("udp4", "0.0.0.0:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte("hello\n"), from)
		}
	}()
	return upstream{tcpPort: l.Addr().(*net.TCPAddr).Port, udpPort: pc.LocalAddr().(*net.UDPAddr).Port}
}

func (u upstream) env() []string {
	return []string{fmt.Sprintf("PROBE_UPSTREAM_TCP_PORT=%d", u.tcpPort), fmt.Sprintf("PROBE_UPSTREAM_UDP_PORT=%d", u.udpPort)}
}

// expect compares probe results: "ok" must be ok; any other want lists
// acceptable error substrings separated by "|" ("" accepts any error).
func expect(t *testing.T, res map[string]string, want map[string]string) {
	t.Helper()
	for k, w := range want {
		got, ok := res[k]
		switch {
		case !ok:
			t.Errorf("%s: no result", k)
		case w == "ok" && got != "ok":
			t.Errorf("%s: want success, got %q", k, got)
		case w != "ok" && (got == "ok" || !containsAny(got, strings.Split(w, "|"))):
			t.Errorf("%s: want failure containing %q, got %q", k, w, got)
		}
	}
}

// runControl runs the syscall probe outside any sandbox, as root, in a
// private mount namespace so its mount cannot touch the host.
func runControl(t *testing.T) map[string]string {
	t.Helper()
	target := t.TempDir()
	cmd := exec.Command(testBinary(t))
	cmd.Env = []string{roleEnv + "=probe", "PROBE_ONLY=syscalls", "PROBE_MOUNT_TARGET=" + target}
	cmd.SysProcAttr = controlAttr()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("control probe: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if js, ok := strings.CutPrefix(line, "PROBE "); ok {
			var res map[string]string
			if err := json.Unmarshal([]byte(js), &res); err != nil {
				t.Fatal(err)
			}
			return res
		}
	}
	t.Fatalf("control probe printed no result:\n%s", out)
	return nil
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
