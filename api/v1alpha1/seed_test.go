package v1alpha1_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/testenv"
)

// seedFiles are the KarsSandbox examples of the seed use cases, copied
// unchanged (comments included) into testdata/seed.
func seedFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("testdata/seed/*.yaml")
	if err != nil || len(files) < 8 {
		t.Fatalf("want the 8 seed examples in testdata/seed, found %d (%v)", len(files), err)
	}
	return files
}

// Every field the seed uses must exist in the Go types with the same name and
// shape: strict decoding fails on any unknown field.
func TestSeedExamplesDecodeStrictly(t *testing.T) {
	for _, f := range seedFiles(t) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var sb karsv1.KarsSandbox
			if err := yaml.UnmarshalStrict(raw, &sb); err != nil {
				t.Fatalf("seed example does not fit the API types: %v", err)
			}
			// Re-encoding the typed object must keep every field the
			// example set, with the same value.
			back, err := yaml.Marshal(&sb)
			if err != nil {
				t.Fatal(err)
			}
			var want, got map[string]any
			mustUnmarshal(t, raw, &want)
			mustUnmarshal(t, back, &got)
			assertSubset(t, "", want, got, zeroMayBeOmitted)
		})
	}
}

// Every seed example applies unchanged to the real API server and reads back
// with the same values; the server only adds defaults.
func TestSeedExamplesApplyToAPIServer(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	for _, f := range seedFiles(t) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var want map[string]any
			mustUnmarshal(t, raw, &want)
			obj := &unstructured.Unstructured{Object: deepCopyMap(want)}
			ensureNamespace(t, env.Client, obj.GetNamespace())
			// The scenario-1 and scenario-5 examples share a name: replace.
			_ = env.Client.Delete(ctx, obj.DeepCopy())
			waitGone(t, env.Client, obj)
			if err := env.Client.Create(ctx, obj); err != nil {
				t.Fatalf("API server rejected the seed example: %v", err)
			}
			got := &unstructured.Unstructured{}
			got.SetGroupVersionKind(obj.GroupVersionKind())
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(obj), got); err != nil {
				t.Fatal(err)
			}
			assertSubset(t, "", want, got.Object, exact)

			// Secure defaults hold for every example.
			var typed karsv1.KarsSandbox
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(obj), &typed); err != nil {
				t.Fatal(err)
			}
			s := typed.Spec
			if s.IsolationLevel() != karsv1.IsolationEnhanced || s.NetworkPolicy.EgressMode != karsv1.EgressStrict ||
				s.NetworkPolicy.DefaultDeny == nil || !*s.NetworkPolicy.DefaultDeny || !s.GovernanceEnabled() {
				t.Fatalf("secure defaults missing after apply: %+v", s)
			}
		})
	}
}

// A sandbox that states only what is required gets every secure default.
func TestSecureDefaults(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	ensureNamespace(t, env.Client, "defaults")
	sb := &karsv1.KarsSandbox{
		ObjectMeta: metav1.ObjectMeta{Name: "minimal", Namespace: "defaults"},
		Spec: karsv1.KarsSandboxSpec{
			Runtime:      karsv1.RuntimeSpec{Kind: karsv1.RuntimeOpenClaw},
			InferenceRef: karsv1.LocalObjectReference{Name: "minimal-inference"},
		},
	}
	if err := env.Client.Create(ctx, sb); err != nil {
		t.Fatal(err)
	}
	got := &karsv1.KarsSandbox{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(sb), got); err != nil {
		t.Fatal(err)
	}
	s := got.Spec
	checks := []struct {
		name string
		ok   bool
	}{
		{"sandbox.isolation enhanced", s.Sandbox.Isolation == karsv1.IsolationEnhanced},
		{"sandbox.readOnlyRootFilesystem true", s.Sandbox.ReadOnlyRootFilesystem != nil && *s.Sandbox.ReadOnlyRootFilesystem},
		{"sandbox.runAsNonRoot true", s.Sandbox.RunAsNonRoot != nil && *s.Sandbox.RunAsNonRoot},
		{"networkPolicy.egressMode Strict", s.NetworkPolicy.EgressMode == karsv1.EgressStrict},
		{"networkPolicy.defaultDeny true", s.NetworkPolicy.DefaultDeny != nil && *s.NetworkPolicy.DefaultDeny},
		{"governance.enabled true", s.Governance.Enabled != nil && *s.Governance.Enabled},
		{"governance.trustThreshold 500", s.Governance.TrustThreshold != nil && *s.Governance.TrustThreshold == 500},
		{"a2a.enabled false", !s.A2A.Enabled},
		{"a2a.bodyCapBytes 1 MiB", s.A2A.BodyCapBytes == 1<<20},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("default %s not applied: %+v", c.name, s)
		}
	}
}

func ensureNamespace(t *testing.T, c client.Client, name string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := c.Create(context.Background(), ns); err != nil && !isAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}

func mustUnmarshal(t *testing.T, raw []byte, into any) {
	t.Helper()
	if err := yaml.Unmarshal(raw, into); err != nil {
		t.Fatal(err)
	}
}

// Comparison modes of assertSubset: the API server must return every field
// exactly; Go's omitempty may drop a field the example set to its zero value.
const (
	exact            = false
	zeroMayBeOmitted = true
)

// assertSubset fails when a leaf of want is missing from got or differs.
func assertSubset(t *testing.T, path string, want, got any, omitZero bool) {
	t.Helper()
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			t.Errorf("%s: want an object, got %T (%v)", path, got, got)
			return
		}
		for k, wv := range w {
			gv, ok := g[k]
			if !ok && omitZero && isZero(wv) {
				continue
			}
			if !ok {
				t.Errorf("%s.%s: missing after round trip (want %v)", path, k, wv)
				continue
			}
			assertSubset(t, path+"."+k, wv, gv, omitZero)
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			t.Errorf("%s: want list %v, got %v", path, w, got)
			return
		}
		for i := range w {
			assertSubset(t, path+"[]", w[i], g[i], omitZero)
		}
	default:
		if !reflect.DeepEqual(normalizeNumber(want), normalizeNumber(got)) {
			t.Errorf("%s: want %v (%T), got %v (%T)", path, want, want, got, got)
		}
	}
}

func isZero(v any) bool {
	switch x := v.(type) {
	case bool:
		return !x
	case float64:
		return x == 0
	case string:
		return x == ""
	}
	return v == nil
}

// normalizeNumber makes 500 (int64 from the API) equal 500 (float64 from YAML).
func normalizeNumber(v any) any {
	switch n := v.(type) {
	case int64:
		return float64(n)
	case int:
		return float64(n)
	case int32:
		return float64(n)
	}
	return v
}

func deepCopyMap(m map[string]any) map[string]any {
	return (&unstructured.Unstructured{Object: m}).DeepCopy().Object
}
