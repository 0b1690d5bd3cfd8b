package offload

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/yaml"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func renderInput() Input {
	created := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	p := &karsv1.KarsPairing{
		ObjectMeta: metav1.ObjectMeta{Name: "alice-laptop", Namespace: "kars-system"},
		Spec: karsv1.KarsPairingSpec{TokenHash: karsv1.Digest("sha256:" + strings.Repeat("ab", 32)), DisplayName: "alice-laptop",
			ExpiresAt: metav1.NewTime(created.Add(90 * 24 * time.Hour)), Slots: 3,
			Capabilities: []karsv1.PairingCapability{karsv1.CapabilityOffload, karsv1.CapabilityHandoff},
			Offload:      &karsv1.OffloadTemplate{InferenceRef: karsv1.LocalObjectReference{Name: "alice-laptop-offload"}}},
	}
	tmpl := &karsv1.InferencePolicy{ObjectMeta: metav1.ObjectMeta{Name: "alice-laptop-offload", Namespace: "kars-system"},
		Spec: karsv1.InferencePolicySpec{ModelPreference: karsv1.ModelPreference{
			Primary: karsv1.ModelTarget{Provider: karsv1.ProviderAzureOpenAI, Model: "gpt-4.1", Deployment: "gpt-4.1", Endpoint: "https://contoso.openai.azure.com",
				Auth: &karsv1.ProviderAuth{Mode: karsv1.AuthAPIKey, SecretRef: &karsv1.SecretKeyReference{Name: "offload-key", Key: "api-key"}}},
		}, TokenBudget: &karsv1.TokenBudget{Daily: 1_000_000}}}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "offload-key", Namespace: "kars-system"},
		Data: map[string][]byte{"api-key": []byte("sk-test"), "unrelated": []byte("not copied")}}
	return Input{ID: "a1b2c3d4", Pairing: p, Template: tmpl, Secrets: map[string]*corev1.Secret{"offload-key": secret},
		PeerDID: "did:mesh:0123456789abcdef0123456789abcdef",
		Request: &Request{V: 1, Op: OpOffload, ID: "r_1", Task: &Task{Title: "analyze_repo", SHA256: sha, Bytes: 42}},
		Tokens:  20000, CreatedAt: created, ExpiresAt: created.Add(time.Hour)}
}

// The rendered offload is the use cases' example (labels, isolation,
// default deny, governance), with the pairing's template and the
// offload's allocation; only the referenced key of the Secret is copied.
func TestObjectsGolden(t *testing.T) {
	objs, err := Objects(renderInput())
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	s := testenv.Scheme()
	for _, o := range objs {
		gvk, err := apiutil.GVKForObject(o, s)
		if err != nil {
			t.Fatal(err)
		}
		o.GetObjectKind().SetGroupVersionKind(gvk)
		raw, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		buf.WriteString("---\n")
		buf.Write(raw)
	}
	path := filepath.Join("testdata", "offload-a1b2c3d4.yaml")
	if *update {
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("rendered objects differ from %s (run with -update and review):\n%s", path, buf.String())
	}
	sb := objs[len(objs)-1].(*karsv1.KarsSandbox)
	if sb.Namespace != "kars-offload-a1b2c3d4" || sb.Name != "offload-a1b2c3d4" || sb.Labels[LabelOffload] != "true" || sb.Labels[LabelPairing] != "alice-laptop" {
		t.Fatalf("sandbox %s/%s labels %v", sb.Namespace, sb.Name, sb.Labels)
	}
	if sec := objs[1].(*corev1.Secret); len(sec.Data) != 1 || string(sec.Data["api-key"]) != "sk-test" {
		t.Fatalf("copied secret holds %v", sec.Data)
	}
}

func TestObjectsRefuse(t *testing.T) {
	in := renderInput()
	in.ID = "A1B2C3D4"
	if _, err := Objects(in); err == nil {
		t.Error("an id that is not lowercase hex was rendered")
	}
	in = renderInput()
	in.Secrets = nil
	if _, err := Objects(in); err == nil || !strings.Contains(err.Error(), "Secret offload-key") {
		t.Errorf("missing credentials: %v", err)
	}
	in = renderInput()
	in.Pairing.Spec.Offload = nil
	if _, err := Objects(in); err == nil {
		t.Error("a pairing without template was rendered")
	}
}

// The real API server accepts every object (CRD validation and CEL
// rules included).
func TestObjectsAccepted(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	objs, err := Objects(renderInput())
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if err := env.Client.Create(context.Background(), o); err != nil {
			t.Fatalf("API server rejected %T %s: %v", o, o.GetName(), err)
		}
	}
}
