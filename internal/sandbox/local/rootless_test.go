package local

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// rootlessReport is what the unprivileged runner prints for the test.
type rootlessReport struct {
	Err        string            `json:"err,omitempty"`
	Guarantees Guarantees        `json:"guarantees"`
	Probe      map[string]string `json:"probe"`
	Dial       map[string]string `json:"dial"`
	Left       bool              `json:"left"`
}

// rootlessRunner runs as an unprivileged user: it starts a pod (which
// takes the rootless path), collects the probe's findings and what the
// host can dial inside the pod, stops it and reports.
func rootlessRunner() {
	var rep rootlessReport
	defer func() {
		out, _ := json.Marshal(rep)
		fmt.Printf("ROOTLESS %s\n", out)
	}()
	bin, root := os.Getenv("RL_BIN"), os.Getenv("RL_STATE_ROOT")
	id := podID("rl")
	dir := filepath.Join(root, id, "router")
	s := Spec{
		ID: id, StateRoot: root,
		Router: Process{Path: bin, Env: []string{roleEnv + "=router"}, Files: map[string][]byte{
			"credential.json": []byte(`{"apiKey":"sk-test-secret"}`), "admin-token": []byte("admin-secret")}},
		RouterPorts: []uint16{9090},
		Agent: Process{Path: bin, Env: []string{roleEnv + "=probe", "PROBE_SERVE=1",
			"PROBE_UPSTREAM_TCP_PORT=" + os.Getenv("RL_TCP"), "PROBE_UPSTREAM_UDP_PORT=" + os.Getenv("RL_UDP"),
			"PROBE_SECRETS=" + filepath.Join(dir, "credential.json") + "," + filepath.Join(dir, "admin-token") + "," + os.Getenv("RL_USER_SECRET")}},
		AgentPorts: []uint16{18789},
		// The invoking user's kars home: readable by the agent's host UID
		// (the same user), so only hiding keeps it out.
		Hide: []string{os.Getenv("RL_HOME")},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := Start(ctx, s)
	if err != nil {
		rep.Err = err.Error()
		return
	}
	rep.Guarantees = p.Guarantees
	rep.Probe, err = readProbe(p, 20*time.Second)
	if err != nil {
		rep.Err = err.Error()
	}
	rep.Dial = map[string]string{}
	for _, addr := range []string{"127.0.0.1:18789", "127.0.0.1:9090"} {
		c, err := p.DialContext(ctx, "tcp", addr)
		if err != nil {
			rep.Dial[addr] = err.Error()
			continue
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		rep.Dial[addr] = strings.TrimSpace(line)
		c.Close()
	}
	if err := p.Stop(ctx); err != nil && rep.Err == "" {
		rep.Err = err.Error()
	}
	_, statErr := os.Stat(p.Dir)
	rep.Left = statErr == nil
}

// TestRootless runs a pod as an unprivileged user (UID 1000 via a
// re-exec with SysProcAttr.Credential) and checks which guarantees the
// user-namespace fallback keeps, from inside the agent.
func TestRootless(t *testing.T) {
	requireRoot(t)
	requireLandlockNet(t)
	up := startUpstream(t)
	root, err := os.MkdirTemp("", "kars-local-rootless-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chown(root, AgentUID, AgentUID); err != nil {
		t.Fatal(err)
	}
	// The invoking user's own secrets, outside the sandbox (~/.kars).
	home, err := os.MkdirTemp("/var/tmp", "kars-rootless-home-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	userSecret := filepath.Join(home, ".kars", "dev", "cluster", "kubeconfig")
	os.MkdirAll(filepath.Dir(userSecret), 0o700)
	os.WriteFile(userSecret, []byte("client-key-data: secret"), 0o600)
	filepath.Walk(home, func(p string, _ os.FileInfo, _ error) error { return os.Chown(p, AgentUID, AgentUID) })
	cmd := exec.Command(testBinary(t))
	cmd.Dir = "/"
	cmd.Env = []string{roleEnv + "=rootless", "RL_BIN=" + testBinary(t), "RL_STATE_ROOT=" + root,
		fmt.Sprintf("RL_TCP=%d", up.tcpPort), fmt.Sprintf("RL_UDP=%d", up.udpPort), "RL_HOME=" + home, "RL_USER_SECRET=" + userSecret}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: AgentUID, Gid: AgentUID}}
	out, err := cmd.CombinedOutput()
	var rep rootlessReport
	for _, line := range strings.Split(string(out), "\n") {
		if js, ok := strings.CutPrefix(line, "ROOTLESS "); ok {
			if err := json.Unmarshal([]byte(js), &rep); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err != nil || rep.Probe == nil && rep.Err == "" {
		t.Fatalf("rootless runner: %v\n%s", err, out)
	}
	if strings.Contains(rep.Err, "operation not permitted") && strings.Contains(rep.Err, "start pod init") {
		t.Skipf("unprivileged user namespaces are not allowed here: %s", rep.Err)
	}
	if rep.Err != "" {
		t.Fatalf("rootless pod: %s", rep.Err)
	}
	t.Logf("rootless guarantees missing %v; probe %v", rep.Guarantees.Missing(), rep.Probe)
	const blocked = "connection refused|permission denied|network is unreachable"
	const eperm = "operation not permitted"
	expect(t, rep.Probe, map[string]string{
		"router": "ok", "router-upstream-tcp": "ok", "router-upstream-udp": "ok",
		"tcp-host": blocked, "udp-host-dns": "", "tcp-metadata": blocked,
		"tcp-ipv6-loopback": blocked, "tcp-other-loopback-port": blocked,
		"read-system-file": "ok", "write-/sandbox/probe-file": "ok", "write-/tmp/probe-file": "ok",
		"write-/etc/probe-file": "", "write-/usr/probe-file": "", "write-/probe-file": "",
		"ptrace": eperm, "unshare": eperm, "setns": eperm, "bpf": eperm, "mount": eperm, "socket-mptcp": eperm,
		"bind-agent-port": "ok", "bind-other-port": "permission denied", "pid-namespace": "ok",
	})
	for k, v := range rep.Probe {
		if strings.HasPrefix(k, "read-/") && k != "read-system-file" && v == "ok" {
			t.Errorf("agent read the router's file %s", strings.TrimPrefix(k, "read-"))
		}
	}
	for k, want := range map[string]string{
		"status-CapEff": "0000000000000000", "status-CapPrm": "0000000000000000", "status-CapBnd": "0000000000000000",
		"status-NoNewPrivs": "1", "status-Seccomp": "2", "leaked-fds": "",
	} {
		if rep.Probe[k] != want {
			t.Errorf("%s = %q, want %q", k, rep.Probe[k], want)
		}
	}
	// Controls: from the host (through the pod init) both ports answer.
	if rep.Dial["127.0.0.1:18789"] != "agent" || rep.Dial["127.0.0.1:9090"] != "9090" {
		t.Errorf("DialContext into the rootless pod: %v", rep.Dial)
	}
	g := rep.Guarantees
	if _, ok := rep.Probe["read-"+userSecret]; !ok {
		t.Errorf("the probe did not try the user's secret")
	}
	if !g.Rootless || strings.Join(g.Missing(), ",") != "cgroup-limits,egress-guard,separate-uids,workspace-quota" || len(g.Notes) < 3 {
		t.Errorf("rootless guarantees: missing %v, notes %v", g.Missing(), g.Notes)
	}
	if rep.Left {
		t.Error("Stop left the state directory behind")
	}
}
