package agentsandbox

import (
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// Translate wraps the governed pod kars rendered for a sandbox (agent,
// router, egress guard, their volumes) into an upstream v1beta1 Sandbox of
// the same name, so that the upstream controller runs the pod and kars
// governs it exactly as it would its own Deployment. labels go on the
// Sandbox; the pod keeps the template's labels, which the sandbox's
// NetworkPolicy and router Service select. The caller sets the owner
// reference.
func Translate(name, namespace string, labels map[string]string, tmpl corev1.PodTemplateSpec, suspended bool) (*unstructured.Unstructured, error) {
	podSpec, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&tmpl.Spec)
	if err != nil {
		return nil, err
	}
	mode := OperatingRunning
	if suspended {
		mode = OperatingSuspended
	}
	podMeta := map[string]any{}
	if len(tmpl.Labels) > 0 {
		podMeta["labels"] = stringMap(tmpl.Labels)
	}
	if len(tmpl.Annotations) > 0 {
		podMeta["annotations"] = stringMap(tmpl.Annotations)
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"spec": map[string]any{
			"operatingMode": mode,
			"podTemplate":   map[string]any{"metadata": podMeta, "spec": podSpec},
		},
	}}
	u.SetGroupVersionKind(GroupVersionKind)
	u.SetName(name)
	u.SetNamespace(namespace)
	u.SetLabels(maps.Clone(labels))
	return u, nil
}

func stringMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Status is what kars reads from an upstream Sandbox's status.
type Status struct {
	// Found is false when the Sandbox does not exist.
	Found bool
	// OperatingMode is the Sandbox's spec.operatingMode ("Running" when
	// unset), or "Running"/"Suspended" from a v1alpha1 replicas count.
	OperatingMode string
	// Ready is the Ready condition; Reason and Message explain it.
	Ready           bool
	Reason, Message string
	// ObservedGeneration of the Ready condition; stale when it is below
	// Generation.
	ObservedGeneration, Generation int64
	// PodIPs, NodeName and ServiceFQDN as the upstream reports them.
	PodIPs      []string
	NodeName    string
	ServiceFQDN string
	// Conditions are the upstream conditions as written.
	Conditions []metav1.Condition
}

// ReadStatus reads an upstream Sandbox's spec.operatingMode and status.
func ReadStatus(u *unstructured.Unstructured) (Status, error) {
	st := Status{Found: true, OperatingMode: OperatingRunning, Generation: u.GetGeneration(), Reason: "NoReadyCondition",
		Message: "the upstream controller has not reported readiness yet"}
	if mode, _, _ := unstructured.NestedString(u.Object, "spec", "operatingMode"); mode != "" {
		st.OperatingMode = mode
	}
	if r, ok, _ := unstructured.NestedInt64(u.Object, "spec", "replicas"); ok && r == 0 {
		st.OperatingMode = OperatingSuspended
	}
	raw, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for i, c := range raw {
		m, ok := c.(map[string]any)
		if !ok {
			return st, fmt.Errorf("status.conditions[%d] is not an object", i)
		}
		var cond metav1.Condition
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, &cond); err != nil {
			return st, fmt.Errorf("status.conditions[%d]: %w", i, err)
		}
		st.Conditions = append(st.Conditions, cond)
	}
	if c := meta.FindStatusCondition(st.Conditions, "Ready"); c != nil {
		st.Ready = c.Status == metav1.ConditionTrue
		st.Reason, st.Message, st.ObservedGeneration = c.Reason, c.Message, c.ObservedGeneration
	}
	st.PodIPs, _, _ = unstructured.NestedStringSlice(u.Object, "status", "podIPs")
	st.NodeName, _, _ = unstructured.NestedString(u.Object, "status", "nodeName")
	st.ServiceFQDN, _, _ = unstructured.NestedString(u.Object, "status", "serviceFQDN")
	return st, nil
}
