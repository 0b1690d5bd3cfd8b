// Package agentsandbox converts between kubernetes-sigs/agent-sandbox
// Sandboxes (agents.x-k8s.io) and KarsSandboxes, and builds the upstream
// objects kars's co-existence modes need.
//
// It reads agents.x-k8s.io/v1beta1 (agent-sandbox 1.0, operatingMode
// Running|Suspended) and, read-only, v1alpha1 (replicas 0|1) Sandboxes, and
// writes v1beta1. ToKars turns upstream Sandboxes into kars bundles;
// FromKars turns a KarsSandbox into an upstream Sandbox; Overlay builds the
// KarsSandbox that governs an upstream-owned pod; Translate (translate.go)
// wraps a rendered governed pod into an upstream Sandbox for the
// controller. The two sides share the agent container (image, command,
// args, port, env, resources), image pull secrets, suspension and the Kata
// runtime class; every other field is named as lossy (docs/migration.md has
// the table). Everything here is pure and works on unstructured objects,
// so kars's go.mod does not depend on the upstream module.
package agentsandbox

import (
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/blueprint"
	"github.com/kars-io/kars/internal/convert/lossy"
	"github.com/kars-io/kars/internal/convert/manifest"
	"github.com/kars-io/kars/internal/convert/podmap"
	"github.com/kars-io/kars/internal/render"
)

// Group is agent-sandbox's core API group.
const Group = "agents.x-k8s.io"

// The versions this package reads; it writes V1beta1 only.
const (
	V1beta1  = "v1beta1"
	V1alpha1 = "v1alpha1"
)

// GroupVersionKind of the Sandboxes this package writes.
var GroupVersionKind = schema.GroupVersionKind{Group: Group, Version: V1beta1, Kind: "Sandbox"}

// Operating modes of a v1beta1 Sandbox.
const (
	OperatingRunning   = "Running"
	OperatingSuspended = "Suspended"
)

// The values of spec.upstreamCompatibility.sigsAgentSandbox.
const (
	ModeOff       = "off"
	ModeTranslate = "translate"
	ModeOverlay   = "overlay"
	ModeObserve   = "observe"
)

// Labels and annotations on converted objects.
const (
	// LabelDevOnly marks a sandbox whose kars-only features were defaulted
	// off by a conversion (offline model, no tools): fit for trying out,
	// not for production until re-configured.
	LabelDevOnly            = "kars.io/dev-only"
	AnnotationConvertedFrom = "kars.io/converted-from" // "agents.x-k8s.io/v1beta1/Sandbox"
	AnnotationMigrationDate = "kars.io/migration-date"
	// agentContainer names the agent's container in a Sandbox kars writes.
	agentContainer = "agent"
)

// Defaults are the kars features an upstream Sandbox cannot express: a
// converted sandbox gets them switched off (or at their strictest) and the
// preamble says so.
var Defaults = []string{
	"inference budget: the InferencePolicy uses the offline model with no token budget; set a provider and budget (`kars credentials set`, `kars model set`)",
	"tool governance: the ToolPolicy allows inference only; every tool, MCP, shell and egress action is denied until you add rules",
	"mesh: the sandbox is in no mesh (registryMode local, no pairings); pair it with `kars pair`",
	"A2A agent card: exposure is off (spec.a2a.enabled false)",
	"attestation: isolation is not confidential, so there is no confidential-runtime attestation; use --isolation confidential for a Kata VM",
	"the sandbox is labelled " + LabelDevOnly + "=true until you re-configure the above",
}

// Options shape ToKars and Overlay.
type Options struct {
	// Isolation of the sandboxes when the source does not choose
	// confidential; empty means enhanced.
	Isolation karsv1.IsolationLevel
	// Date is written into kars.io/migration-date.
	Date time.Time
}

// Result is a conversion to kars.
type Result struct {
	// Objects in apply order: per Sandbox, InferencePolicy, ToolPolicy,
	// KarsSandbox.
	Objects []any
	// Sandboxes are the KarsSandboxes among Objects.
	Sandboxes []*karsv1.KarsSandbox
	// Lossy names every upstream field that was not carried.
	Lossy []lossy.Field
	// Notes are things to check that lose nothing.
	Notes []string
	// Skipped names input objects of other kinds.
	Skipped []string
}

// ToKars converts every Sandbox of in into a KarsSandbox with an offline
// InferencePolicy and an inference-only ToolPolicy, in the Sandbox's own
// namespace, labelled dev-only (see Defaults).
func ToKars(in []manifest.Object, o Options) (*Result, error) {
	res := &Result{}
	for _, obj := range in {
		ok, err := isSandbox(obj)
		if err != nil {
			return nil, err
		}
		if !ok {
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s (%s): not an agent-sandbox Sandbox", obj.Ref(), obj.Source))
			continue
		}
		d := lossy.New(obj.Ref(), obj.Object)
		sb, notes, err := readSandbox(d, obj, o)
		if err != nil {
			return nil, &manifest.Error{Source: obj.Source, Err: err}
		}
		ip, tp := policies(sb)
		sb.Labels[LabelDevOnly] = "true"
		res.Objects = append(res.Objects, ip, tp, sb)
		res.Sandboxes = append(res.Sandboxes, sb)
		res.Notes = append(res.Notes, notes...)
		res.Lossy = append(res.Lossy, d.Lossy()...)
	}
	if len(res.Sandboxes) == 0 {
		return nil, fmt.Errorf("no agents.x-k8s.io Sandbox in the input (found %d other objects)", len(in))
	}
	return res, nil
}

// isSandbox reports whether obj is an upstream Sandbox this package reads,
// and refuses an upstream Sandbox of a version it does not know.
func isSandbox(obj manifest.Object) (bool, error) {
	gv, _ := schema.ParseGroupVersion(obj.GetAPIVersion())
	if gv.Group != Group {
		return false, nil
	}
	if gv.Version != V1beta1 && gv.Version != V1alpha1 {
		return false, &manifest.Error{Source: obj.Source, Err: fmt.Errorf(
			"%s: apiVersion %s is not one this converter reads (agents.x-k8s.io/v1beta1, and v1alpha1 read-only)", obj.Ref(), obj.GetAPIVersion())}
	}
	if obj.GetKind() != "Sandbox" {
		return false, nil
	}
	return true, nil
}

// policies returns the dev-only companions of a converted sandbox.
func policies(sb *karsv1.KarsSandbox) (*karsv1.InferencePolicy, *karsv1.ToolPolicy) {
	annotations := map[string]string{}
	for _, k := range []string{AnnotationConvertedFrom, AnnotationMigrationDate} {
		if v, ok := sb.Annotations[k]; ok {
			annotations[k] = v
		}
	}
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: sb.Namespace, Labels: map[string]string{"kars.io/sandbox": sb.Name, LabelDevOnly: "true"},
			Annotations: maps.Clone(annotations)}
	}
	ip := &karsv1.InferencePolicy{TypeMeta: typeMeta("InferencePolicy"), ObjectMeta: meta(sb.Spec.InferenceRef.Name),
		Spec: karsv1.InferencePolicySpec{ModelPreference: karsv1.ModelPreference{Primary: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "kars-offline"}}}}
	tp := &karsv1.ToolPolicy{TypeMeta: typeMeta("ToolPolicy"), ObjectMeta: meta(sb.Spec.Governance.ToolPolicyRef.Name),
		Spec: karsv1.ToolPolicySpec{Rules: []karsv1.ToolRule{{Name: "inference", Effect: karsv1.EffectAllow, Actions: []string{"inference:*"}}}}}
	return ip, tp
}

// readSandbox reads one upstream Sandbox (either version) into a
// KarsSandbox with a BYO runtime.
func readSandbox(d *lossy.Doc, obj manifest.Object, o Options) (*karsv1.KarsSandbox, []string, error) {
	for _, p := range []string{"apiVersion", "kind", "metadata.name", "metadata.namespace", "metadata.uid",
		"metadata.resourceVersion", "metadata.generation", "metadata.creationTimestamp", "metadata.managedFields",
		"metadata.selfLink", "metadata.finalizers", "metadata.ownerReferences", "metadata.labels", "metadata.annotations", "status"} {
		d.Carry(p)
	}
	name := obj.GetName()
	if _, err := render.NamesFor(&karsv1.KarsSandbox{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		return nil, nil, fmt.Errorf("%s: %w; rename the Sandbox", obj.Ref(), err)
	}
	ns := obj.GetNamespace()
	if ns == "" {
		ns = "default"
	}
	labels := maps.Clone(obj.GetLabels())
	if labels == nil {
		labels = map[string]string{}
	}
	labels["kars.io/sandbox"] = name
	annotations := maps.Clone(obj.GetAnnotations())
	if annotations == nil {
		annotations = map[string]string{}
	}
	delete(annotations, "kubectl.kubernetes.io/last-applied-configuration")
	annotations[AnnotationConvertedFrom] = obj.GetAPIVersion() + "/Sandbox"
	annotations[AnnotationMigrationDate] = o.Date.UTC().Format(time.DateOnly)

	sb := &karsv1.KarsSandbox{TypeMeta: typeMeta("KarsSandbox"),
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels, Annotations: annotations},
		Spec: karsv1.KarsSandboxSpec{
			InferenceRef: karsv1.LocalObjectReference{Name: blueprint.InferencePolicyName(name)},
			Governance:   karsv1.GovernanceSpec{ToolPolicyRef: &karsv1.LocalObjectReference{Name: blueprint.ToolPolicyName(name)}},
		},
	}
	var notes []string
	if err := readPod(d, sb, o); err != nil {
		return nil, nil, err
	}
	notes = append(notes, fmt.Sprintf("%s/%s: image %s must implement the kars runtime contract and carry the label org.kars.runtime.contract=v1 (docs/runtime-contract.md); the controller checks it before the pod starts",
		ns, name, sb.Spec.Runtime.BYO.Image))

	gv, _ := schema.ParseGroupVersion(obj.GetAPIVersion())
	if gv.Version == V1alpha1 {
		replicas, set, err := d.Int("spec.replicas")
		if err != nil {
			return nil, nil, err
		}
		if set && replicas == 0 {
			sb.Spec.Suspended = true
		}
	} else {
		mode, err := d.String("spec.operatingMode")
		if err != nil {
			return nil, nil, err
		}
		switch mode {
		case "", OperatingRunning:
		case OperatingSuspended:
			sb.Spec.Suspended = true
		default:
			return nil, nil, fmt.Errorf("%s: spec.operatingMode %q is neither Running nor Suspended", obj.Ref(), mode)
		}
		d.Drop("spec.service", "kars fronts the agent with its router's Service; the agent itself is reachable only through it")
	}
	d.Drop("spec.volumeClaimTemplates", "the agent's workspace is an emptyDir at /sandbox; persistent volume claims are not carried")
	d.Drop("spec.shutdownTime", "a KarsSandbox does not expire; delete it (or suspend it) when it is done")
	d.Drop("spec.shutdownPolicy", "a KarsSandbox does not expire; delete it (or suspend it) when it is done")
	return sb, notes, nil
}

// readPod reads the pod template's agent container and the pod settings
// kars shares.
func readPod(d *lossy.Doc, sb *karsv1.KarsSandbox, o Options) error {
	const spec = "spec.podTemplate.spec"
	n := d.Len(spec + ".containers")
	if n == 0 {
		return fmt.Errorf("%s: %s.containers is empty", d.Object(), spec)
	}
	agent := 0
	if def, ok := sb.Annotations["kubectl.kubernetes.io/default-container"]; ok {
		for i := range n {
			if v, _ := d.Peek(fmt.Sprintf("%s.containers[%d].name", spec, i)); v == def {
				agent = i
			}
		}
	}
	for i := range n {
		if i != agent {
			name, _ := d.Peek(fmt.Sprintf("%s.containers[%d].name", spec, i))
			d.Drop(fmt.Sprintf("%s.containers[%d]", spec, i), fmt.Sprintf("container %v: a kars sandbox runs one agent container beside its router; sidecars are not carried", name))
		}
	}
	c := fmt.Sprintf("%s.containers[%d]", spec, agent)
	d.Carry(c + ".name")
	image, err := d.String(c + ".image")
	if err != nil {
		return err
	}
	if image == "" {
		return fmt.Errorf("%s: %s.image is required", d.Object(), c)
	}
	byo := &karsv1.BYORuntime{Image: image, ContractVersion: "v1"}
	if byo.Command, err = d.Strings(c + ".command"); err != nil {
		return err
	}
	if byo.Args, err = d.Strings(c + ".args"); err != nil {
		return err
	}
	for i := range d.Len(c + ".ports") {
		pp := fmt.Sprintf("%s.ports[%d]", c, i)
		port, _, err := d.Int(pp + ".containerPort")
		if err != nil {
			return err
		}
		proto, _ := d.Peek(pp + ".protocol")
		if i > 0 || (proto != nil && proto != "TCP") {
			d.Drop(pp, "the agent serves the runtime contract on one TCP port; other ports are not carried")
			continue
		}
		if port < 1024 || port > 65535 || port == 8443 || port == 8444 || port == 8445 {
			d.Drop(pp, fmt.Sprintf("port %d is below 1024 or one of the router's ports 8443-8445; the agent listens on kars's default 18789", port))
			continue
		}
		byo.Port = int32(port)
		d.Carry(pp)
	}
	sb.Spec.Runtime = karsv1.RuntimeSpec{Kind: karsv1.RuntimeBYO, BYO: byo}
	sb.Spec.Runtime.Env = podmap.Env(d, c+".env")
	podmap.EnvFrom(d, c+".envFrom")
	if sb.Spec.Resources, err = podmap.Resources(d, c+".resources"); err != nil {
		return err
	}
	sb.Spec.Runtime.ImagePullSecrets = podmap.PullSecrets(d, spec+".imagePullSecrets")

	isolation := o.Isolation
	if isolation == "" {
		isolation = karsv1.IsolationEnhanced
	}
	rc, err := d.String(spec + ".runtimeClassName")
	if err != nil {
		return err
	}
	switch rc {
	case "":
	case render.ConfidentialRuntimeClass:
		isolation = karsv1.IsolationConfidential
	default:
		d.Drop(spec+".runtimeClassName", fmt.Sprintf("runtime class %q: kars offers standard, enhanced (seccomp) and confidential (%s, a Kata VM) isolation", rc, render.ConfidentialRuntimeClass))
	}
	sc := c + ".securityContext"
	seccomp, err := d.String(sc + ".seccompProfile.type")
	if err != nil {
		return err
	}
	profile, err := d.String(sc + ".seccompProfile.localhostProfile")
	if err != nil {
		return err
	}
	if seccomp == string(corev1.SeccompProfileTypeRuntimeDefault) && isolation == karsv1.IsolationEnhanced && o.Isolation == "" {
		isolation = karsv1.IsolationStandard
	}
	if seccomp == string(corev1.SeccompProfileTypeLocalhost) && profile != render.DefaultSeccompProfile {
		d.Drop(sc+".seccompProfile.localhostProfile", fmt.Sprintf("kars uses its own seccomp profile %s for enhanced isolation", render.DefaultSeccompProfile))
	}
	if seccomp == string(corev1.SeccompProfileTypeUnconfined) {
		d.Drop(sc+".seccompProfile", "a kars agent always runs under seccomp")
	}
	for _, f := range []string{"readOnlyRootFilesystem", "runAsNonRoot"} {
		v, set, err := d.Bool(sc + "." + f)
		if err != nil {
			return err
		}
		if set && !v {
			d.Drop(sc+"."+f, "kars cannot turn this off: the agent runs as UID 1000 on a read-only root, writing only to /sandbox and /tmp")
		}
	}
	sb.Spec.Sandbox = karsv1.SandboxIsolationSpec{Isolation: isolation}
	// Settings that say what kars enforces anyway carry nothing away.
	same := map[string]any{"runAsUser": render.AgentUID, "runAsGroup": render.AgentUID, "allowPrivilegeEscalation": false, "privileged": false}
	for f, want := range same {
		if v, ok := d.Peek(sc + "." + f); ok && fmt.Sprint(v) == fmt.Sprint(want) {
			d.Carry(sc + "." + f)
		}
	}
	if drop, _ := d.Peek(sc + ".capabilities.drop"); fmt.Sprint(drop) == "[ALL]" && !d.Has(sc+".capabilities.add") {
		d.Carry(sc + ".capabilities")
	}

	for _, f := range []string{"runAsUser", "runAsGroup", "allowPrivilegeEscalation", "privileged", "capabilities", "procMount", "seLinuxOptions", "appArmorProfile", "windowsOptions"} {
		if d.Carried(sc + "." + f) {
			continue
		}
		d.Drop(sc+"."+f, "kars sets the agent's security context itself (UID 1000, no privilege escalation, no capabilities)")
	}
	for _, f := range []string{"volumeMounts", "volumeDevices"} {
		d.Drop(c+"."+f, "the agent writes only to /sandbox and /tmp; kars mounts nothing else into it")
	}
	for _, f := range []string{"livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "workingDir", "imagePullPolicy", "stdin", "stdinOnce", "tty", "terminationMessagePath", "terminationMessagePolicy", "restartPolicy", "resizePolicy"} {
		d.Drop(c+"."+f, "kars renders the agent container's probes and lifecycle itself")
	}
	d.Drop(spec+".initContainers", "kars runs its own init steps (the egress guard); user init containers are not carried")
	d.Drop(spec+".volumes", "the agent writes only to /sandbox and /tmp; kars mounts nothing else into it")
	d.Drop(spec+".serviceAccountName", "kars gives each sandbox its own ServiceAccount with no token in the agent; cloud identity belongs to the router (InferencePolicy auth)")
	if v, _ := d.Peek(spec + ".automountServiceAccountToken"); v == false {
		d.Carry(spec + ".automountServiceAccountToken") // kars never mounts one either
	} else {
		d.Drop(spec+".automountServiceAccountToken", "kars never mounts a ServiceAccount token into the agent")
	}
	d.Drop(spec+".securityContext", "kars sets the pod's security context itself")
	for _, f := range []string{"nodeSelector", "nodeName", "tolerations", "affinity", "topologySpreadConstraints", "priorityClassName", "priority",
		"schedulerName", "dnsPolicy", "dnsConfig", "hostAliases", "hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace",
		"enableServiceLinks", "terminationGracePeriodSeconds", "activeDeadlineSeconds", "restartPolicy", "subdomain", "hostname",
		"setHostnameAsFQDN", "overhead", "preemptionPolicy", "readinessGates", "os", "schedulingGates", "resourceClaims", "resources", "hostUsers"} {
		d.Drop(spec+"."+f, "kars renders its own hardened pod; scheduling and pod-level settings are not carried")
	}
	d.Drop("spec.podTemplate.metadata", "kars labels and annotates its pod itself; pod template metadata is not carried")
	return nil
}

func typeMeta(kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: karsv1.GroupVersion.String(), Kind: kind}
}
