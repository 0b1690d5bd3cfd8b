package kagent

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/lossy"
	"github.com/kars-io/kars/internal/convert/manifest"
	"github.com/kars-io/kars/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var date = time.Date(2026, 12, 6, 15, 4, 5, 0, time.UTC)

func convertFile(t testing.TB, name string, o Options) *Result {
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
	if o.Date.IsZero() {
		o.Date = date
	}
	res, err := Convert(objs, o)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func encode(t testing.TB, res *Result) []byte {
	t.Helper()
	objs := make([]any, len(res.Objects))
	for i, o := range res.Objects {
		objs[i] = o
	}
	out, err := manifest.Encode(objs, lossy.Preamble("kars migrate from-kagent", res.Lossy, nil, res.Notes, res.Skipped))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The rendered bundles of realistic manifests of every field family match
// the reviewed golden files.
func TestGolden(t *testing.T) {
	for _, in := range []string{"declarative.yaml", "byo.yaml", "v1alpha3.yaml"} {
		t.Run(in, func(t *testing.T) {
			got := encode(t, convertFile(t, in, Options{}))
			golden := filepath.Join("testdata", strings.TrimSuffix(in, ".yaml")+".golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("output differs from %s (rerun with -update and review the diff):\n%s", golden, got)
			}
		})
	}
}

func find[T client.Object](t *testing.T, res *Result, name string) T {
	t.Helper()
	for _, o := range res.Objects {
		if v, ok := o.(T); ok && v.GetName() == name {
			return v
		}
	}
	var zero T
	t.Fatalf("no %T %s in the output", zero, name)
	return zero
}

func paths(fields []lossy.Field) []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = strings.SplitN(f.Object, " ", 3)[1] + " " + f.Path
	}
	slices.Sort(out)
	return out
}

// A declarative agent's instructions, model, MCP tools, approvals, A2A
// skills and deployment settings land where kars keeps them.
func TestDeclarativeMapping(t *testing.T) {
	res := convertFile(t, "declarative.yaml", Options{Isolation: karsv1.IsolationConfidential})
	sb := find[*karsv1.KarsSandbox](t, res, "k8s-agent")
	if sb.Namespace != "kars-k8s-agent" {
		t.Errorf("namespace %s, want the kars convention kars-k8s-agent", sb.Namespace)
	}
	if sb.Annotations[AnnotationMigratedFrom] != "kagent.dev/v1alpha2/Agent" || sb.Annotations[AnnotationMigrationDate] != "2026-12-06" {
		t.Errorf("annotations %v", sb.Annotations)
	}
	if _, ok := sb.Annotations["kubectl.kubernetes.io/last-applied-configuration"]; ok {
		t.Error("last-applied-configuration was copied")
	}
	if sb.Annotations["owner"] != "platform-team@example.com" || sb.Labels["team"] != "platform" {
		t.Errorf("source labels/annotations not kept: %v %v", sb.Labels, sb.Annotations)
	}
	if sb.Spec.Runtime.Kind != karsv1.RuntimeOpenClaw || sb.Spec.Agent == nil || !strings.HasPrefix(sb.Spec.Agent.Instructions, "You are a Kubernetes expert.") {
		t.Errorf("runtime/instructions: %+v %+v", sb.Spec.Runtime, sb.Spec.Agent)
	}
	if sb.Spec.Sandbox.Isolation != karsv1.IsolationConfidential {
		t.Errorf("isolation %s, want the --isolation choice", sb.Spec.Sandbox.Isolation)
	}
	if len(sb.Spec.Runtime.Env) != 1 || sb.Spec.Runtime.Env[0].Name != "LOG_LEVEL" {
		t.Errorf("env %v: only the plain, unreserved variable may be carried", sb.Spec.Runtime.Env)
	}
	if len(sb.Spec.Runtime.ImagePullSecrets) != 1 || sb.Spec.Resources.Limits.Memory().String() != "1Gi" {
		t.Errorf("pull secrets %v resources %v", sb.Spec.Runtime.ImagePullSecrets, sb.Spec.Resources)
	}
	if sk := sb.Spec.A2A.AdvertisedSkills; len(sk) != 1 || sk[0].Name != "explain-resource" || sb.Spec.A2A.Enabled {
		t.Errorf("a2a %+v: skills carried, exposure off", sb.Spec.A2A)
	}
	ip := find[*karsv1.InferencePolicy](t, res, "k8s-agent-inference")
	p := ip.Spec.ModelPreference.Primary
	if p.Provider != karsv1.ProviderAzureOpenAI || p.Model != "gpt-4.1" || p.Deployment != "gpt-41-prod" ||
		p.Endpoint != "https://contoso.openai.azure.com" || p.APIVersion != "2025-04-01-preview" ||
		p.Auth == nil || p.Auth.SecretRef == nil || p.Auth.SecretRef.Name != "kagent-azure-openai" || p.Auth.SecretRef.Key != "AZURE_OPENAI_API_KEY" {
		t.Errorf("model target %+v", p)
	}
	tp := find[*karsv1.ToolPolicy](t, res, "k8s-agent-policy")
	rules := map[string]karsv1.ToolRule{}
	for _, r := range tp.Spec.Rules {
		rules[r.Name] = r
	}
	if r := rules["mcp-kagent-tool-server"]; r.Effect != karsv1.EffectAllow || !slices.Contains(r.Actions, "mcp:kagent-tool-server.k8s_get_pod_logs") || len(r.Actions) != 4 {
		t.Errorf("MCP allow rule %+v", r)
	}
	if r := rules["approve-kagent-tool-server"]; r.Effect != karsv1.EffectRequireApproval || !slices.Equal(r.Actions, []string{"mcp:kagent-tool-server.k8s_delete_resource"}) || r.Priority <= rules["mcp-kagent-tool-server"].Priority {
		t.Errorf("approval rule %+v must outrank the allow rule", r)
	}
	if r := rules["no-shell"]; r.Effect != karsv1.EffectDeny {
		t.Errorf("no-shell rule missing: %v", tp.Spec.Rules)
	}
	remote := find[*karsv1.McpServer](t, res, "kagent-tool-server")
	if remote.Spec.URL != "http://kagent-tools.kagent:8084/mcp" || remote.Spec.Transport != "streamable-http" ||
		remote.Spec.AuthSecretRef == nil || remote.Spec.AuthSecretRef.Name != "kagent-tools-token" || !slices.Equal(remote.Spec.Sandboxes, []string{"k8s-agent"}) {
		t.Errorf("remote MCP server %+v", remote.Spec)
	}
	grafana := find[*karsv1.McpServer](t, res, "grafana-mcp")
	if grafana.Spec.Image != "mcp/grafana:0.6.2" || grafana.Spec.Transport != "stdio" || !slices.Equal(grafana.Spec.Command, []string{"/app/mcp-grafana"}) {
		t.Errorf("deployed MCP server %+v", grafana.Spec)
	}
	want := []string{
		"Agent spec.declarative.a2aConfig.skills[0].examples",
		"Agent spec.declarative.a2aConfig.skills[0].inputModes",
		"Agent spec.declarative.a2aConfig.skills[0].name",
		"Agent spec.declarative.a2aConfig.skills[0].outputModes",
		"Agent spec.declarative.a2aConfig.skills[0].tags",
		"Agent spec.declarative.deployment.env[1]",
		"Agent spec.declarative.deployment.env[2]",
		"Agent spec.declarative.deployment.nodeSelector",
		"Agent spec.declarative.deployment.serviceAccountName",
		"Agent spec.declarative.stream",
		"Agent spec.declarative.tools[2]",
		"MCPServer spec.deployment.secretRefs",
		"ModelConfig spec.azureOpenAI.maxTokens",
		"ModelConfig spec.azureOpenAI.temperature",
		"RemoteMCPServer spec.timeout",
	}
	if got := paths(res.Lossy); !slices.Equal(got, want) {
		t.Errorf("lossy fields:\n got %q\nwant %q", got, want)
	}
}

// A field the converter has never heard of is named, not dropped quietly.
func TestUnknownFieldsAreLossy(t *testing.T) {
	const in = `apiVersion: kagent.dev/v1alpha2
kind: Agent
metadata: {name: a, namespace: n}
spec:
  type: Declarative
  futureFeature: {enabled: true}
  declarative:
    systemMessage: hi
    quantumTools: [x]
`
	objs, err := manifest.Read(strings.NewReader(in), "in")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Convert(objs, Options{Date: date})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range res.Lossy {
		got[f.Path] = f.Reason
	}
	for _, p := range []string{"spec.futureFeature", "spec.declarative.quantumTools"} {
		if got[p] != lossy.NoAnalog {
			t.Errorf("%s not reported as unrecognised: %v", p, got)
		}
	}
}

// Bad input is refused with an error that names the document.
func TestBadInput(t *testing.T) {
	for name, tc := range map[string]struct{ in, want string }{
		"unknown kagent version": {"apiVersion: kagent.dev/v9\nkind: Agent\nmetadata: {name: a}\n", "is not one this converter reads"},
		"no agent":               {"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n", "no kagent Agent"},
		"byo without image":      {"apiVersion: kagent.dev/v1alpha2\nkind: Agent\nmetadata: {name: a}\nspec: {type: BYO, byo: {deployment: {}}}\n", "image is required"},
		"bad name":               {"apiVersion: kagent.dev/v1alpha2\nkind: Agent\nmetadata: {name: 1agent}\nspec: {type: BYO, byo: {deployment: {image: x}}}\n", "cannot name a KarsSandbox"},
		"missing template":       {"apiVersion: kagent.dev/v1alpha3\nkind: Agent\nmetadata: {name: a}\nspec: {templateRef: {name: t}}\n", "AgentTemplate /t is not in the input"},
		"wrong type":             {"apiVersion: kagent.dev/v1alpha2\nkind: Agent\nmetadata: {name: a}\nspec: {type: Declarative, declarative: {systemMessage: [1]}}\n", "must be a string"},
	} {
		t.Run(name, func(t *testing.T) {
			objs, err := manifest.Read(strings.NewReader(tc.in), "in.yaml")
			if err == nil {
				_, err = Convert(objs, Options{Date: date})
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// Every emitted object of every golden case is accepted unchanged by the
// real API server with strict field validation, and reads back equal.
func TestOutputAppliesToAPIServer(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	for _, in := range []string{"declarative.yaml", "byo.yaml", "v1alpha3.yaml"} {
		t.Run(in, func(t *testing.T) {
			res := convertFile(t, in, Options{})
			for _, o := range res.Objects {
				obj := o.(client.Object)
				m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
				if err != nil {
					t.Fatal(err)
				}
				u := &unstructured.Unstructured{Object: m}
				delete(u.Object, "status")
				if err := env.Client.Create(ctx, u, client.FieldValidation("Strict")); err != nil {
					t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
				}
			}
			for _, o := range res.Objects {
				sb, ok := o.(*karsv1.KarsSandbox)
				if !ok {
					continue
				}
				var got karsv1.KarsSandbox
				if err := env.Client.Get(ctx, client.ObjectKeyFromObject(sb), &got); err != nil {
					t.Fatal(err)
				}
				if got.Spec.Runtime.Kind != sb.Spec.Runtime.Kind || got.Spec.InferenceRef != sb.Spec.InferenceRef ||
					got.Annotations[AnnotationMigratedFrom] != sb.Annotations[AnnotationMigratedFrom] {
					t.Errorf("stored sandbox %s differs: %+v", sb.Name, got.Spec)
				}
			}
		})
	}
}

func FuzzConvert(f *testing.F) {
	for _, in := range []string{"declarative.yaml", "byo.yaml", "v1alpha3.yaml"} {
		raw, err := os.ReadFile(filepath.Join("testdata", in))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Add([]byte("apiVersion: kagent.dev/v1alpha2\nkind: Agent\nmetadata: {name: a}\nspec: {declarative: {tools: [{mcpServer: {name: x}}]}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := manifest.Read(bytes.NewReader(data), "fuzz")
		if err != nil {
			return
		}
		res, err := Convert(objs, Options{Date: date})
		if err != nil {
			return
		}
		for _, o := range res.Objects {
			if o.GetName() == "" || o.GetObjectKind().GroupVersionKind().Kind == "" {
				t.Fatalf("emitted an object without name or kind: %#v", o)
			}
		}
		encode(t, res)
	})
}
