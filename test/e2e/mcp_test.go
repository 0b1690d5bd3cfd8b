package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controlplane"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/router"
	"github.com/kars-io/kars/internal/testenv"
)

// startDev runs `kars dev` in a fresh home and returns the CLI and a
// client of its API server. kars dev runs once per machine: when its
// ports are taken by another test's kars dev, this waits for them.
func startDev(t *testing.T, env ...string) (*kars, client.Client) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	if os.Geteuid() != 0 {
		t.Skip("kars dev's local sandboxes need root (CI runs as root)")
	}
	assets, err := controlplane.AssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	if err := os.Chmod(home, 0o711); err != nil {
		t.Fatal(err)
	}
	k := &kars{t: t, bin: buildBinaries(t), dev: filepath.Join(home, "dev")}
	k.kube = filepath.Join(k.dev, "cluster", "kubeconfig")
	k.env = append(os.Environ(), "KARS_HOME="+home, "KUBECONFIG=", "OPENAI_API_KEY=", "AZURE_OPENAI_ENDPOINT=", "GITHUB_TOKEN=", "OLLAMA_HOST=")
	k.env = append(k.env, env...)
	t.Cleanup(func() {
		k.run("dev", "down")
		assertNothingLeft(t, k.dev)
		_ = os.RemoveAll(devenv.Paths{Dir: k.dev}.PodRoot())
	})
	for deadline := time.Now().Add(20 * time.Minute); ; time.Sleep(15 * time.Second) {
		out, code := k.run("dev", "--assets", assets)
		if code == 0 {
			break
		}
		if !strings.Contains(out, "address already in use") || time.Now().After(deadline) {
			t.Fatalf("kars dev: %s", out)
		}
		t.Log("another kars dev holds the ports; waiting")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", k.kube)
	if err != nil {
		t.Fatal(err)
	}
	ctrllog.SetLogger(logr.Discard())
	c, err := client.New(cfg, client.Options{Scheme: testenv.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return k, c
}

// routerNetns dials inside the network namespace of a sandbox's router,
// as the agent does (on 127.0.0.1:8443), but as root rather than UID 1000:
// the official clients stand in for an agent runtime.
func routerNetns(t *testing.T, sandbox string) (dial func(ctx context.Context, network, addr string) (net.Conn, error), nsPath string) {
	t.Helper()
	pid := processOf(t, sandbox, "kars-router")
	nsPath = fmt.Sprintf("/proc/%d/ns/net", pid)
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			return nil, err
		}
		defer self.Close()
		ns, err := os.Open(nsPath)
		if err != nil {
			return nil, err
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			return nil, err
		}
		defer unix.Setns(int(self.Fd()), unix.CLONE_NEWNET)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}, nsPath
}

// processOf finds the pid of a sandbox's process whose executable is
// base: the agent carries KARS_SANDBOX_NAME, the router its pod's folder
// (<pod root>/<name>-<hash>/router) in KARS_ROUTER_ROOT.
func processOf(t *testing.T, sandbox, base string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, p := range procs {
		exe, _ := os.Readlink(filepath.Join(filepath.Dir(p), "exe"))
		if filepath.Base(exe) != base {
			continue
		}
		env, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		mine := strings.Contains(string(env), "KARS_SANDBOX_NAME="+sandbox+"\x00")
		if base == "kars-router" {
			mine = strings.Contains(string(env), "/"+sandbox+"-") && strings.Contains(string(env), "KARS_ROUTER_ROOT=")
		}
		if mine {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	t.Fatalf("no %s process of sandbox %s", base, sandbox)
	return 0
}

// TestKarsDevMcpServer runs @modelcontextprotocol/server-everything as an
// McpServer under kars dev, inside dev-agent's pod: its tools are
// discovered through the router, the official Go SDK and Python SDK and
// kars-agent (with the offline model) reach it only through the router's
// gateway, the disallowed tool is invisible and refused, the server's
// bearer never reaches the agent side, and every call is in the audit log.
func TestKarsDevMcpServer(t *testing.T) {
	root, _ := filepath.Abs("../..")
	serverJS := filepath.Join(root, "test/interop/mcp/node_modules/@modelcontextprotocol/server-everything/dist/index.js")
	py := filepath.Join(root, "test/interop/mcp/.venv/bin/python")
	for _, p := range []string{serverJS, py} {
		if _, err := os.Stat(p); err != nil {
			if os.Getenv("KARS_REQUIRE_INTEROP") == "1" {
				t.Fatalf("%s missing: run test/interop/mcp/setup.sh", p)
			}
			t.Skip("test/interop/mcp/setup.sh has not run")
		}
	}
	k, c := startDev(t)
	ctx := context.Background()
	ns := "kars-dev-agent"
	var sb karsv1.KarsSandbox
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "dev-agent"}, &sb); err != nil {
		t.Fatal(err)
	}
	const bearer = "everything-bearer-that-only-the-router-holds"
	mustCreate(t, c, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "everything-token"}, StringData: map[string]string{"token": bearer}})
	mustCreate(t, c, &karsv1.McpServer{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "everything"}, Spec: karsv1.McpServerSpec{
		Image:   "docker.io/mcp/everything:2026.8.31",
		Command: []string{"node", serverJS}, Args: []string{"streamableHttp"}, Port: 3001,
		Sandboxes: []string{"dev-agent"}, Tools: []string{"echo", "get-sum", "get-env"},
		AuthSecretRef: &karsv1.SecretKeyReference{Name: "everything-token", Key: "token"}}})
	// The policy allows echo and get-sum; get-env is allowlisted on the
	// server but no rule allows it.
	var tp karsv1.ToolPolicy
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: sb.Spec.Governance.ToolPolicyRef.Name}, &tp); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(tp.DeepCopy())
	tp.Spec.Rules = append(tp.Spec.Rules, karsv1.ToolRule{Name: "everything", Effect: karsv1.EffectAllow,
		Actions: []string{"mcp:everything.echo", "mcp:everything.get-sum"}})
	if err := c.Patch(ctx, &tp, patch); err != nil {
		t.Fatal(err)
	}

	var m karsv1.McpServer
	deadline := time.Now().Add(4 * time.Minute)
	for {
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "everything"}, &m); err == nil && m.Status.Phase == "Ready" {
			break
		}
		if time.Now().After(deadline) {
			out, _ := k.run("status", "dev-agent")
			t.Fatalf("McpServer not Ready: %+v\n%s", m.Status, out)
		}
		time.Sleep(2 * time.Second)
	}
	t.Logf("McpServer everything: endpoint %s, discovered %v", m.Status.Endpoint, m.Status.DiscoveredTools)
	if m.Status.Endpoint != "http://127.0.0.1:3001/mcp" || !slices.Contains(m.Status.DiscoveredTools, "get-env") || !slices.Contains(m.Status.DiscoveredTools, "echo") {
		t.Fatalf("McpServer status %+v", m.Status)
	}

	// The official Go SDK, inside the pod's network namespace.
	dial, nsPath := routerNetns(t, "dev-agent")
	cs, err := sdk.NewClient(&sdk.Implementation{Name: "e2e-go-sdk", Version: "1"}, nil).Connect(ctx,
		&sdk.StreamableClientTransport{Endpoint: "http://127.0.0.1:8443/mcp/everything", HTTPClient: &http.Client{Transport: &http.Transport{DialContext: dial}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	lt, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range lt.Tools {
		names = append(names, tl.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"echo", "get-sum"}) {
		t.Fatalf("tools/list through the router = %v", names)
	}
	res, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "get-sum", Arguments: map[string]any{"a": 40, "b": 2}})
	if err != nil || res.IsError || !strings.Contains(res.Content[0].(*sdk.TextContent).Text, "42") {
		t.Fatalf("get-sum: %v %+v", err, res)
	}
	res, err = cs.CallTool(ctx, &sdk.CallToolParams{Name: "get-env"})
	if err != nil || !res.IsError || strings.Contains(fmt.Sprint(res.Content), bearer) {
		t.Fatalf("get-env: %v %+v", err, res)
	}

	// The official Python SDK, from a test script in the same namespace.
	out, err := exec.Command("nsenter", "--net="+nsPath, py, filepath.Join(root, "test/interop/mcp/client.py"),
		"http://127.0.0.1:8443/mcp/everything", "auto").CombinedOutput()
	if err != nil {
		t.Fatalf("python client: %v\n%s", err, out)
	}
	var pyOut struct{ Tools []string }
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &pyOut); err != nil || !slices.Equal(pyOut.Tools, []string{"echo", "get-sum"}) ||
		!strings.Contains(string(out), "hello from python") || strings.Contains(string(out), bearer) {
		t.Fatalf("python client: %s", out)
	}

	// kars-agent lists the MCP tools and the offline model calls echo.
	var reply string
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(3 * time.Second) {
		reply = k.must("connect", "dev-agent", "-m", "please use mcp__everything__echo with this very message")
		if strings.Contains(reply, "[tool mcp__everything__echo: allow]") || time.Now().After(deadline) {
			break
		}
	}
	if !strings.Contains(reply, "[tool mcp__everything__echo: allow]") || !strings.Contains(reply, "Echo:") {
		t.Fatalf("kars-agent did not call the MCP tool: %q", reply)
	}

	// The agent itself cannot reach the server past the router.
	agentPID := processOf(t, "dev-agent", "kars-agent")
	probe := exec.Command("nsenter", "--net=/proc/"+strconv.Itoa(agentPID)+"/ns/net", "--setuid=1000", "--setgid=1000",
		"python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 3001), timeout=3); print('CONNECTED')")
	if out, _ := probe.CombinedOutput(); strings.Contains(string(out), "CONNECTED") {
		t.Fatal("UID 1000 in the pod reached the MCP server directly")
	}

	// Every call is on record, and the chain verifies.
	entries, err := router.AuditTail(filepath.Join(devenv.Paths{Dir: k.dev}.RouterStates(), ns, "dev-agent", "audit"), 10000)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		if e.Attrs["op"] == "mcp" {
			got = append(got, e.Action+" "+e.Decision)
		}
	}
	for _, want := range []string{"mcp:everything.get-sum allow", "mcp:everything.get-env deny", "mcp:everything.echo allow"} {
		if !slices.Contains(got, want) {
			t.Errorf("audit lacks %q: %v", want, got)
		}
	}
	if out := k.must("audit", "verify", "dev-agent"); !strings.Contains(strings.ToLower(out), "ok") && !strings.Contains(strings.ToLower(out), "verified") {
		t.Errorf("audit verify: %s", out)
	}
}

func mustCreate(t *testing.T, c client.Client, obj client.Object) {
	t.Helper()
	if err := c.Create(context.Background(), obj); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}
