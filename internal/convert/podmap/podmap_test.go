package podmap

import (
	"fmt"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/lossy"
	"github.com/kars-io/kars/internal/render"
)

func TestEnv(t *testing.T) {
	env := []any{
		map[string]any{"name": "PLAIN", "value": "1"},
		map[string]any{"name": "TOKEN", "valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": "s", "key": "k"}}},
		map[string]any{"name": "KARS_X", "value": "y"},
		map[string]any{"name": "HOME", "value": "/root"},
		map[string]any{"name": "1BAD", "value": "x"},
	}
	for i := range 70 {
		env = append(env, map[string]any{"name": fmt.Sprintf("V%d", i), "value": "v"})
	}
	d := lossy.New("o", map[string]any{"env": env})
	got := Env(d, "env")
	if len(got) != 64 || got[0].Name != "PLAIN" {
		t.Fatalf("carried %d, first %v", len(got), got[0])
	}
	dropped := map[string]string{}
	for _, f := range d.Lossy() {
		dropped[f.Path] = f.Reason
	}
	for i, want := range map[int]string{1: "from a Secret", 2: "reserved", 3: "kars sets HOME", 4: "not a valid", 68: "at most 64", 74: "at most 64"} {
		if r := dropped[fmt.Sprintf("env[%d]", i)]; !strings.Contains(r, want) {
			t.Errorf("env[%d]: reason %q, want %q", i, r, want)
		}
	}
	if len(dropped) != 4+70-63 {
		t.Errorf("%d dropped: %v", len(dropped), dropped)
	}
}

// Every variable kars renders into an agent container is one the
// converters refuse to carry (else the sandbox they emit would be refused
// by the controller: render rejects user variables that override them).
func TestEnvReservedCoversRender(t *testing.T) {
	for _, kind := range []karsv1.RuntimeKind{karsv1.RuntimeOpenClaw, karsv1.RuntimeOpenAIAgents, karsv1.RuntimeLangGraph, karsv1.RuntimeAnthropic, karsv1.RuntimePydanticAi, karsv1.RuntimeBYO} {
		sb := &karsv1.KarsSandbox{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "n"}, Spec: karsv1.KarsSandboxSpec{
			Runtime:      karsv1.RuntimeSpec{Kind: kind},
			InferenceRef: karsv1.LocalObjectReference{Name: "i"},
			Agent:        &karsv1.AgentSpec{Instructions: "x", Tools: []string{"t"}},
		}}
		if kind == karsv1.RuntimeOpenClaw {
			sb.Spec.Runtime.OpenClaw = &karsv1.OpenClawRuntime{Config: &runtime.RawExtension{Raw: []byte(`{}`)}}
		}
		if kind == karsv1.RuntimeBYO {
			sb.Spec.Runtime.BYO = &karsv1.BYORuntime{Image: "i", ContractVersion: "v1"}
		}
		d, err := render.Render(render.Input{Sandbox: sb, Inference: &karsv1.InferencePolicy{Spec: karsv1.InferencePolicySpec{ModelPreference: karsv1.ModelPreference{
			Primary: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "m"}}}},
			Admin: render.AdminCredentials{Token: []byte("t"), CertPEM: []byte("c"), KeyPEM: []byte("k")},
			Env:   render.Environment{Catalog: render.Catalog{Registry: "r", Version: "v", GitSyncImage: "g"}, SystemNamespace: "s"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range d.Deployment.Spec.Template.Spec.Containers[0].Env {
			if _, reserved := EnvReserved(e.Name); !reserved {
				t.Errorf("%s: kars renders %s but converters would carry a user's %s", kind, e.Name, e.Name)
			}
		}
	}
}
