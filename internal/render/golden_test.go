package render

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden from the current rendering")

// golden compares got with testdata/golden/<name>, or rewrites it under
// -update. The diff names the first differing line, so a reviewer sees what
// a change to the renderer does to the pod.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `go test ./internal/render -run Golden -update` to create it)", err)
	}
	if !bytes.Equal(got, want) {
		gl, wl := bytes.Split(got, []byte("\n")), bytes.Split(want, []byte("\n"))
		for i := 0; i < max(len(gl), len(wl)); i++ {
			var g, w []byte
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if !bytes.Equal(g, w) {
				t.Fatalf("%s differs at line %d:\n  golden: %s\n  render: %s\n(if the change is intended, rerun with -update and review the diff)", path, i+1, w, g)
			}
		}
	}
}

func toYAML(t *testing.T, objs ...client.Object) []byte {
	t.Helper()
	var out bytes.Buffer
	for i, o := range objs {
		if i > 0 {
			out.WriteString("---\n")
		}
		b, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		out.Write(b)
	}
	return out.Bytes()
}

func TestGoldenIsolationLevels(t *testing.T) {
	for _, iso := range []karsv1.IsolationLevel{karsv1.IsolationStandard, karsv1.IsolationEnhanced, karsv1.IsolationConfidential} {
		t.Run(string(iso), func(t *testing.T) {
			out, err := Render(input(sandbox(karsv1.RuntimeOpenClaw, iso)))
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "isolation-"+string(iso)+".yaml", toYAML(t, out.Deployment))
		})
	}
}

func TestGoldenRuntimeKinds(t *testing.T) {
	cases := []struct {
		file string
		kind karsv1.RuntimeKind
		lang string
	}{
		{"runtime-openclaw.yaml", karsv1.RuntimeOpenClaw, ""},
		{"runtime-openai-agents.yaml", karsv1.RuntimeOpenAIAgents, ""},
		{"runtime-microsoft-agent-framework-python.yaml", karsv1.RuntimeMicrosoftAgentFramework, ""},
		{"runtime-langgraph-python.yaml", karsv1.RuntimeLangGraph, "python"},
		{"runtime-langgraph-typescript.yaml", karsv1.RuntimeLangGraph, "typescript"},
		{"runtime-anthropic.yaml", karsv1.RuntimeAnthropic, ""},
		{"runtime-pydantic-ai.yaml", karsv1.RuntimePydanticAi, ""},
		{"runtime-byo.yaml", karsv1.RuntimeBYO, ""},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			sb := sandbox(c.kind, karsv1.IsolationEnhanced)
			if c.lang != "" {
				sb.Spec.Runtime.LangGraph.Language = c.lang
			}
			out, err := Render(input(sb))
			if err != nil {
				t.Fatal(err)
			}
			golden(t, c.file, toYAML(t, out.Deployment))
		})
	}
}

// The full object set of the first seed scenario: what `kubectl get all`
// shows for research-bot, minus what the cluster adds.
func TestGoldenSeedResearchBot(t *testing.T) {
	raw, err := os.ReadFile("../../api/v1alpha1/testdata/seed/1-research-bot.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var sb karsv1.KarsSandbox
	if err := yaml.UnmarshalStrict(raw, &sb); err != nil {
		t.Fatal(err)
	}
	sb.UID = "0b5e5c2e-1111-4222-8333-944455556666"
	ip, tp := inferencePolicy(), toolPolicy()
	ip.Name, ip.Namespace = sb.Spec.InferenceRef.Name, sb.Namespace
	tp.Name, tp.Namespace = sb.Spec.Governance.ToolPolicyRef.Name, sb.Namespace
	out, err := Render(Input{Sandbox: &sb, Inference: ip, Tools: tp, Admin: testAdmin(), Now: testNow, Env: testEnv()})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "seed-research-bot.yaml", toYAML(t, out.Objects()...))
}
