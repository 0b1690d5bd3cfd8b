// Package e2e drives the kars binaries end to end, as a user would.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/kars-io/kars/internal/controlplane"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/devenv/devlock"
	"github.com/kars-io/kars/internal/inference/fakeprovider"
)

// kars runs the CLI built for this test with the test's environment.
type kars struct {
	t    testing.TB
	bin  string
	env  []string
	dev  string
	kube string
}

func (k *kars) run(args ...string) (string, int) {
	k.t.Helper()
	return k.runStdin("", args...)
}

func (k *kars) runStdin(stdin string, args ...string) (string, int) {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(k.bin, "kars"), args...)
	cmd.Env = k.env
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		k.t.Fatalf("kars %v: %v", args, err)
	}
	k.t.Logf("$ kars %s  (exit %d)\n%s", strings.Join(args, " "), code, out.String())
	return out.String(), code
}

func (k *kars) must(args ...string) string {
	k.t.Helper()
	out, code := k.run(args...)
	if code != 0 {
		k.t.Fatalf("kars %s exited %d:\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// buildBinaries compiles the kars programs the way `make build` does. Every
// test that starts kars dev calls it first, so it also takes the machine's
// kars dev lock for the test (test/interop/a2a starts kars dev too).
func buildBinaries(t testing.TB) string {
	t.Helper()
	devlock.Hold(t, 40*time.Minute)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	// Not under /tmp: the agent's /tmp is a private tmpfs, so it could not
	// see a program there.
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin, err := os.MkdirTemp(filepath.Join(root, "bin"), "e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(bin) })
	cmd := exec.Command("go", "build", "-o", bin+"/", "./cmd/kars", "./cmd/kars-router", "./cmd/kars-agent")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	// The router (UID 1001) and the agent (UID 1000) must be able to run
	// what the test built.
	for _, d := range []string{bin, filepath.Dir(bin)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

// hostAddr is an address of this host that a pod's router reaches through
// its link and the host's NAT (not loopback: that is the pod's own).
func hostAddr(t *testing.T) string {
	t.Helper()
	ifs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range ifs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() && !strings.HasPrefix(ipn.IP.String(), "10.213.") {
			return ipn.IP.String()
		}
	}
	t.Skip("no non-loopback IPv4 address for the fake upstream")
	return ""
}

// TestKarsDev is the main job end to end: kars dev from nothing, a chat with
// dev-agent (with a policy-decided tool call), a second sandbox on a real
// OpenAI-compatible upstream that hot-swaps its model without a restart and
// then runs out of budget, the audit chain verified, and kars dev down
// leaving nothing behind.
func TestKarsDev(t *testing.T) {
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
	t.Cleanup(func() {
		k.run("dev", "down")
		assertNothingLeft(t, k.dev)
		_ = os.RemoveAll(devenv.Paths{Dir: k.dev}.PodRoot())
	})

	start := time.Now()
	out := k.must("dev", "--assets", assets)
	t.Logf("kars dev ready in %s", time.Since(start).Round(time.Millisecond))
	for _, want := range []string{"kube-apiserver", "dev-agent", "OFFLINE", "kars connect dev-agent"} {
		if !strings.Contains(out, want) {
			t.Errorf("kars dev output lacks %q", want)
		}
	}
	// A second `kars dev` finds it running.
	if out := k.must("dev"); !strings.Contains(out, "already running") {
		t.Errorf("second kars dev: %q", out)
	}

	out = k.must("connect", "dev-agent", "-m", "hello there")
	if !strings.Contains(out, "[kars-offline]") || !strings.Contains(out, "hello there") {
		t.Fatalf("offline chat reply unexpected: %q", out)
	}
	out = k.must("connect", "dev-agent", "-m", "use the calculator for 6*7")
	if !strings.Contains(out, "[tool calculator: allow]") || !strings.Contains(out, "42") {
		t.Fatalf("tool call reply unexpected: %q", out)
	}

	// A second sandbox in front of a real OpenAI-compatible upstream on this
	// host, with a budget that a few calls exhaust.
	fake := fakeprovider.New()
	l, err := net.Listen("tcp", net.JoinHostPort(hostAddr(t), "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: fake, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	endpoint := "http://" + l.Addr().String() + "/v1"
	k.must("add", "tiny", "--runtime", "kars-agent", "--provider", "OpenAICompatible", "--endpoint", endpoint,
		"--model", "model-one", "--token-budget-daily", "2000", "--isolation", "enhanced")
	// The upstream's key goes to the router only, through the sandbox's
	// credentials Secret.
	if out, code := k.runStdin(fake.APIKey+"\n", "credentials", "set", "tiny", "--provider", "OpenAICompatible",
		"--endpoint", endpoint, "--model", "model-one", "--api-key-stdin"); code != 0 {
		t.Fatalf("credentials set: %s", out)
	}
	waitStatus(t, k, "tiny", "Running")

	turn := chatJSON(t, k, "tiny", "first question")
	if turn.Model != "model-one" {
		t.Fatalf("tiny answered with model %q, want model-one", turn.Model)
	}
	podBefore := agentStart(t, k, "tiny")
	k.must("model", "set", "tiny", "model-two")
	deadline := time.Now().Add(90 * time.Second)
	for {
		turn = chatJSON(t, k, "tiny", "second question")
		if turn.Model == "model-two" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("model still %q 90s after kars model set", turn.Model)
		}
		time.Sleep(time.Second)
	}
	if after := agentStart(t, k, "tiny"); after != podBefore {
		t.Fatalf("the model swap restarted the pod (agent started %s, now %s)", podBefore, after)
	}

	var code int
	for i := 0; i < 40; i++ {
		if out, code = k.run("connect", "tiny", "-m", fmt.Sprintf("question %d", i)); code != 0 {
			break
		}
	}
	if code != 3 || !strings.Contains(strings.ToLower(out), "budget") {
		t.Fatalf("tiny never hit its budget with a 429 (last exit %d): %q", code, out)
	}
	if n := fake.Requests.Load(); n == 0 {
		t.Fatal("the upstream saw no requests")
	}

	out = k.must("audit", "tail", "dev-agent")
	if !strings.Contains(out, "tool:calculator") || !strings.Contains(out, "inference:") {
		t.Errorf("audit tail lacks the calls made: %q", out)
	}
	for _, sb := range []string{"dev-agent", "tiny"} {
		if out := k.must("audit", "verify", sb); !regexp.MustCompile(`(?i)ok|verified`).MatchString(out) {
			t.Errorf("audit verify %s: %q", sb, out)
		}
	}

	// An agent that exits gets a new pod; its router's state does not go
	// with the old one. (Before, the router's files lived in the pod's
	// folder: an agent could wipe its audit log and budget by exiting.)
	entries := func() int {
		m := regexp.MustCompile(`(\d+) entries`).FindStringSubmatch(k.must("audit", "verify", "tiny"))
		if m == nil {
			t.Fatal("audit verify reports no entry count")
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	before, oldAgent := entries(), agentStart(t, k, "tiny")
	pid, _ := strconv.Atoi(strings.Split(oldAgent, "@")[0])
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(2 * time.Minute)
	for {
		out, code := k.run("connect", "tiny", "-m", "still over budget?")
		if code == 3 && strings.Contains(strings.ToLower(out), "budget") {
			break // restarted, and still refused: the ledger survived
		}
		if time.Now().After(deadline) {
			t.Fatalf("tiny after its agent was killed: exit %d %q", code, out)
		}
		time.Sleep(2 * time.Second)
	}
	if agentStart(t, k, "tiny") == oldAgent {
		t.Fatal("the killed agent was not restarted")
	}
	if after := entries(); after <= before {
		t.Fatalf("audit log has %d entries after the restart, %d before: it was reset", after, before)
	}
}

type turnJSON struct {
	Reply string `json:"reply"`
	Model string `json:"model"`
}

func chatJSON(t *testing.T, k *kars, name, msg string) turnJSON {
	t.Helper()
	out := k.must("connect", name, "-m", msg, "--json")
	var tj turnJSON
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &tj); err != nil {
		t.Fatalf("chat JSON: %v\n%s", err, out)
	}
	return tj
}

func waitStatus(t *testing.T, k *kars, name, phase string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		out, _ := k.run("status", name)
		if strings.Contains(out, "Phase:       "+phase) && strings.Contains(out, "enforced by the router") {
			return
		}
		time.Sleep(2 * time.Second)
	}
	t.Fatalf("%s not %s with its config enforced within 3m", name, phase)
}

// agentStart identifies the running agent process of a sandbox by its pid
// and start time (field 22 of /proc/<pid>/stat): a restart changes both.
func agentStart(t *testing.T, k *kars, name string) string {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	var found []string
	for _, p := range procs {
		env, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(env, []byte("KARS_SANDBOX_NAME="+name+"\x00")) {
			continue
		}
		dir := filepath.Dir(p)
		exe, _ := os.Readlink(filepath.Join(dir, "exe"))
		if filepath.Base(exe) != "kars-agent" {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			continue
		}
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		found = append(found, filepath.Base(dir)+"@"+fields[19])
	}
	if len(found) != 1 {
		t.Fatalf("want one kars-agent process for %s, found %v", name, found)
	}
	return found[0]
}

// assertNothingLeft checks that kars dev down left no local pod, netns, nft
// table or process.
func assertNothingLeft(t *testing.T, dev string) {
	t.Helper()
	if m, _ := filepath.Glob(filepath.Join(devenv.Paths{Dir: dev}.Sandboxes(), "*", "state.json")); len(m) > 0 {
		t.Errorf("pods left after kars dev down: %v", m)
	}
	// Only this test's pods: other packages' tests make tables of their own.
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := conn.ListTables()
	if err != nil {
		t.Fatalf("list nftables tables: %v", err)
	}
	for _, tb := range tables {
		if strings.HasPrefix(tb.Name, "kars-dev-agent-") || strings.HasPrefix(tb.Name, "kars-tiny-") {
			t.Errorf("nftables table %s left after kars dev down", tb.Name)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		cmdline, err := os.ReadFile(p)
		if err == nil && bytes.Contains(cmdline, []byte(dev)) {
			t.Errorf("process left after kars dev down: %s", bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
		}
	}
}
