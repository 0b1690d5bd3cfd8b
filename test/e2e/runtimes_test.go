package e2e

import (
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/runtimeenv"
)

// runtimeSandboxes are the sandboxes of TestKarsDevRuntimes: one per
// runtime kind, created as a user would, plus `kars add analyst` with no
// runtime flag (OpenClaw, the default).
// The offline model speaks the OpenAI and Anthropic dialects, so every
// kind runs without credentials.
var runtimeSandboxes = []struct {
	name string
	args []string
}{
	{"analyst", nil},
	{"rt-oai", []string{"--runtime", "openai-agents"}},
	{"rt-maf", []string{"--runtime", "microsoft-agent-framework"}},
	{"rt-lgpy", []string{"--runtime", "langgraph"}},
	{"rt-lgts", []string{"--runtime", "langgraph", "--language", "typescript"}},
	{"rt-pyd", []string{"--runtime", "pydantic-ai"}},
	{"rt-anth", []string{"--runtime", "anthropic"}},
}

// TestKarsDevRuntimes runs every first-class runtime under kars dev with
// the offline model, as root (as CI does): each sandbox reaches Running
// with its config enforced and answers "use the calculator for 6*7" with
// 42 through a policy-decided tool call — and so does a BYO image pushed
// to a registry, unpacked as its agent's root; a second sandbox of a kind reuses
// the cached environment; kars dev down leaves nothing behind.
//
// Environments come from the runtime cache (KARS_RUNTIME_CACHE, default
// /var/lib/kars/runtimes): warm it first (test/runtimes does) or this test
// installs them, which takes minutes.
func TestKarsDevRuntimes(t *testing.T) {
	k, _ := startDev(t)

	// A BYO image from a registry (kars dev's own, reached like any
	// other): unpacked as the agent's read-only root.
	const byoRef = "127.0.0.1:16500/acme/support-bot:v1"
	pushBYOImage(t, byoRef)
	sandboxes := append(slices.Clone(runtimeSandboxes), struct {
		name string
		args []string
	}{"rt-byo", []string{"--runtime", "byo", "--byo-image", byoRef}})

	created := map[string]time.Time{}
	for _, sb := range sandboxes {
		k.must(append([]string{"add", sb.name}, sb.args...)...)
		created[sb.name] = time.Now()
	}
	var wg sync.WaitGroup
	for _, sb := range sandboxes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			waitStatusWithin(t, k, sb.name, "Running", 15*time.Minute)
			t.Logf("%s Running %s after kars add", sb.name, time.Since(created[sb.name]).Round(time.Second))
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, sb := range sandboxes {
		out := connectRetry(t, k, sb.name, "use the calculator for 6*7")
		if !strings.Contains(out, "[tool calculator: allow]") || !strings.Contains(out, "42") {
			t.Errorf("%s: the calculator's 42 is not in the reply: %q", sb.name, out)
		}
	}

	// A second sandbox of a kind reuses the cached environment: nothing new
	// appears in the cache.
	before := cacheDirs(t)
	k.must("add", "rt-oai-2", "--runtime", "openai-agents")
	waitStatusWithin(t, k, "rt-oai-2", "Running", 3*time.Minute)
	if after := cacheDirs(t); !slices.Equal(before, after) {
		t.Errorf("the second openai-agents sandbox changed the runtime cache: %v → %v", before, after)
	}
	if out := connectRetry(t, k, "rt-oai-2", "use the calculator for 6*7"); !strings.Contains(out, "42") {
		t.Errorf("rt-oai-2: %q", out)
	}
	for _, sb := range []string{"analyst", "rt-pyd"} {
		out := k.must("audit", "tail", sb)
		if !strings.Contains(out, "tool:calculator") || !strings.Contains(out, "inference:") {
			t.Errorf("audit tail %s lacks the calls made: %q", sb, out)
		}
	}
}

func waitStatusWithin(t *testing.T, k *kars, name, phase string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	out := ""
	for time.Now().Before(deadline) {
		out, _ = k.run("status", name)
		if strings.Contains(out, "Phase:       "+phase) && strings.Contains(out, "enforced by the router") {
			return
		}
		time.Sleep(3 * time.Second)
	}
	t.Errorf("%s not %s with its config enforced within %s:\n%s", name, phase, d, out)
}

// connectRetry sends one message, retrying while a runtime still starts
// behind a ready probe (OpenClaw's gateway finishes loading its agent
// runtime after it answers /readyz).
func connectRetry(t *testing.T, k *kars, name, msg string) string {
	t.Helper()
	var out string
	for i := 0; i < 20; i++ {
		var code int
		if out, code = k.run("connect", name, "-m", msg); code == 0 {
			return out
		}
		time.Sleep(3 * time.Second)
	}
	t.Errorf("kars connect %s kept failing: %s", name, out)
	return out
}

func cacheDirs(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(runtimeenv.DefaultRoot())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}
