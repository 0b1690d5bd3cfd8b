package agentsandbox

import (
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/lossy"
	"github.com/kars-io/kars/internal/render"
)

// Reasons for the kars-only fields an upstream Sandbox cannot hold.
const (
	reasonUngoverned = "an upstream Sandbox's pod has no kars router: "
)

// FromKars converts a KarsSandbox into an agents.x-k8s.io/v1beta1 Sandbox
// running the same agent container, and names every KarsSandbox field the
// upstream Sandbox cannot hold. catalog resolves the image of first-class
// runtimes (BYO images are used as written).
//
// The result is for comparison and hand-over, not a governed sandbox: the
// pod has no router, egress guard or policy. A cluster that must run pods
// through the upstream controller and stay governed uses translate mode
// (Translate), which wraps the whole rendered pod instead.
func FromKars(sb *karsv1.KarsSandbox, catalog render.Catalog) (*unstructured.Unstructured, []lossy.Field, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(sb)
	if err != nil {
		return nil, nil, err
	}
	d := lossy.New(karsv1.GroupVersion.String()+" KarsSandbox "+sb.Namespace+"/"+sb.Name, m)
	for _, p := range []string{"apiVersion", "kind", "metadata", "status"} {
		d.Carry(p)
	}
	rt, err := catalog.Runtime(sb, "")
	if err != nil {
		return nil, nil, fmt.Errorf("KarsSandbox %s/%s: %w", sb.Namespace, sb.Name, err)
	}
	d.Carry("spec.runtime.kind")
	if sb.Spec.Runtime.Kind == karsv1.RuntimeBYO {
		for _, f := range []string{"image", "command", "args", "port", "contractVersion"} {
			d.Carry("spec.runtime.byo." + f)
		}
	} else {
		d.Drop("spec.runtime.kind", fmt.Sprintf("the %s adapter is kars's runtime image %s; the upstream Sandbox runs that image, but converting back gives a BYO runtime", sb.Spec.Runtime.Kind, rt.Image))
		for _, b := range []string{"openclaw", "openaiAgents", "microsoftAgentFramework", "langGraph", "anthropic", "pydanticAi", "semanticKernel"} {
			d.Drop("spec.runtime."+b, "the runtime adapter's configuration (agent code, entrypoint, config) is kars's; the upstream pod does not carry it")
		}
	}
	d.Carry("spec.runtime.env")
	d.Carry("spec.runtime.imagePullSecrets")
	d.Carry("spec.resources")
	d.Carry("spec.suspended")
	d.Carry("spec.sandbox")
	d.Drop("spec.inferenceRef", reasonUngoverned+"the InferencePolicy's models, budgets, rate limits and content safety are not enforced, and the agent would need its own credentials")
	d.Drop("spec.governance", reasonUngoverned+"tool calls are not evaluated against a ToolPolicy nor audited, and the pod is in no mesh")
	d.Drop("spec.networkPolicy", reasonUngoverned+"no egress guard, no default-deny NetworkPolicy, no egress allowlist")
	d.Drop("spec.agent", "instructions and tools reach a kars runtime through its contract environment; an upstream pod has no such contract")
	if sb.Spec.A2A.Enabled || len(sb.Spec.A2A.AdvertisedSkills) > 0 || len(sb.Spec.A2A.AllowedCallers) > 0 {
		d.Drop("spec.a2a", "A2A exposure through the kars gateway and the signed agent card need the kars router")
	} else {
		d.Carry("spec.a2a") // off: nothing to lose
	}
	d.Drop("spec.upstreamCompatibility", "the co-existence mode is kars's setting")

	labels := maps.Clone(sb.Labels)
	delete(labels, "kars.io/sandbox")
	delete(labels, LabelDevOnly)
	annotations := maps.Clone(sb.Annotations)
	if annotations == nil {
		annotations = map[string]string{}
	}
	annotations[AnnotationConvertedFrom] = karsv1.GroupVersion.String() + "/KarsSandbox"

	c := corev1.Container{
		Name:    agentContainer,
		Image:   rt.Image,
		Command: rt.Command,
		Args:    rt.Args,
		Ports:   []corev1.ContainerPort{{Name: "agent", ContainerPort: rt.Port, Protocol: corev1.ProtocolTCP}},
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr(render.AgentUID),
			RunAsGroup:               ptr(render.AgentUID),
			RunAsNonRoot:             ptr(true),
			ReadOnlyRootFilesystem:   ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           seccompFor(sb.Spec.IsolationLevel()),
		},
	}
	if sb.Spec.Runtime.Kind == karsv1.RuntimeBYO && (sb.Spec.Runtime.BYO == nil || sb.Spec.Runtime.BYO.Port == 0) {
		c.Ports = nil // the kars default port is implied; say nothing
	}
	for _, e := range sb.Spec.Runtime.Env {
		c.Env = append(c.Env, corev1.EnvVar{Name: e.Name, Value: e.Value})
	}
	if r := sb.Spec.Resources; r != nil {
		c.Resources = *r.DeepCopy()
	}
	pod := corev1.PodSpec{Containers: []corev1.Container{c}, AutomountServiceAccountToken: ptr(false)}
	for _, s := range sb.Spec.Runtime.ImagePullSecrets {
		pod.ImagePullSecrets = append(pod.ImagePullSecrets, corev1.LocalObjectReference{Name: s.Name})
	}
	if sb.Spec.IsolationLevel() == karsv1.IsolationConfidential {
		pod.RuntimeClassName = ptr(render.ConfidentialRuntimeClass)
	}
	podMap, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&pod)
	if err != nil {
		return nil, nil, err
	}
	mode := OperatingRunning
	if sb.Spec.Suspended {
		mode = OperatingSuspended
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"spec": map[string]any{
			"operatingMode": mode,
			"podTemplate":   map[string]any{"spec": podMap},
		},
	}}
	u.SetGroupVersionKind(GroupVersionKind)
	u.SetName(sb.Name)
	u.SetNamespace(sb.Namespace)
	u.SetLabels(labels)
	u.SetAnnotations(annotations)
	if sb.Spec.Resources == nil {
		containers, _, _ := unstructured.NestedSlice(u.Object, "spec", "podTemplate", "spec", "containers")
		delete(containers[0].(map[string]any), "resources")
		_ = unstructured.SetNestedSlice(u.Object, containers, "spec", "podTemplate", "spec", "containers")
	}
	return u, d.Lossy(), nil
}

func seccompFor(level karsv1.IsolationLevel) *corev1.SeccompProfile {
	if level == karsv1.IsolationStandard {
		return &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
	}
	return &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptr(render.DefaultSeccompProfile)}
}

func ptr[T any](v T) *T { return &v }
