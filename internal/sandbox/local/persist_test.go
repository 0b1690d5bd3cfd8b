package local

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// routerCommand sends one line to the stand-in router's line protocol from
// the pod's network namespace and returns its answer.
func routerCommand(t *testing.T, p *Pod, line string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.DialContext(ctx, "tcp", "127.0.0.1:8443")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(c, line)
	got, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(got)
}

// The router's state outlives its pod. Before, the router's files lived
// in the pod's directory, which every stop removes — and the substrate
// stops and restarts a pod whose agent exits, so an agent could wipe its
// audit log, budget ledger, trust and quarantine by exiting.
func TestRouterStateSurvivesPodRestart(t *testing.T) {
	requireRoot(t)
	s := baseSpec(t, "persist", "sleep")
	s.RouterState = filepath.Join(s.StateRoot+"-routers", "router-state")
	if err := os.Mkdir(s.StateRoot+"-routers", 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(s.StateRoot + "-routers") })
	s.RouterStateLink = "var/lib/kars"
	routerDir := filepath.Join(s.StateRoot, s.ID, "router")
	marker := filepath.Join(routerDir, "var/lib/kars/audit-marker")

	p := startPod(t, s)
	if got := routerCommand(t, p, "WRITE "+marker); got != "ok" {
		t.Fatalf("the router cannot write its state: %s", got)
	}
	if err := p.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.StateRoot, s.ID)); !os.IsNotExist(err) {
		t.Fatalf("the pod's own directory should go with it: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(s.RouterState, "audit-marker"))
	if err != nil || string(data) != "router was here" {
		t.Fatalf("router state lost with the pod: %q %v", data, err)
	}
	p = startPod(t, s)
	if got := routerCommand(t, p, "READ "+marker); got != "ok" {
		t.Fatalf("the restarted router cannot read its state: %s", got)
	}
}

// Paths in Spec.Hide — another sandbox's workspace, the kars folders, a
// credentials file — are invisible to the agent, whatever their modes say
// (every agent is UID 1000).
func TestAgentCannotReadHiddenPaths(t *testing.T) {
	requireRoot(t)
	// Not under /tmp: the agent gets a fresh tmpfs there.
	root, err := os.MkdirTemp("/var/tmp", "kars-hide-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	os.Chmod(root, 0o755)
	otherWS := filepath.Join(root, "workspaces", "team", "other")
	kars := filepath.Join(root, "home", ".kars")
	bin := filepath.Join(kars, "bin")
	for _, d := range []string{otherWS, filepath.Join(kars, "dev", "cluster"), bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	secretWS := filepath.Join(otherWS, "notes.txt")
	kubeconfig := filepath.Join(kars, "dev", "cluster", "kubeconfig")
	creds := filepath.Join(kars, "credentials.json")
	visible := filepath.Join(bin, "tool")
	for p, mode := range map[string]os.FileMode{secretWS: 0o644, kubeconfig: 0o644, creds: 0o644, visible: 0o755} {
		if err := os.WriteFile(p, []byte("secret"), mode); err != nil {
			t.Fatal(err)
		}
		os.Chown(p, AgentUID, AgentUID) // the agent's own UID: only hiding keeps it out
	}
	hide := HidePaths([]string{filepath.Join(root, "workspaces"), kars}, []string{bin})
	if want := []string{filepath.Join(root, "workspaces"), creds, filepath.Join(kars, "dev")}; !sameSet(hide, want) {
		t.Fatalf("HidePaths = %v, want %v", hide, want)
	}
	probeEnv := "PROBE_SECRETS=" + strings.Join([]string{secretWS, kubeconfig, creds, visible}, ",")
	// Control: without hiding, UID 1000 reads all of them (this is what
	// every agent could do before).
	res := probeResult(t, startPod(t, baseSpec(t, "nohide", "fill", probeEnv)))
	for _, p := range []string{secretWS, kubeconfig, creds, visible} {
		if res["read-"+p] != "read 6 bytes" {
			t.Fatalf("control: %s: %q", p, res["read-"+p])
		}
	}
	s := baseSpec(t, "hide", "fill", probeEnv)
	s.Hide = hide
	res = probeResult(t, startPod(t, s))
	for _, p := range []string{secretWS, kubeconfig, creds} {
		if got := res["read-"+p]; !strings.Contains(got, "permission denied") && !strings.Contains(got, "no such file") {
			t.Errorf("hidden %s: %q", p, got)
		}
	}
	if res["read-"+visible] != "read 6 bytes" {
		t.Errorf("kept path: %q", res["read-"+visible])
	}
}

// The workspace quota turns a full disk into the agent's ENOSPC, and what
// it wrote stays across restarts.
func TestWorkspaceQuota(t *testing.T) {
	requireRoot(t)
	ws := filepath.Join(newStateRoot(t), "ws")
	if err := os.MkdirAll(ws, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(ws, "before.txt"), []byte("kept"), 0o644)
	os.Chown(ws, AgentUID, AgentUID)
	s := baseSpec(t, "quota", "fill", "PROBE_SECRETS=/sandbox/before.txt")
	s.Workspace, s.WorkspaceQuota = ws, 32<<20
	p := startPod(t, s)
	res := probeResult(t, p)
	filled, _ := strconv.ParseInt(res["filled"], 10, 64)
	if !strings.Contains(res["fill-error"], "no space left") || filled > 32<<20 || filled < 8<<20 {
		t.Fatalf("fill: %d bytes, %s; guarantees %+v", filled, res["fill-error"], p.Guarantees)
	}
	if res["read-/sandbox/before.txt"] != "read 4 bytes" {
		t.Fatalf("existing workspace files not carried into the image: %q", res["read-/sandbox/before.txt"])
	}
	if !p.Guarantees.WorkspaceQuota {
		t.Fatalf("guarantees: %+v", p.Guarantees)
	}
	p.Stop(context.Background())
	if m, _ := isMountPoint(ws); m {
		t.Fatal("workspace still mounted after the pod stopped")
	}
	st, err := os.Stat(WorkspaceImage(ws))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 32<<20 {
		t.Fatalf("image size %d", st.Size())
	}
	// The same workspace again: what the agent wrote is still there.
	s2 := baseSpec(t, "quota2", "sleep")
	s2.Workspace, s2.WorkspaceQuota = ws, 32<<20
	p = startPod(t, s2)
	if fi, err := os.Stat(filepath.Join(ws, "fill")); err != nil || fi.Size() != filled {
		t.Fatalf("workspace after restart: %v %v (want %d bytes)", fi, err, filled)
	}
	p.Stop(context.Background())
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
