package local

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A sidecar (an MCP server under kars dev) listens in the pod's network
// namespace: the router's side reaches it on loopback, the agent cannot
// (egress guard and Landlock), and it dies with the pod.
func TestSidecarReachableByRouterNotAgent(t *testing.T) {
	requireRoot(t)
	python := "/usr/bin/python3"
	_, err := os.Stat(python)
	if err != nil {
		if os.Getenv("KARS_REQUIRE_INTEROP") == "1" {
			t.Fatal("python3 is not installed (CI installs it)")
		}
		t.Skip("python3 is not installed")
	}
	const port = 9311
	s := baseSpec(t, "side", "probe")
	// The agent waits for the sidecar, then tries to connect to it.
	s.Agent = Process{Path: python, Args: []string{"-c", fmt.Sprintf(`
import socket, time
time.sleep(2)
try:
    socket.create_connection(("127.0.0.1", %d), timeout=2)
    print("AGENT connected", flush=True)
except OSError as e:
    print("AGENT refused", e, flush=True)
time.sleep(3600)
`, port)}, Env: []string{"PATH=/usr/bin:/bin"}}
	p := startPod(t, s)
	sc, err := p.StartSidecar("everything", Process{Path: python,
		Args: []string{"-m", "http.server", "--bind", "127.0.0.1", fmt.Sprint(port)}, Env: []string{"PATH=/usr/bin:/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	// The router's side: a connection from inside the pod's network
	// namespace as any UID but the agent's.
	var got string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := p.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
		cancel()
		if err != nil {
			continue
		}
		fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
		got, _ = bufio.NewReader(c).ReadString('\n')
		c.Close()
		break
	}
	if !strings.HasPrefix(got, "HTTP/1.0 200") {
		log, _ := os.ReadFile(filepath.Join(p.Dir, "logs", "sidecar-everything.log"))
		t.Logf("sidecar log:\n%s", log)
		t.Fatalf("the sidecar did not answer inside the pod: %q", got)
	}
	agentLog, _ := p.Logs()
	var line string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline) && line == ""; time.Sleep(100 * time.Millisecond) {
		data, _ := os.ReadFile(agentLog)
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "AGENT ") {
				line = l
			}
		}
	}
	if !strings.HasPrefix(line, "AGENT refused") {
		t.Fatalf("the agent reached the sidecar: %q", line)
	}
	// The sidecar does not outlive its pod.
	if err := p.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the sidecar survived its pod")
	}
	if _, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
		t.Fatal("something still listens on the sidecar's port on the host")
	}
}
