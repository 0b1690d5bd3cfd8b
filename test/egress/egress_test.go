// Package egress runs real clients — curl, Python httpx and requests, and
// Node's built-in fetch, which ignores proxy variables — as the agent of a
// real local sandbox (internal/sandbox/local: network namespace, egress
// guard, Landlock, seccomp) in front of the real kars-router binary, and
// checks what reaches the test hosts, what is refused and how, what the
// router's audit log says, and that nothing reaches the agent from outside
// the pod. The test hosts run in a network namespace the test creates.
//
// Needs root (CI runs as root) and the Python clients of setup.sh; without
// them the test skips, unless KARS_REQUIRE_EGRESS_CLIENTS=1 (CI).
package egress

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/router"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/sandbox/local"
)

func TestMain(m *testing.M) {
	local.InitMain()
	os.Exit(m.Run())
}

// need skips (or, in CI, fails) when a prerequisite is missing.
func need(t *testing.T, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("KARS_REQUIRE_EGRESS_CLIENTS") == "1" {
		t.Fatalf("%s (run test/egress/setup.sh)", what)
	}
	t.Skip(what)
}

// buildRouter builds kars-router where UID 1001 can run it.
func buildRouter(t *testing.T) string {
	root, _ := filepath.Abs("../..")
	dir, err := os.MkdirTemp("/var/tmp", "kars-egress-bin-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/kars-router")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build kars-router: %v\n%s", err, out)
	}
	return filepath.Join(dir, "kars-router")
}

func TestRealClientsThroughTheRouter(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real sandbox")
	}
	if os.Geteuid() != 0 {
		t.Skip("local sandboxes need root (CI runs as root)")
	}
	python, _ := filepath.Abs(".venv/bin/python")
	_, err := os.Stat(python)
	need(t, err == nil, "no test/egress/.venv")
	for _, tool := range []string{"curl", "node"} {
		_, err := exec.LookPath(tool)
		need(t, err == nil, tool+" is not installed")
	}
	hosts := startHosts(t)
	routerBin := buildRouter(t)

	stateRoot, err := os.MkdirTemp("", "kars-egress-state-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(stateRoot, 0o711)
	t.Cleanup(func() { os.RemoveAll(stateRoot) })
	id := fmt.Sprintf("egress-%d", time.Now().UnixNano()%1000000)
	routerDir := filepath.Join(stateRoot, id, "router")
	cfg := &routerconfig.Config{
		SchemaVersion: routerconfig.SchemaVersion,
		Sandbox:       routerconfig.Sandbox{Namespace: "kars-egress", Name: "bot", AgentID: "kars-egress/bot"},
		Models:        routerconfig.Models{Primary: routerconfig.Target{Provider: routerconfig.ProviderOffline, Model: "kars-offline"}},
		Egress: &routerconfig.Egress{
			Mode: routerconfig.EgressStrict,
			// blocked.kars.test is listed too: the blocklist wins.
			AllowedHosts:      []string{"allowed.kars.test", "allowed.kars.test:80", "blocked.kars.test", "meta.kars.test", "private.kars.test"},
			Blocklist:         &routerconfig.Blocklist{Sources: []routerconfig.BlocklistSource{{File: "/blocklist.txt"}}},
			TransparentListen: "127.0.0.1:15001", DNSListen: "127.0.0.1:15053",
			Resolvers: []string{dnsIP + ":53"},
		},
		Audit:    routerconfig.Audit{Dir: "/audit"},
		Admin:    routerconfig.Admin{Listen: "127.0.0.1:8444", TokenFile: "/admin-token"},
		StateDir: "/state",
	}
	raw, err := routerconfig.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	agentFiles := map[string][]byte{"ca.pem": hosts.caPEM}
	for _, f := range []string{"probe.sh", "dns.py", "clients.py", "fetch.mjs"} {
		b, err := os.ReadFile(filepath.Join("agent", f))
		if err != nil {
			t.Fatal(err)
		}
		agentFiles[f] = b
	}
	proxyURL := "http://127.0.0.1:8443"
	spec := local.Spec{
		ID: id, StateRoot: stateRoot,
		Router: local.Process{Path: routerBin, Args: []string{"-config", "/router.json"},
			Env: []string{routerconfig.EnvRoot + "=" + routerDir},
			Files: map[string][]byte{"router.json": raw, "admin-token": []byte("admin-token"),
				"blocklist.txt": []byte("# test blocklist\nblocked.kars.test\n"),
				"audit/.keep":   nil, "state/.keep": nil}},
		RouterPorts: []uint16{8444},
		Agent: local.Process{Path: "/bin/sh", Args: []string{"/sandbox/probe.sh"}, Files: agentFiles,
			Env: []string{"PATH=/usr/bin:/bin", "HOME=/sandbox", "PYTHON=" + python,
				"HTTP_PROXY=" + proxyURL, "HTTPS_PROXY=" + proxyURL, "http_proxy=" + proxyURL, "https_proxy=" + proxyURL,
				"NO_PROXY=127.0.0.1,localhost", "no_proxy=127.0.0.1,localhost", "NODE_EXTRA_CA_CERTS=/sandbox/ca.pem"}},
		AgentPorts: []uint16{18789},
		Limits:     local.Limits{MemoryBytes: 512 << 20, PIDs: 512},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pod, err := local.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pod.Stop(context.Background()) })
	agentLog, routerLog := pod.Logs()
	results := waitProbes(t, agentLog, routerLog)

	type want struct {
		ok   bool
		text string
	}
	hello := "hello from allowed.kars.test"
	for name, w := range map[string]want{
		// Explicit proxy (HTTPS_PROXY / http_proxy): curl.
		"curl-explicit-https":  {true, hello},
		"curl-explicit-http":   {true, hello},
		"curl-blocked":         {false, "403"},
		"curl-unlisted":        {false, "403"},
		"curl-port-mismatch":   {false, "403"},
		"curl-rebind-metadata": {false, "403"},
		"curl-rebind-private":  {false, "403"},
		// Transparent (the guard redirects): curl ignoring the proxy.
		"curl-transparent-https":          {true, hello},
		"curl-transparent-http":           {true, hello},
		"curl-transparent-unlisted":       {false, "Could not resolve host"},
		"curl-transparent-unlisted-by-ip": {false, "access denied"},
		"curl-transparent-port-mismatch":  {false, "access denied"},
		// DNS through the router's stub.
		"dns-allowed":            {true, allowedIP},
		"dns-unlisted":           {false, "gaierror"},
		"dns-blocked":            {false, "gaierror"},
		"dns-metadata":           {false, "gaierror"},
		"dns-private":            {false, "gaierror"},
		"dns-direct-to-resolver": {true, "rcode 3"},
		// Python clients, proxy from the environment.
		"httpx-allowed":       {true, "200 " + hello},
		"httpx-unlisted":      {false, "ProxyError"},
		"httpx-port-mismatch": {false, "403"},
		"requests-allowed":    {true, "200 " + hello},
		"requests-blocked":    {false, "403"},
		// Node's fetch ignores proxy variables: transparent.
		"node-fetch-allowed":       {true, "200 " + hello},
		"node-fetch-unlisted":      {false, "ENOTFOUND"},
		"node-fetch-blocked-by-ip": {false, "fetch failed"},
		"node-fetch-port-mismatch": {false, "fetch failed"},
	} {
		r, ok := results[name]
		if !ok {
			t.Errorf("%s: no result", name)
			continue
		}
		if (r.rc == "0") != w.ok || !strings.Contains(r.out, w.text) {
			t.Errorf("%s: exit %s %q; want success=%v with %q", name, r.rc, r.out, w.ok, w.text)
		}
	}
	for _, name := range []string{"dns-metadata", "dns-private", "curl-rebind-metadata"} {
		if strings.Contains(results[name].out, "169.254") || strings.Contains(results[name].out, "10.99") {
			t.Errorf("%s leaked a refused address: %q", name, results[name].out)
		}
	}
	// No agent packet reached the real resolver: the query sent straight
	// at it was answered by the stub, which never forwards refused names.
	if hosts.asked("tunnel-probe.kars.test") || hosts.asked("unlisted.kars.test") {
		t.Errorf("the test resolver saw agent queries: %v", hosts.queries)
	}
	if !hosts.asked("allowed.kars.test") {
		t.Errorf("control: the router never resolved allowed.kars.test (queries %v)", hosts.queries)
	}
	// Controls: the refused hosts exist and answer the router's UID's
	// peers — from the host namespace, not the agent.
	for _, addr := range []string{blockedIP + ":443", unlistedIP + ":443", allowedIP + ":8443"} {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Errorf("control: %s does not answer from the host: %v", addr, err)
			continue
		}
		c.Close()
	}

	// Inbound: the agent listens on every address of the pod, yet only the
	// pod itself reaches it.
	podAddr := podAddress(t, pod)
	if c, err := net.DialTimeout("tcp", podAddr+":18789", 2*time.Second); err == nil {
		c.Close()
		t.Errorf("the agent's port %s:18789 is reachable from outside the pod", podAddr)
	}
	ctrl, err := pod.DialContext(ctx, "tcp", "127.0.0.1:18789")
	if err != nil {
		t.Errorf("control: the agent's port from inside the pod: %v", err)
	} else {
		line, _ := bufio.NewReader(ctrl).ReadString('\n')
		ctrl.Close()
		if line != "agent\n" {
			t.Errorf("control: the agent said %q", line)
		}
	}

	// The router audited each decision, with the step that decided.
	entries, err := router.AuditTail(filepath.Join(routerDir, "audit"), 1000)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range entries {
		if e.Attrs["op"] == "egress" {
			seen[e.Action+" "+e.Decision+" "+e.Attrs["step"]+" "+e.Attrs["via"]] = true
		}
	}
	for _, w := range []string{
		"egress:allowed.kars.test:443 allow allowlist connect",
		"egress:allowed.kars.test:80 allow allowlist http",
		"egress:allowed.kars.test:443 allow allowlist transparent-tls",
		"egress:allowed.kars.test:80 allow allowlist transparent-http",
		"egress:blocked.kars.test:443 deny blocklist connect",
		"egress:unlisted.kars.test:443 deny default connect",
		"egress:unlisted.kars.test:443 deny default transparent-tls",
		"egress:allowed.kars.test:8443 deny default connect",
		"egress:allowed.kars.test:8443 deny default transparent-tls",
		"egress:meta.kars.test:443 deny address connect",
		"egress:private.kars.test:443 deny address connect",
		"egress:203.0.113.11:443 deny default transparent-tcp",
	} {
		if !seen[w] {
			t.Errorf("no audit entry %q", w)
		}
	}
	if t.Failed() {
		rb, _ := os.ReadFile(routerLog)
		t.Logf("router log:\n%s", rb)
		var keys []string
		for k := range seen {
			keys = append(keys, k)
		}
		t.Logf("audited: %v", keys)
	}
	rep, err := audit.Verify(filepath.Join(routerDir, "audit"), audit.VerifyOptions{})
	if err != nil || rep.Entries < uint64(len(seen)) {
		t.Errorf("audit chain: %+v %v", rep, err)
	}
}

type result struct{ rc, out string }

// waitProbes waits for the agent's "PROBES DONE" and parses its RESULT
// lines.
func waitProbes(t *testing.T, agentLog, routerLog string) map[string]result {
	t.Helper()
	deadline := time.Now().Add(4 * time.Minute)
	for {
		b, _ := os.ReadFile(agentLog)
		if strings.Contains(string(b), "PROBES DONE") {
			out := map[string]result{}
			for _, line := range strings.Split(string(b), "\n") {
				rest, ok := strings.CutPrefix(line, "RESULT ")
				if !ok {
					continue
				}
				f := strings.SplitN(rest, " ", 3)
				for len(f) < 3 {
					f = append(f, "")
				}
				out[f[0]] = result{rc: f[1], out: f[2]}
			}
			t.Logf("agent log:\n%s", b)
			return out
		}
		if time.Now().After(deadline) {
			rb, _ := os.ReadFile(routerLog)
			t.Fatalf("the agent did not finish its probes:\n%s\nrouter log:\n%s", b, rb)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// podAddress reads the pod's address on its link from its state record.
func podAddress(t *testing.T, pod *local.Pod) string {
	b, err := os.ReadFile(filepath.Join(pod.Dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Link struct {
			PodAddr string `json:"podAddr"`
		} `json:"link"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Link.PodAddr == "" {
		t.Fatalf("state.json: %v %s", err, b)
	}
	return st.Link.PodAddr
}
