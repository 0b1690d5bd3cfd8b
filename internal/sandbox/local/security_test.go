package local

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func controlAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
}

// TestAgentCannotEscape runs the probe as the agent of a real pod and
// checks every layer from the inside, next to the same probes succeeding
// where the policy allows them (router, its upstream, the workspace) and
// controls showing the blocked targets exist and answer.
func TestAgentCannotEscape(t *testing.T) {
	requireRoot(t)
	requireLandlockNet(t)
	up := startUpstream(t)
	s := baseSpec(t, "sec", "probe", append(up.env(), "PROBE_SERVE=1")...)
	routerDir := filepath.Join(s.StateRoot, s.ID, "router")
	cred, token := filepath.Join(routerDir, "credential.json"), filepath.Join(routerDir, "admin-token")
	// Another pod's router directory under the same state root: readable
	// for UID 1001 by file modes, so only Landlock keeps this router out.
	decoy := filepath.Join(s.StateRoot, "other-pod", "router", "credential.json")
	if err := os.MkdirAll(filepath.Dir(decoy), 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Dir(filepath.Dir(decoy)), 0o711)
	for _, p := range []string{filepath.Dir(decoy), decoy} {
		if p == decoy {
			os.WriteFile(decoy, []byte("other pod's key"), 0o600)
		}
		if err := os.Chown(p, RouterUID, RouterUID); err != nil {
			t.Fatal(err)
		}
	}
	s.Agent.Env = append(s.Agent.Env, "PROBE_SECRETS="+cred+","+token, "PROBE_ROUTER_READS="+cred+","+decoy)
	s.WorkspaceQuota = 64 << 20
	p := startPod(t, s)
	res := probeResult(t, p)

	const refused, denied, eperm = "connection refused", "permission denied", "operation not permitted"
	// TCP to a forbidden port stops at Landlock (EACCES) before a packet
	// exists; to the router's port on another address (::1) it passes
	// Landlock and the egress guard resets it.
	const blocked = refused + "|" + denied
	expect(t, res, map[string]string{
		// Allowed: the router, and through it the upstream on the host.
		"router":              "ok",
		"router-upstream-tcp": "ok",
		"router-upstream-udp": "ok",
		// The router reads its own credential, not another pod's.
		"router-read-" + cred:  "ok",
		"router-read-" + decoy: denied,
		// Everything else the agent tries on the network.
		"tcp-host":                blocked,
		"udp-host-dns":            "",
		"tcp-metadata":            blocked,
		"tcp-ipv6-loopback":       refused,
		"tcp-other-loopback-port": blocked,
		// The router's files.
		"read-" + cred:  "no such file",
		"read-" + token: "no such file",
		// Filesystem: readable root, writable workspace and scratch only.
		"read-system-file":          "ok",
		"write-/sandbox/probe-file": "ok",
		"write-/tmp/probe-file":     "ok",
		"write-/dev/shm/probe-file": "ok",
		"write-/etc/probe-file":     "",
		"write-/usr/probe-file":     "",
		"write-/probe-file":         "",
		"write-/var/tmp/probe-file": "",
		"ptrace":                    eperm,
		"unshare":                   eperm,
		"setns":                     eperm,
		"bpf":                       eperm,
		"mount":                     eperm,
		"socket-mptcp":              eperm,
		"bind-agent-port":           "ok",
		"bind-other-port":           denied,
		"pid-namespace":             "ok",
	})
	for k, want := range map[string]string{
		"status-Uid": "1000 1000 1000 1000", "status-CapEff": "0000000000000000", "status-CapPrm": "0000000000000000",
		"status-CapBnd": "0000000000000000", "status-CapAmb": "0000000000000000", "status-NoNewPrivs": "1",
		"status-Seccomp": "2", "leaked-fds": "", "hostname": s.ID,
	} {
		if res[k] != want {
			t.Errorf("%s = %q, want %q", k, res[k], want)
		}
	}
	if g := p.Guarantees; g.Rootless || len(g.Missing()) != 0 {
		t.Errorf("root pod guarantees: missing %v, notes %v", g.Missing(), g.Notes)
	}

	// Controls: the targets the agent could not reach are there. From the
	// pod's network namespace (as root, not UID 1000) they answer.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for addr, want := range map[string]string{"127.0.0.1:9090": "9090", "127.0.0.1:18789": "agent", "[::1]:8443": ""} {
		c, err := p.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Errorf("control: dial %s from the pod's namespace: %v", addr, err)
			continue
		}
		if want != "" {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			if strings.TrimSpace(line) != want {
				t.Errorf("control: %s said %q, want %q", addr, line, want)
			}
		}
		c.Close()
	}
	// The credential exists and is the router's alone.
	for _, f := range []string{cred, token} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatalf("control: %v", err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != 0o600 || st.Uid != RouterUID {
			t.Errorf("%s: mode %v owner %d, want 0600 owned by %d", f, fi.Mode().Perm(), st.Uid, RouterUID)
		}
	}
	// Control: by file modes alone UID 1001 could read the other pod's key.
	rd := exec.Command(testBinary(t))
	rd.Env = []string{roleEnv + "=readfile", "READ_PATH=" + decoy}
	rd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: RouterUID, Gid: RouterUID}}
	if out, err := rd.CombinedOutput(); err != nil {
		t.Errorf("control: uid %d outside Landlock cannot read %s: %v %s", RouterUID, decoy, err, out)
	}
	// Outside a sandbox the same system-call probes do not fail with EPERM.
	control := runControl(t)
	for _, k := range []string{"unshare", "mount"} {
		if control[k] != "ok" {
			t.Errorf("control %s outside the sandbox: %q, want ok", k, control[k])
		}
	}
	for _, k := range []string{"ptrace", "setns", "bpf"} {
		if strings.Contains(control[k], eperm) {
			t.Errorf("control %s outside the sandbox: %q, want a non-EPERM error", k, control[k])
		}
	}
	if control["pid-namespace"] == "ok" {
		t.Error("control: the host's /proc must show more than the pod's processes")
	}
}
