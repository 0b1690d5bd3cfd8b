package agentsandbox

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/lossy"
	"github.com/kars-io/kars/internal/convert/manifest"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var date = time.Date(2026, 12, 6, 15, 4, 5, 0, time.UTC)

var catalog = render.Catalog{Registry: render.DefaultRegistry, Version: "v0.1.0", GitSyncImage: render.DefaultGitSyncImage}

func read(t testing.TB, name string) []manifest.Object {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	objs, err := manifest.Read(f, name)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (rerun with -update and review the diff):\n%s", path, got)
	}
}

func encodeResult(t testing.TB, title string, res *Result, defaults []string) []byte {
	t.Helper()
	out, err := manifest.Encode(res.Objects, lossy.Preamble(title, res.Lossy, defaults, res.Notes, res.Skipped))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestGoldenToKars(t *testing.T) {
	for _, in := range []string{"v1beta1.yaml", "v1alpha1.yaml"} {
		t.Run(in, func(t *testing.T) {
			res, err := ToKars(read(t, in), Options{Date: date})
			if err != nil {
				t.Fatal(err)
			}
			golden(t, strings.TrimSuffix(in, ".yaml")+".karssandbox.golden", encodeResult(t, "kars convert --to karssandbox", res, Defaults))
		})
	}
}

func TestGoldenOverlay(t *testing.T) {
	res, err := Overlay(read(t, "v1beta1.yaml"), "prod/web-agent", Options{Date: date})
	if err != nil {
		t.Fatal(err)
	}
	sb := res.Sandboxes[0]
	if uc := sb.Spec.UpstreamCompatibility; uc == nil || uc.SigsAgentSandbox != ModeOverlay || uc.UpstreamRef.Name != "web-agent" || sb.Namespace != "prod" {
		t.Fatalf("overlay sandbox %s/%s %+v", sb.Namespace, sb.Name, sb.Spec.UpstreamCompatibility)
	}
	golden(t, "v1beta1.overlay.golden", encodeResult(t, "kars convert --to overlay", res, nil))
	if _, err := Overlay(read(t, "v1beta1.yaml"), "prod/other", Options{}); err == nil || !strings.Contains(err.Error(), "no Sandbox prod/other") {
		t.Errorf("a missing --sandbox-ref: %v", err)
	}
}

func TestGoldenFromKars(t *testing.T) {
	res, err := ToKars(read(t, "v1beta1.yaml"), Options{Date: date})
	if err != nil {
		t.Fatal(err)
	}
	sb := res.Sandboxes[0]
	sb.Spec.NetworkPolicy.AllowedHosts = []karsv1.Hostname{"api.github.com"}
	sb.Spec.Agent = &karsv1.AgentSpec{Instructions: "be brief"}
	up, dropped, err := FromKars(sb, catalog)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range dropped {
		got = append(got, f.Path)
	}
	if want := "spec.inferenceRef spec.governance spec.networkPolicy spec.agent"; strings.Join(got, " ") != want {
		t.Errorf("lossy %q, want %q", got, want)
	}
	out, err := manifest.Encode([]any{up.Object}, lossy.Preamble("kars convert --to upstream-sandbox", dropped, nil, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "v1beta1.upstream.golden", out)
}

// The mapping the v1beta1 fixture exercises, field family by field family.
func TestToKarsMapping(t *testing.T) {
	res, err := ToKars(read(t, "v1beta1.yaml"), Options{Date: date})
	if err != nil {
		t.Fatal(err)
	}
	sb := res.Sandboxes[0]
	b := sb.Spec.Runtime.BYO
	if sb.Spec.Runtime.Kind != karsv1.RuntimeBYO || b.Image != "ghcr.io/example/web-agent:2.3.0" || b.Port != 9000 ||
		strings.Join(b.Command, " ") != "/app/agent" || strings.Join(b.Args, " ") != "--listen 127.0.0.1:9000" {
		t.Errorf("runtime %+v %+v: the default-container must be the agent", sb.Spec.Runtime, b)
	}
	if len(sb.Spec.Runtime.Env) != 1 || sb.Spec.Runtime.Env[0].Name != "AGENT_MODE" {
		t.Errorf("env %v", sb.Spec.Runtime.Env)
	}
	if sb.Labels[LabelDevOnly] != "true" || sb.Spec.Sandbox.Isolation != karsv1.IsolationEnhanced || sb.Spec.Suspended {
		t.Errorf("labels %v isolation %s suspended %v", sb.Labels, sb.Spec.Sandbox.Isolation, sb.Spec.Suspended)
	}
	want := map[string]bool{
		"spec.podTemplate.spec.containers[0]":                                          true,
		"spec.podTemplate.spec.containers[1].env[1]":                                   true,
		"spec.podTemplate.spec.containers[1].volumeMounts":                             true,
		"spec.podTemplate.spec.runtimeClassName":                                       true,
		"spec.podTemplate.spec.serviceAccountName":                                     true,
		"spec.podTemplate.spec.nodeSelector":                                           true,
		"spec.podTemplate.metadata":                                                    true,
		"spec.service":                                                                 true,
		"spec.volumeClaimTemplates":                                                    true,
		"spec.shutdownTime":                                                            true,
		"spec.shutdownPolicy":                                                          true,
		"spec.podTemplate.spec.containers[1].securityContext.runAsNonRoot":             false, // true is what kars enforces
		"spec.podTemplate.spec.containers[1].securityContext.allowPrivilegeEscalation": false,
	}
	got := map[string]bool{}
	for _, f := range res.Lossy {
		got[f.Path] = true
	}
	for p, lost := range want {
		if got[p] != lost {
			t.Errorf("%s lossy=%v, want %v", p, got[p], lost)
		}
	}
	if len(got) != 11 {
		t.Errorf("%d lossy fields, want 11: %v", len(got), res.Lossy)
	}

	old, err := ToKars(read(t, "v1alpha1.yaml"), Options{Date: date})
	if err != nil {
		t.Fatal(err)
	}
	if sb := old.Sandboxes[0]; !sb.Spec.Suspended || sb.Spec.Sandbox.Isolation != karsv1.IsolationConfidential || len(old.Lossy) != 0 {
		t.Errorf("v1alpha1: suspended %v isolation %s lossy %v", sb.Spec.Suspended, sb.Spec.Sandbox.Isolation, old.Lossy)
	}
}

func TestBadInput(t *testing.T) {
	for name, tc := range map[string]struct{ in, want string }{
		"unknown version": {"apiVersion: agents.x-k8s.io/v2\nkind: Sandbox\nmetadata: {name: a}\n", "is not one this converter reads"},
		"no sandbox":      {"apiVersion: kagent.dev/v1alpha2\nkind: Agent\nmetadata: {name: a}\n", "no agents.x-k8s.io Sandbox"},
		"no containers":   {"apiVersion: agents.x-k8s.io/v1beta1\nkind: Sandbox\nmetadata: {name: a}\nspec: {podTemplate: {spec: {}}}\n", "containers is empty"},
		"bad mode":        {"apiVersion: agents.x-k8s.io/v1beta1\nkind: Sandbox\nmetadata: {name: a}\nspec: {operatingMode: Paused, podTemplate: {spec: {containers: [{name: a, image: b}]}}}\n", "neither Running nor Suspended"},
		"long name":       {"apiVersion: agents.x-k8s.io/v1beta1\nkind: Sandbox\nmetadata: {name: " + strings.Repeat("a", 60) + "}\nspec: {podTemplate: {spec: {containers: [{name: a, image: b}]}}}\n", "rename the Sandbox"},
	} {
		t.Run(name, func(t *testing.T) {
			objs, err := manifest.Read(strings.NewReader(tc.in), "in.yaml")
			if err == nil {
				_, err = ToKars(objs, Options{})
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// Converted objects are accepted unchanged, with strict field validation,
// by the real API server holding the kars CRDs and the pinned upstream
// Sandbox CRD.
func TestOutputAppliesToAPIServer(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	testenv.InstallAgentSandboxCRD(t, env.Client)
	ctx := context.Background()
	create := func(obj any) {
		t.Helper()
		m, isMap := obj.(map[string]any)
		if !isMap {
			var err error
			if m, err = runtime.DefaultUnstructuredConverter.ToUnstructured(obj); err != nil {
				t.Fatal(err)
			}
		}
		u := &unstructured.Unstructured{Object: m}
		delete(u.Object, "status")
		if err := env.Client.Create(ctx, u, client.FieldValidation("Strict")); err != nil {
			t.Fatalf("create %s %s/%s: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
		}
	}
	for _, ns := range []string{"prod", "research", "up"} {
		create(map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}})
	}
	for _, in := range []string{"v1beta1.yaml", "v1alpha1.yaml"} {
		res, err := ToKars(read(t, in), Options{Date: date})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range res.Objects {
			create(o)
		}
		for _, sb := range res.Sandboxes {
			sb.Namespace = "up"
			up, _, err := FromKars(sb, catalog)
			if err != nil {
				t.Fatal(err)
			}
			create(up.Object)
		}
	}
	res, err := Overlay(read(t, "v1beta1.yaml"), "prod/web-agent", Options{Date: date})
	if err != nil {
		t.Fatal(err)
	}
	sb := res.Sandboxes[0]
	sb.Name = "web-agent-overlay"
	create(sb)
	// The original upstream fixture is a valid Sandbox too (the test data
	// is what agent-sandbox 1.0 accepts).
	create(read(t, "v1beta1.yaml")[0].Object)
}

func FuzzToKars(f *testing.F) {
	for _, in := range []string{"v1beta1.yaml", "v1alpha1.yaml"} {
		raw, err := os.ReadFile(filepath.Join("testdata", in))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := manifest.Read(bytes.NewReader(data), "fuzz")
		if err != nil {
			return
		}
		res, err := ToKars(objs, Options{Date: date})
		if err != nil {
			return
		}
		for _, sb := range res.Sandboxes {
			if sb.Spec.Runtime.BYO == nil || sb.Spec.Runtime.BYO.Image == "" {
				t.Fatalf("a sandbox without an image: %+v", sb.Spec.Runtime)
			}
			if _, _, err := FromKars(sb, catalog); err != nil {
				t.Fatalf("FromKars of a converted sandbox: %v", err)
			}
		}
		encodeResult(t, "fuzz", res, Defaults)
	})
}
