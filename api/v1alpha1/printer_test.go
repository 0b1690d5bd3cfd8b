package v1alpha1_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/testenv"
)

// kubectl get asks the server for a Table; the columns it prints are the
// CRD's printer columns. This checks what `kubectl get karssandboxes` shows,
// and that the short names resolve, without needing a kubectl binary.
func TestKubectlGetColumnsAndShortNames(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	ensureNamespace(t, env.Client, "printer")
	sb := &karsv1.KarsSandbox{}
	sb.Name, sb.Namespace = "research-bot", "printer"
	sb.Spec.Runtime.Kind = karsv1.RuntimeLangGraph
	sb.Spec.InferenceRef.Name = "research-bot-inference"
	if err := env.Client.Create(ctx, sb); err != nil {
		t.Fatal(err)
	}
	sb.Status.Phase = karsv1.SandboxRunning
	sb.Status.Model = "gpt-4.1"
	sb.Status.Conditions = []metav1.Condition{{Type: karsv1.ConditionReady, Status: metav1.ConditionTrue, Reason: "Running", Message: "ok", LastTransitionTime: metav1.Now()}}
	if err := env.Client.Status().Update(ctx, sb); err != nil {
		t.Fatal(err)
	}

	cfg := rest.CopyConfig(env.Config)
	cfg.GroupVersion = &karsv1.GroupVersion
	cfg.APIPath = "/apis"
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(env.Scheme).WithoutConversion()
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := rc.Get().Namespace("printer").Resource("karssandboxes").
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var table metav1.Table
	if err := json.Unmarshal(raw, &table); err != nil {
		t.Fatal(err)
	}
	var cols []string
	for _, c := range table.ColumnDefinitions {
		if c.Priority == 0 {
			cols = append(cols, c.Name)
		}
	}
	wantCols := []string{"Name", "Runtime", "Isolation", "Model", "Phase", "Ready", "Age"}
	if !slices.Equal(cols, wantCols) {
		t.Fatalf("kubectl get karssandboxes columns = %v, want %v", cols, wantCols)
	}
	if len(table.Rows) != 1 {
		t.Fatalf("want 1 row, got %d", len(table.Rows))
	}
	row := table.Rows[0].Cells
	want := []any{"research-bot", "LangGraph", "enhanced", "gpt-4.1", "Running", "True"}
	for i, w := range want {
		if row[i] != w {
			t.Errorf("column %s = %v, want %v", wantCols[i], row[i], w)
		}
	}

	dc, err := discovery.NewDiscoveryClientForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	res, err := dc.ServerResourcesForGroupVersion(karsv1.GroupVersion.String())
	if err != nil {
		t.Fatal(err)
	}
	short := map[string][]string{}
	namespaced := map[string]bool{}
	for _, r := range res.APIResources {
		short[r.Name] = r.ShortNames
		namespaced[r.Name] = r.Namespaced
		if r.Name != "" && !slices.Contains(r.Categories, "kars") && !strings.Contains(r.Name, "/") /* subresources carry no categories */ {
			t.Errorf("%s is not in the kars category (kubectl get kars)", r.Name)
		}
	}
	for _, name := range []string{"karssandboxes", "karspairings", "a2aagents", "mcpservers", "toolpolicies", "inferencepolicies",
		"karsmemories", "karsevals", "trustgraphs", "egressapprovals", "karssreactions"} {
		if len(short[name]) == 0 {
			t.Errorf("%s has no short names", name)
		}
	}
	if !slices.Contains(short["karssandboxes"], "ksb") {
		t.Errorf("karssandboxes short names = %v, want ksb among them", short["karssandboxes"])
	}
	if namespaced["trustgraphs"] || !namespaced["karssandboxes"] {
		t.Errorf("scope wrong: trustgraphs namespaced=%v, karssandboxes namespaced=%v", namespaced["trustgraphs"], namespaced["karssandboxes"])
	}
}
