// Package runtimes runs every runtime adapter shim (runtimes/<id>) with its
// real, pinned framework behind the real kars-router, in front of a fake
// model provider that speaks the provider's wire format and asks for tool
// calls. For each runtime it checks the runtime contract's promises: a tool
// runs only after the router allowed it; a denied tool does not run and the
// model sees the refusal; the upstream sees the router's credential, never
// the agent's; the audit chain holds the inference and tool entries and
// verifies; the budget ledger equals the upstream's usage.
//
// The environments are prepared with internal/runtimeenv into its cache
// (KARS_RUNTIME_CACHE, default /var/lib/kars/runtimes as root): the first
// run installs from the registries, later runs reuse them. The tests skip
// under -short, and skip when an environment cannot be prepared unless
// KARS_REQUIRE_RUNTIMES=1 (CI), where they fail.
package runtimes

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/budget"
	"github.com/kars-io/kars/internal/governance/toolpolicy"
	"github.com/kars-io/kars/internal/router"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
	"github.com/kars-io/kars/internal/runtimeenv"
	"github.com/kars-io/kars/runtimes"
)

// agentKey is what the agent's SDKs are given as their API key. The
// router must drop it; the upstream must never see it.
const agentKey = "sk-agent-key-that-must-never-leave-the-sandbox"

// upstreamKey is the router's credential for the fake provider.
const upstreamKey = "sk-upstream-router-credential-0123456789"

// policy allows inference, the calculator, and writing notes.txt only.
func policy() *karsv1.ToolPolicySpec {
	return &karsv1.ToolPolicySpec{Rules: []karsv1.ToolRule{
		{Name: "inference", Effect: karsv1.EffectAllow, Actions: []string{"inference:*"}},
		{Name: "calculator", Effect: karsv1.EffectAllow, Actions: []string{"tool:calculator"}},
		{Name: "notes-only", Effect: karsv1.EffectAllow, Actions: []string{"tool:write_file"},
			Conditions: []karsv1.ToolCondition{{Expression: `args.path == "notes.txt"`}}},
	}}
}

// prepared returns the runtime's environment, preparing it if needed.
func prepared(t *testing.T, id string) *runtimeenv.Env {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the real frameworks: not under -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	env, err := runtimeenv.Prepare(ctx, runtimeenv.Options{Progress: func(s string) { t.Log(s) }}, id)
	if err != nil {
		if os.Getenv("KARS_REQUIRE_RUNTIMES") == "1" {
			t.Fatal(err)
		}
		t.Skipf("%v (set KARS_REQUIRE_RUNTIMES=1 to fail instead)", err)
	}
	return env
}

// decideProbe wraps the router's agent API and, at each decide request for
// a write_file, notes whether the file it would write already exists —
// proving that an allowed tool ran only after its decision.
type decideProbe struct {
	next      http.Handler
	workspace string
	existed   map[string]bool
}

func (p *decideProbe) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == router.DecidePath {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		var req struct {
			Action string         `json:"action"`
			Args   map[string]any `json:"args"`
		}
		if json.Unmarshal(body, &req) == nil && req.Action == "tool:write_file" {
			path, _ := req.Args["path"].(string)
			_, err := os.Stat(filepath.Join(p.workspace, path))
			p.existed[path] = err == nil
		}
	}
	p.next.ServeHTTP(w, r)
}

type harness struct {
	t         *testing.T
	up        *upstream
	rt        *router.Router
	routerURL string
	auditDir  string
	workspace string
	probe     *decideProbe
}

func newHarness(t *testing.T, anthropic bool) *harness {
	h := &harness{t: t, up: newUpstream(t, upstreamKey), workspace: t.TempDir()}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "upstream-key")
	if err := os.WriteFile(keyFile, []byte(upstreamKey), 0o600); err != nil {
		t.Fatal(err)
	}
	target := routerconfig.Target{Provider: routerconfig.ProviderOpenAI, Model: "gpt-4.1", Endpoint: h.up.srv.URL + "/v1",
		Auth: &routerconfig.Auth{Mode: routerconfig.AuthAPIKey, KeyFile: keyFile}}
	if anthropic {
		target = routerconfig.Target{Provider: routerconfig.ProviderAnthropic, Model: "claude-sonnet-4-5", Endpoint: h.up.srv.URL,
			Auth: &routerconfig.Auth{Mode: routerconfig.AuthAPIKey, KeyFile: keyFile}}
	}
	c := routerconfigtest.Offline(t, dir)
	c.Sandbox = routerconfigtest.Sandbox("kars-rt", "bot")
	c.Models.Primary = target
	c.Budget = &routerconfig.Budget{Daily: 10_000_000}
	c.Governance = toolpolicy.FromSpec("kars-rt/bot-policy", policy())
	h.auditDir = c.Audit.Dir
	snap := routerconfigtest.Snapshot(t, c)
	sink, err := audit.Open(audit.Options{Dir: h.auditDir, Sandbox: "kars-rt/bot"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	led, err := budget.Open(c.StateDir, budget.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	h.rt, err = router.New(snap, router.Options{Audit: sink, Ledger: led, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	h.probe = &decideProbe{next: h.rt.AgentHandler(), workspace: h.workspace, existed: map[string]bool{}}
	srv := httptest.NewServer(h.probe)
	t.Cleanup(srv.Close)
	h.routerURL = srv.URL
	return h
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startShim runs the runtime's shim as the local substrate would, with the
// contract's environment, and waits for its health endpoint.
func (h *harness) startShim(env *runtimeenv.Env, extra ...string) string {
	t := h.t
	listen := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, env.Path, env.Args...)
	cmd.Dir = env.App
	cmd.Env = append([]string{
		"KARS_CONTRACT_VERSION=v1", "KARS_SANDBOX_NAME=bot", "KARS_SANDBOX_NAMESPACE=kars-rt", "KARS_AGENT_ID=kars-rt/bot",
		"KARS_RUNTIME_KIND=" + env.Runtime.Kind, "KARS_ROUTER_URL=" + h.routerURL, "KARS_WORKSPACE=" + h.workspace,
		"KARS_AGENT_LISTEN=" + listen, "KARS_INSTRUCTIONS=You are a test agent.",
		"OPENAI_BASE_URL=" + h.routerURL + "/v1", "OPENAI_API_KEY=" + agentKey,
		"AZURE_OPENAI_ENDPOINT=" + h.routerURL, "AZURE_OPENAI_API_KEY=" + agentKey,
		"ANTHROPIC_BASE_URL=" + h.routerURL, "ANTHROPIC_API_KEY=" + agentKey,
		"HOME=" + h.workspace, "TMPDIR=" + t.TempDir(), "PATH=/usr/local/bin:/usr/bin:/bin",
		"NO_PROXY=127.0.0.1,localhost",
	}, append(env.Environ, extra...)...)
	// The shim may start processes of its own (OpenClaw's gateway does):
	// the whole group goes when the test ends, as the pod's PID namespace
	// would.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("shim output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if ready(http.DefaultClient, "http://"+listen) == nil {
			return "http://" + listen
		}
		select {
		case <-done:
			t.Fatalf("the shim exited before serving:\n%s", out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the shim was not ready within 2 minutes:\n%s", out.String())
		}
	}
}

// ready is the contract's readiness check, as the substrates probe it:
// /readyz when the runtime serves it (OpenClaw's gateway answers /healthz
// while it still starts), else /healthz.
func ready(c *http.Client, base string) error {
	for _, p := range []string{"/readyz", "/healthz"} {
		resp, err := c.Get(base + p)
		if err != nil {
			return err
		}
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusNotFound && p == "/readyz":
			continue
		case resp.StatusCode != http.StatusOK:
			return fmt.Errorf("%s answered %d", p, resp.StatusCode)
		}
		return nil
	}
	return nil
}

// syncBuffer is a bytes.Buffer safe for the shim's two output streams.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// turn is the contract's chat answer.
type turn struct {
	Reply     string `json:"reply"`
	ToolCalls []struct {
		Name, Arguments, Decision, Reason, Result string
	} `json:"toolCalls"`
	Usage struct{ PromptTokens, CompletionTokens int64 } `json:"usage"`
}

func chat(t *testing.T, agent, message string) turn {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"session": "s1", "message": message})
	// OpenClaw's first turn waits for its gateway to finish starting.
	c := &http.Client{Timeout: 5 * time.Minute}
	resp, err := c.Post(agent+"/v1/chat", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("chat answered %d: %s", resp.StatusCode, raw)
	}
	var out turn
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("chat answer is not a turn: %s", raw)
	}
	return out
}

// runContract is the whole check for one runtime.
func runContract(t *testing.T, id string) {
	env := prepared(t, id)
	h := newHarness(t, id == "anthropic")
	agent := h.startShim(env)
	out := chat(t, agent, "write notes.txt, then secret.txt, then use the calculator for 6*7")
	t.Logf("turn: %+v", out)
	for _, r := range h.up.seenRequests() {
		t.Logf("upstream request %s results %q", r.path, r.results)
	}

	// The model saw each tool's outcome: the allowed write's result, the
	// refusal of the denied one, the calculator's 42.
	reqs := h.up.seenRequests()
	if len(reqs) != len(script)+1 {
		t.Fatalf("upstream saw %d requests, want %d (one per tool round and the answer)", len(reqs), len(script)+1)
	}
	final := reqs[len(reqs)-1].results
	if len(final) != 3 {
		t.Fatalf("the last request carried %d tool results, want 3: %q", len(final), final)
	}
	if !strings.Contains(final[0], "wrote") {
		t.Errorf("the allowed write's result did not reach the model: %q", final[0])
	}
	if !strings.Contains(final[1], "refused") || !strings.Contains(final[1], "deny") {
		t.Errorf("the model did not see the denial as the tool's error: %q", final[1])
	}
	if !strings.Contains(final[2], "42") {
		t.Errorf("the calculator's result did not reach the model: %q", final[2])
	}
	if !strings.Contains(out.Reply, "42") {
		t.Errorf("reply %q does not carry the calculator's 42", out.Reply)
	}

	// The allowed tool ran only after its decision; the denied one never ran.
	if existed, asked := h.probe.existed["notes.txt"]; !asked || existed {
		t.Errorf("notes.txt: decided %v, existed at decision time %v; want decided before it was written", asked, existed)
	}
	if b, err := os.ReadFile(filepath.Join(h.workspace, "notes.txt")); err != nil || string(b) != "allowed by policy" {
		t.Errorf("the allowed write did not happen: %q, %v", b, err)
	}
	if _, asked := h.probe.existed["secret.txt"]; !asked {
		t.Error("the denied write was never put to the router")
	}
	if _, err := os.Stat(filepath.Join(h.workspace, "secret.txt")); err == nil {
		t.Error("the denied tool ran: secret.txt exists")
	}
	decisions := map[string]string{}
	for _, c := range out.ToolCalls {
		decisions[c.Name+" "+c.Decision] += "x"
	}
	if decisions["write_file allow"] != "x" || decisions["write_file deny"] != "x" || decisions["calculator allow"] != "x" {
		t.Errorf("the turn's toolCalls %+v do not show the three decisions", out.ToolCalls)
	}

	// The upstream saw the router's credential, never the agent's.
	for _, r := range reqs {
		for k, vs := range r.header {
			for _, v := range vs {
				if strings.Contains(v, agentKey) {
					t.Fatalf("the agent's key reached the upstream in header %s", k)
				}
			}
		}
	}

	// The audit chain holds the inference and tool entries and verifies.
	deadline := time.Now().Add(10 * time.Second)
	for h.rt.InFlight() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	entries, err := router.AuditTail(h.auditDir, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range entries {
		if e.Action != audit.ActionOpen {
			actions = append(actions, e.Action+"="+e.Decision)
		}
	}
	want := map[string]int{"tool:write_file=allow": 1, "tool:write_file=deny": 1, "tool:calculator=allow": 1}
	got := map[string]int{}
	inferences := 0
	for _, a := range actions {
		if strings.HasPrefix(a, "inference:") {
			inferences++
		} else {
			got[a]++
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || inferences != len(reqs) {
		t.Errorf("audit actions %v: want %v and %d inference entries", actions, want, len(reqs))
	}
	rep, err := audit.Verify(h.auditDir, audit.VerifyOptions{})
	if err != nil || !rep.OK() {
		t.Fatalf("audit chain does not verify: %v %+v", err, rep)
	}

	// The budget is charged exactly what the upstream reported.
	st := h.rt.Ledger().State()
	if want := h.up.prompt.Load() + h.up.completion.Load(); st.DayUsed != want || st.DayReserved != 0 {
		t.Errorf("ledger used %d (reserved %d), upstream reported %d", st.DayUsed, st.DayReserved, want)
	}
	if out.Usage.PromptTokens != h.up.prompt.Load() || out.Usage.CompletionTokens != h.up.completion.Load() {
		t.Logf("note: the framework reported usage %+v, upstream %d/%d", out.Usage, h.up.prompt.Load(), h.up.completion.Load())
	}
}

func TestRuntimeContract(t *testing.T) {
	for _, id := range runtimes.MustLoad().IDs() {
		t.Run(id, func(t *testing.T) { runContract(t, id) })
	}
}
