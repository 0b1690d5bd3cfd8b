package agentsandbox

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/manifest"
)

// shared is what a KarsSandbox and an upstream Sandbox both hold.
type shared struct {
	Image, Command, Args, Env, Resources, PullSecrets, Isolation, Labels, Annotations string
	Port                                                                              int32
	Suspended                                                                         bool
}

func ofKars(sb *karsv1.KarsSandbox) shared {
	b := sb.Spec.Runtime.BYO
	s := shared{Image: b.Image, Command: fmt.Sprint(b.Command), Args: fmt.Sprint(b.Args), Port: b.Port,
		Suspended: sb.Spec.Suspended, Isolation: string(sb.Spec.IsolationLevel())}
	for _, e := range sb.Spec.Runtime.Env {
		s.Env += e.Name + "=" + e.Value + ";"
	}
	if r := sb.Spec.Resources; r != nil {
		s.Resources = fmt.Sprint(r.Requests.Cpu(), r.Requests.Memory(), r.Limits.Memory())
	}
	for _, p := range sb.Spec.Runtime.ImagePullSecrets {
		s.PullSecrets += p.Name + ";"
	}
	s.Labels, s.Annotations = userMeta(sb.Labels), userMeta(sb.Annotations)
	return s
}

func ofUpstream(t *testing.T, u *unstructured.Unstructured) shared {
	t.Helper()
	var spec struct {
		OperatingMode string `json:"operatingMode"`
		PodTemplate   struct {
			Spec corev1.PodSpec `json:"spec"`
		} `json:"podTemplate"`
	}
	m, _, _ := unstructured.NestedMap(u.Object, "spec")
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, &spec); err != nil {
		t.Fatal(err)
	}
	c := spec.PodTemplate.Spec.Containers[0]
	s := shared{Image: c.Image, Command: fmt.Sprint(c.Command), Args: fmt.Sprint(c.Args), Suspended: spec.OperatingMode == OperatingSuspended,
		Isolation: string(karsv1.IsolationEnhanced)}
	if len(c.Ports) > 0 {
		s.Port = c.Ports[0].ContainerPort
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil { // values from Secrets are upstream-only
			s.Env += e.Name + "=" + e.Value + ";"
		}
	}
	if c.Resources.Requests != nil || c.Resources.Limits != nil {
		s.Resources = fmt.Sprint(c.Resources.Requests.Cpu(), c.Resources.Requests.Memory(), c.Resources.Limits.Memory())
	}
	for _, p := range spec.PodTemplate.Spec.ImagePullSecrets {
		s.PullSecrets += p.Name + ";"
	}
	switch {
	case spec.PodTemplate.Spec.RuntimeClassName != nil:
		s.Isolation = string(karsv1.IsolationConfidential)
	case c.SecurityContext != nil && c.SecurityContext.SeccompProfile != nil && c.SecurityContext.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault:
		s.Isolation = string(karsv1.IsolationStandard)
	}
	s.Labels, s.Annotations = userMeta(u.GetLabels()), userMeta(u.GetAnnotations())
	return s
}

// userMeta drops the keys the converters themselves set.
func userMeta(m map[string]string) string {
	var out string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		switch k {
		case "kars.io/sandbox", LabelDevOnly, AnnotationConvertedFrom, AnnotationMigrationDate:
			continue
		}
		out += k + "=" + m[k] + ";"
	}
	return out
}

func pick[T any](r *rand.Rand, xs ...T) T { return xs[r.IntN(len(xs))] }

func randomKars(r *rand.Rand, i int) (*karsv1.KarsSandbox, []string) {
	sb := &karsv1.KarsSandbox{
		TypeMeta:   typeMeta("KarsSandbox"),
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("sb-%d", i), Namespace: "ns", Labels: map[string]string{}, Annotations: map[string]string{}},
		Spec: karsv1.KarsSandboxSpec{
			Runtime:      karsv1.RuntimeSpec{Kind: karsv1.RuntimeBYO, BYO: &karsv1.BYORuntime{Image: fmt.Sprintf("reg.example/agent-%d:%d", r.IntN(9), r.IntN(99)), ContractVersion: "v1"}},
			InferenceRef: karsv1.LocalObjectReference{Name: "inf"},
		},
	}
	lost := []string{"spec.inferenceRef"}
	b := sb.Spec.Runtime.BYO
	if r.IntN(2) == 0 {
		b.Command = []string{pick(r, "/bin/agent", "python", "node")}
	}
	if r.IntN(2) == 0 {
		b.Args = []string{"--flag", fmt.Sprint(r.IntN(100))}
	}
	if r.IntN(2) == 0 {
		b.Port = int32(1024 + r.IntN(7000))
	}
	for j := range r.IntN(4) {
		sb.Spec.Runtime.Env = append(sb.Spec.Runtime.Env, karsv1.RuntimeEnvVar{Name: fmt.Sprintf("VAR_%d", j), Value: fmt.Sprint(r.IntN(1000))})
	}
	for j := range r.IntN(3) {
		sb.Spec.Runtime.ImagePullSecrets = append(sb.Spec.Runtime.ImagePullSecrets, karsv1.LocalObjectReference{Name: fmt.Sprintf("pull-%d", j)})
	}
	if r.IntN(2) == 0 {
		sb.Spec.Resources = &corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(fmt.Sprintf("%dm", 100+r.IntN(900))), corev1.ResourceMemory: resource.MustParse("256Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(fmt.Sprintf("%dMi", 512+r.IntN(4096)))},
		}
	}
	sb.Spec.Suspended = r.IntN(2) == 0
	sb.Spec.Sandbox.Isolation = pick(r, karsv1.IsolationStandard, karsv1.IsolationEnhanced, karsv1.IsolationConfidential, "")
	if r.IntN(2) == 0 {
		sb.Labels["team"] = pick(r, "a", "b")
	}
	if r.IntN(2) == 0 {
		sb.Annotations["note"] = pick(r, "x", "y")
	}
	// kars-only fields, each set or not.
	if r.IntN(2) == 0 {
		sb.Spec.Governance.ToolPolicyRef = &karsv1.LocalObjectReference{Name: "tp"}
		lost = append(lost, "spec.governance")
	}
	if r.IntN(2) == 0 {
		sb.Spec.NetworkPolicy.EgressMode = karsv1.EgressLearn
		lost = append(lost, "spec.networkPolicy")
	}
	if r.IntN(2) == 0 {
		sb.Spec.Agent = &karsv1.AgentSpec{Instructions: "do it"}
		lost = append(lost, "spec.agent")
	}
	if r.IntN(2) == 0 {
		sb.Spec.A2A.AdvertisedSkills = []karsv1.A2ASkill{{Name: "s"}}
		lost = append(lost, "spec.a2a")
	}
	if r.IntN(2) == 0 {
		sb.Spec.UpstreamCompatibility = &karsv1.UpstreamCompatibility{SigsAgentSandbox: ModeTranslate}
		lost = append(lost, "spec.upstreamCompatibility")
	}
	return sb, lost
}

// Property: KarsSandbox → upstream → KarsSandbox keeps every field both
// sides have, and the first step's lossy list is exactly the kars-only
// fields that were set (the second step loses nothing).
func TestRoundTripFromKars(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		sb, wantLost := randomKars(r, i)
		up, lost, err := FromKars(sb, catalog)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range lost {
			got = append(got, f.Path)
		}
		slices.Sort(got)
		slices.Sort(wantLost)
		if !slices.Equal(got, wantLost) {
			t.Fatalf("case %d: lossy %q, want %q", i, got, wantLost)
		}
		if a, b := ofKars(sb), ofUpstream(t, up); a != b {
			t.Fatalf("case %d: upstream differs on shared fields:\nkars     %+v\nupstream %+v", i, a, b)
		}
		res, err := ToKars([]manifest.Object{{Unstructured: up, Source: "rt"}}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Lossy) != 0 {
			t.Fatalf("case %d: converting back lost %v", i, res.Lossy)
		}
		if a, b := ofKars(sb), ofKars(res.Sandboxes[0]); a != b {
			t.Fatalf("case %d: round trip changed shared fields:\nbefore %+v\nafter  %+v", i, a, b)
		}
	}
}

// Property: upstream → KarsSandbox → upstream keeps every shared field, and
// the first step's lossy list is exactly the upstream-only fields that were
// set.
func TestRoundTripFromUpstream(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 500 {
		sb, _ := randomKars(r, i)
		sb.Spec.Governance, sb.Spec.NetworkPolicy, sb.Spec.Agent, sb.Spec.A2A, sb.Spec.UpstreamCompatibility = karsv1.GovernanceSpec{}, karsv1.SandboxNetworkPolicy{}, nil, karsv1.A2AExposure{}, nil
		up, _, err := FromKars(sb, catalog)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]bool{}
		set := func(path string, v any, fields ...string) {
			if err := unstructured.SetNestedField(up.Object, v, fields...); err != nil {
				t.Fatal(err)
			}
			want[path] = true
		}
		pod := []string{"spec", "podTemplate", "spec"}
		if r.IntN(3) == 0 {
			set("spec.service", true, "spec", "service")
		}
		if r.IntN(3) == 0 {
			set("spec.shutdownTime", "2027-01-01T00:00:00Z", "spec", "shutdownTime")
		}
		if r.IntN(3) == 0 {
			set("spec.volumeClaimTemplates", []any{map[string]any{"metadata": map[string]any{"name": "w"}, "spec": map[string]any{}}}, "spec", "volumeClaimTemplates")
		}
		if r.IntN(3) == 0 {
			set("spec.podTemplate.spec.nodeSelector", map[string]any{"a": "b"}, append(pod, "nodeSelector")...)
		}
		if r.IntN(3) == 0 {
			set("spec.podTemplate.metadata", map[string]any{"labels": map[string]any{"x": "y"}}, "spec", "podTemplate", "metadata")
		}
		if r.IntN(3) == 0 {
			set("spec.podTemplate.spec.serviceAccountName", "sa", append(pod, "serviceAccountName")...)
		}
		containers, _, _ := unstructured.NestedSlice(up.Object, append(pod, "containers")...)
		c := containers[0].(map[string]any)
		if r.IntN(3) == 0 {
			c["volumeMounts"] = []any{map[string]any{"name": "w", "mountPath": "/w"}}
			want["spec.podTemplate.spec.containers[0].volumeMounts"] = true
		}
		if r.IntN(3) == 0 {
			env, _ := c["env"].([]any)
			c["env"] = append(env, map[string]any{"name": "TOKEN", "valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": "s", "key": "k"}}})
			want[fmt.Sprintf("spec.podTemplate.spec.containers[0].env[%d]", len(env))] = true
		}
		if r.IntN(3) == 0 {
			containers = append(containers, map[string]any{"name": "sidecar", "image": "side:1"})
			want["spec.podTemplate.spec.containers[1]"] = true
		}
		if err := unstructured.SetNestedSlice(up.Object, containers, append(pod, "containers")...); err != nil {
			t.Fatal(err)
		}
		before := ofUpstream(t, up)
		res, err := ToKars([]manifest.Object{{Unstructured: up, Source: "rt"}}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, f := range res.Lossy {
			got[f.Path] = true
		}
		if !maps.Equal(got, want) {
			t.Fatalf("case %d: lossy %v, want %v", i, res.Lossy, want)
		}
		back, _, err := FromKars(res.Sandboxes[0], catalog)
		if err != nil {
			t.Fatal(err)
		}
		if after := ofUpstream(t, back); before != after {
			t.Fatalf("case %d: round trip changed shared fields:\nbefore %+v\nafter  %+v", i, before, after)
		}
	}
}
