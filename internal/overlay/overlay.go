// Package overlay renders the admission policies that put kars governance
// into a pod that another controller owns: the pod of an upstream
// agents.x-k8s.io Sandbox, in the overlay mode of
// spec.upstreamCompatibility.
//
// The upstream controller creates its pod; a MutatingAdmissionPolicy
// (admissionregistration.k8s.io/v1, evaluated inside the API server, GA
// since Kubernetes 1.36) adds, at creation, exactly what kars's own pod
// would have around the agent: the egress guard as the first init
// container, the router container, their volumes (router config, admin
// Secret, provider keys), the contract environment and the UID-1000
// hardened security context on every other container, the labels the
// sandbox's NetworkPolicy and router Service select, and no ServiceAccount
// token. A ValidatingAdmissionPolicy then refuses any pod of that Sandbox
// that does not have that shape after all mutations — one that reads a
// Secret into an agent container, runs on the host network, or was mutated
// by someone else afterwards — so that the pod either runs governed or
// does not run. Both policies fail closed and match the Sandbox's pods by
// their controller owner reference, by name.
//
// docs/migration.md explains why admission policies rather than a webhook
// or adopting the pod. Everything here is pure: rendered pod in, policies
// out.
package overlay

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
)

// AnnotationDigest on an overlaid pod is the digest of the policy that
// mutated it; the controller compares it with the current policy to tell a
// governed pod from one created before (or around) the overlay.
const AnnotationDigest = "kars.io/overlay-digest"

// LabelSandboxNamespace on the (cluster-scoped) policies names the
// sandbox's namespace; render.LabelSandbox names the sandbox.
const LabelSandboxNamespace = "kars.io/sandbox-namespace"

// volumePrefix renames kars's volumes in the overlaid pod so that they
// cannot collide with the upstream pod's own.
const volumePrefix = "kars-"

// Policies are the four admission objects of one overlay.
type Policies struct {
	Mutating          *admissionv1.MutatingAdmissionPolicy
	MutatingBinding   *admissionv1.MutatingAdmissionPolicyBinding
	Validating        *admissionv1.ValidatingAdmissionPolicy
	ValidatingBinding *admissionv1.ValidatingAdmissionPolicyBinding
	// Digest identifies the mutation; overlaid pods carry it in
	// AnnotationDigest.
	Digest string
}

// Objects returns the policies in apply order (policies before bindings).
func (p *Policies) Objects() []runtime.Object {
	return []runtime.Object{p.Mutating, p.Validating, p.MutatingBinding, p.ValidatingBinding}
}

// Name is the name of every policy object of sandbox sb (cluster-scoped,
// so it carries the namespace; neither part can hold a dot).
func Name(sb *karsv1.KarsSandbox) string { return "kars-overlay." + sb.Namespace + "." + sb.Name }

// Render builds the policies that govern the pods of the upstream Sandbox
// named upstream (in sb's namespace) with the pieces of tmpl, the pod
// template kars rendered for sb (render.Sandbox.Deployment.Spec.Template).
func Render(sb *karsv1.KarsSandbox, upstream string, tmpl *corev1.PodTemplateSpec) (*Policies, error) {
	spec := &tmpl.Spec
	var router *corev1.Container
	var agent *corev1.Container
	for i := range spec.Containers {
		if spec.Containers[i].Name == render.ContainerRouter {
			router = spec.Containers[i].DeepCopy()
		} else if agent == nil {
			agent = spec.Containers[i].DeepCopy()
		}
	}
	if router == nil || agent == nil {
		return nil, fmt.Errorf("overlay: the rendered pod of %s/%s lacks its router or agent container", sb.Namespace, sb.Name)
	}
	rename := func(ms []corev1.VolumeMount) []corev1.VolumeMount {
		out := slices.Clone(ms)
		for i := range out {
			out[i].Name = volumePrefix + out[i].Name
		}
		return out
	}
	router.VolumeMounts = rename(router.VolumeMounts)
	inits := make([]corev1.Container, len(spec.InitContainers))
	for i, c := range spec.InitContainers {
		c = *c.DeepCopy()
		c.VolumeMounts = rename(c.VolumeMounts)
		inits[i] = c
	}
	volumes := make([]corev1.Volume, len(spec.Volumes))
	for i, v := range spec.Volumes {
		v = *v.DeepCopy()
		v.Name = volumePrefix + v.Name
		volumes[i] = v
	}
	// What every non-kars container gets: the agent's contract
	// environment, its security context and its writable directories.
	agentMounts := rename(agent.VolumeMounts)
	envNames := make([]string, len(agent.Env))
	for i, e := range agent.Env {
		envNames[i] = e.Name
	}
	labels := render.Selector(sb)
	annotations := map[string]string{}
	for _, k := range []string{render.AnnotationAdminCert, render.AnnotationAgentConfigDigest, render.AnnotationVerifiedImage} {
		if v, ok := tmpl.Annotations[k]; ok {
			annotations[k] = v
		}
	}

	// lit writes v as a CEL literal of the typed object at typ ("" for
	// plain values and string maps): the API server's CEL environment
	// wants homogeneous literals, so objects are built with their schema
	// types (Object.spec.containers{...}) as the policy language expects.
	lit := func(typ string, v any) string {
		s, err := celLiteral(typ, v)
		if err != nil {
			panic(err) // values come from typed Kubernetes objects
		}
		return s
	}
	var p []string // CEL expressions, each a list of JSONPatch
	add := func(path, typ string, value any) string {
		return fmt.Sprintf(`JSONPatch{op: "add", path: %s, value: %s}`, strconv.Quote(path), lit(typ, value))
	}
	podSC := &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	fixed := []string{
		add("/spec/automountServiceAccountToken", "", false),
		add("/spec/enableServiceLinks", "", false),
		add("/spec/shareProcessNamespace", "", false),
		add("/spec/securityContext", "Object.spec.securityContext", podSC),
	}
	if spec.RuntimeClassName != nil {
		fixed = append(fixed, add("/spec/runtimeClassName", "", *spec.RuntimeClassName))
	}
	if spec.TerminationGracePeriodSeconds != nil {
		fixed = append(fixed, add("/spec/terminationGracePeriodSeconds", "", *spec.TerminationGracePeriodSeconds))
	}
	p = append(p, "["+strings.Join(fixed, ", ")+"]")
	// Labels and annotations, whether or not the maps exist yet.
	for _, m := range []struct {
		field string
		kv    map[string]string
	}{{"labels", labels}, {"annotations", annotations}} {
		var each []string
		for _, k := range slices.Sorted(maps.Keys(m.kv)) {
			each = append(each, add("/metadata/"+m.field+"/"+escapePointer(k), "", m.kv[k]))
		}
		p = append(p, fmt.Sprintf("(has(object.metadata.%s) ? [%s] : [%s])", m.field, strings.Join(each, ", "), add("/metadata/"+m.field, "", m.kv)))
	}
	// Harden the pod's own containers before kars's are inserted, so that
	// the indices are the pod's own.
	// The patches name no value of the pod's own (the API server cannot
	// marshal them back): a reserved variable is removed by index, last
	// first, and kars's variables and mounts are appended.
	reserved := lit("", envNames)
	for _, list := range []string{"initContainers", "containers"} {
		typ := "Object.spec." + list
		var envAdds, mountAdds []string
		for _, e := range agent.Env {
			envAdds = append(envAdds, fmt.Sprintf(`JSONPatch{op: "add", path: P + "/env/-", value: %s}`, lit(typ+".env", e)))
		}
		for _, m := range agentMounts {
			mountAdds = append(mountAdds, fmt.Sprintf(`JSONPatch{op: "add", path: P + "/volumeMounts/-", value: %s}`, lit(typ+".volumeMounts", m)))
		}
		expr := fmt.Sprintf(`(has(object.spec.%[1]s) ? object.spec.%[1]s.transformList(i, c, [
	JSONPatch{op: "add", path: P + "/securityContext", value: %[2]s}] +
	(has(c.env) ? c.env.transformList(j, e, e.name in %[3]s ? [JSONPatch{op: "remove", path: P + "/env/" + string(j)}] : []).flatten().reverse() + [%[4]s]
		: [JSONPatch{op: "add", path: P + "/env", value: %[5]s}]) +
	(has(c.volumeMounts) ? [%[6]s] : [JSONPatch{op: "add", path: P + "/volumeMounts", value: %[7]s}])
).flatten() : [])`, list, lit(typ+".securityContext", agent.SecurityContext), reserved, strings.Join(envAdds, ", "), lit(typ+".env", agent.Env),
			strings.Join(mountAdds, ", "), lit(typ+".volumeMounts", agentMounts))
		p = append(p, strings.ReplaceAll(expr, "P + ", fmt.Sprintf(`"/spec/%s/" + string(i) + `, list)))
	}
	// kars's volumes, init containers (first, in order) and router.
	var vadd []string
	for _, v := range volumes {
		vadd = append(vadd, add("/spec/volumes/-", "Object.spec.volumes", v))
	}
	p = append(p, fmt.Sprintf("(has(object.spec.volumes) ? [%s] : [%s])", strings.Join(vadd, ", "), add("/spec/volumes", "Object.spec.volumes", volumes)))
	var iadd []string
	for i := len(inits) - 1; i >= 0; i-- {
		iadd = append(iadd, add("/spec/initContainers/0", "Object.spec.initContainers", inits[i]))
	}
	p = append(p, fmt.Sprintf("(has(object.spec.initContainers) ? [%s] : [%s])", strings.Join(iadd, ", "), add("/spec/initContainers", "Object.spec.initContainers", inits)))
	p = append(p, "["+add("/spec/containers/-", "Object.spec.containers", router)+"]")
	body := strings.Join(p, " +\n")

	sum := sha256.Sum256([]byte(body))
	digest := hex.EncodeToString(sum[:8])
	body += " +\n[" + fmt.Sprintf(`JSONPatch{op: "add", path: %s, value: %s}`, strconv.Quote("/metadata/annotations/"+escapePointer(AnnotationDigest)), strconv.Quote(digest)) + "]"

	name := Name(sb)
	meta := metav1.ObjectMeta{Name: name, Labels: map[string]string{
		render.LabelManagedBy: render.ManagedBy, render.LabelSandbox: sb.Name, LabelSandboxNamespace: sb.Namespace,
	}}
	match := &admissionv1.MatchResources{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": sb.Namespace}},
		ObjectSelector:    &metav1.LabelSelector{},
		ResourceRules: []admissionv1.NamedRuleWithOperations{{RuleWithOperations: admissionv1.RuleWithOperations{
			Operations: []admissionv1.OperationType{admissionv1.Create},
			Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}, Scope: ptr(admissionv1.NamespacedScope)},
		}}},
		MatchPolicy: ptr(admissionv1.Equivalent),
	}
	// The pods of the upstream Sandbox, by its name: a Sandbox deleted and
	// created again under the same name is governed too.
	owner := fmt.Sprintf(`has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(r, r.apiVersion.startsWith("agents.x-k8s.io/") && r.kind == "Sandbox" && r.name == %s && has(r.controller) && r.controller)`,
		strconv.Quote(upstream))
	conditions := []admissionv1.MatchCondition{{Name: "pod-of-upstream-sandbox", Expression: owner}}
	mp := &admissionv1.MutatingAdmissionPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "MutatingAdmissionPolicy"},
		ObjectMeta: meta,
		Spec: admissionv1.MutatingAdmissionPolicySpec{
			MatchConstraints:   match,
			MatchConditions:    conditions,
			FailurePolicy:      ptr(admissionv1.Fail),
			ReinvocationPolicy: admissionv1.NeverReinvocationPolicy,
			Mutations: []admissionv1.Mutation{{
				PatchType: admissionv1.PatchTypeJSONPatch,
				JSONPatch: &admissionv1.JSONPatch{Expression: body},
			}},
		},
	}
	routerImage := strconv.Quote(router.Image)
	nonKars := fmt.Sprintf(`c.name != %s`, strconv.Quote(render.ContainerRouter))
	validations := []admissionv1.Validation{
		{Expression: fmt.Sprintf(`has(object.metadata.annotations) && %s in object.metadata.annotations && object.metadata.annotations[%s] == %s`,
			strconv.Quote(AnnotationDigest), strconv.Quote(AnnotationDigest), strconv.Quote(digest)),
			Message: "the pod was not admitted through kars's overlay mutation for this sandbox (or was changed afterwards)"},
		{Expression: fmt.Sprintf(`object.spec.containers.exists(c, c.name == %s && c.image == %s)`, strconv.Quote(render.ContainerRouter), routerImage),
			Message: "the pod lacks the kars router container"},
		{Expression: fmt.Sprintf(`has(object.spec.initContainers) && object.spec.initContainers[0].name == %s`, strconv.Quote(render.ContainerEgressGuard)),
			Message: "the kars egress guard must be the pod's first init container"},
		{Expression: `has(object.spec.automountServiceAccountToken) && !object.spec.automountServiceAccountToken`,
			Message: "the pod must not mount a ServiceAccount token"},
		{Expression: `!(has(object.spec.hostNetwork) && object.spec.hostNetwork) && !(has(object.spec.hostPID) && object.spec.hostPID) && !(has(object.spec.hostIPC) && object.spec.hostIPC)`,
			Message: "a governed pod cannot share the host's network, PID or IPC namespace"},
		{Expression: fmt.Sprintf(`object.spec.containers.all(c, !(%s) || (has(c.securityContext) && has(c.securityContext.runAsUser) && c.securityContext.runAsUser == %d && !(has(c.securityContext.privileged) && c.securityContext.privileged)))`,
			nonKars, render.AgentUID),
			Message: fmt.Sprintf("every container but the router must run as UID %d, unprivileged", render.AgentUID)},
		{Expression: fmt.Sprintf(`object.spec.containers.all(c, !(%s) || ((!has(c.env) || c.env.all(e, !has(e.valueFrom) || !has(e.valueFrom.secretKeyRef))) && (!has(c.envFrom) || c.envFrom.all(f, !has(f.secretRef)))))`, nonKars),
			Message: "an agent container reads a Secret (env valueFrom secretKeyRef or envFrom secretRef): credentials belong to the kars router; remove them from the upstream Sandbox's pod template"},
		{Expression: fmt.Sprintf(`!has(object.spec.volumes) || object.spec.volumes.filter(v, has(v.secret) || has(v.projected)).all(v, object.spec.containers.all(c, !(%s) || !has(c.volumeMounts) || c.volumeMounts.all(m, m.name != v.name)))`, nonKars),
			Message: "an agent container mounts a Secret or projected volume: credentials belong to the kars router"},
	}
	vp := &admissionv1.ValidatingAdmissionPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "ValidatingAdmissionPolicy"},
		ObjectMeta: meta,
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			MatchConstraints: match,
			MatchConditions:  conditions,
			FailurePolicy:    ptr(admissionv1.Fail),
			Validations:      validations,
		},
	}
	return &Policies{
		Mutating: mp,
		MutatingBinding: &admissionv1.MutatingAdmissionPolicyBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "MutatingAdmissionPolicyBinding"},
			ObjectMeta: meta,
			Spec:       admissionv1.MutatingAdmissionPolicyBindingSpec{PolicyName: name},
		},
		Validating: vp,
		ValidatingBinding: &admissionv1.ValidatingAdmissionPolicyBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "ValidatingAdmissionPolicyBinding"},
			ObjectMeta: meta,
			Spec:       admissionv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: name, ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny}},
		},
		Digest: digest,
	}, nil
}

// escapePointer escapes a map key for a JSON pointer (RFC 6901 §3).
func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func ptr[T any](v T) *T { return &v }

// celLiteral writes v — a typed Kubernetes value, as its JSON form — as a
// CEL literal. Objects are constructed as typ{field: …} (typ is the
// schema type, Object.spec.containers for a container, and nested fields
// extend it); string maps (labels, resource lists) and plain values are
// written as they are.
func celLiteral(typ string, v any) (string, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	var j any
	if err := json.Unmarshal(raw, &j); err != nil {
		return "", err
	}
	var b strings.Builder
	writeCEL(&b, typ, j)
	return b.String(), nil
}

// stringMaps are the fields of the values kars writes whose schema is a
// map, not an object.
var stringMaps = map[string]bool{"limits": true, "requests": true, "labels": true, "annotations": true, "nodeSelector": true}

func writeCEL(b *strings.Builder, typ string, v any) {
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case float64:
		if x == float64(int64(x)) {
			b.WriteString(strconv.FormatInt(int64(x), 10))
		} else {
			b.WriteString(strconv.FormatFloat(x, 'g', -1, 64))
		}
	case string:
		b.WriteString(strconv.Quote(x))
	case []any:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			writeCEL(b, typ, e) // list elements have the list field's type
		}
		b.WriteByte(']')
	case map[string]any:
		field := typ[strings.LastIndexByte(typ, '.')+1:]
		if typ == "" || stringMaps[field] {
			b.WriteByte('{')
			for i, k := range slices.Sorted(maps.Keys(x)) {
				if i > 0 {
					b.WriteString(", ")
				}
				b.WriteString(strconv.Quote(k))
				b.WriteString(": ")
				writeCEL(b, "", x[k])
			}
			b.WriteByte('}')
			return
		}
		b.WriteString(typ)
		b.WriteByte('{')
		for i, k := range slices.Sorted(maps.Keys(x)) {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(k)
			b.WriteString(": ")
			writeCEL(b, typ+"."+k, x[k])
		}
		b.WriteByte('}')
	}
}
