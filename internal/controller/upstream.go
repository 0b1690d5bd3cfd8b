package controller

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/agentsandbox"
	"github.com/kars-io/kars/internal/render"
)

// Co-existence with the upstream agent-sandbox controller
// (spec.upstreamCompatibility.sigsAgentSandbox, docs/migration.md):
//
//   - off: kars runs the pod itself (its Deployment).
//   - translate: kars wraps the governed pod it renders into an upstream
//     Sandbox it owns; the upstream controller runs the pod.
//   - overlay: the upstream controller owns a Sandbox and its pod; kars
//     installs admission policies (internal/overlay) that add its
//     governance to that pod at creation, renders the router's config
//     around it, and never adopts or patches anything upstream.
//   - observe: kars only mirrors the upstream Sandbox's status.
//
// Switching keeps the agent governed throughout: kars's own Deployment is
// removed only once the governed replacement is ready, and the overlay's
// policies stay while the upstream Sandbox they govern still runs.

// +kubebuilder:rbac:groups=agents.x-k8s.io,resources=sandboxes,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingadmissionpolicies;mutatingadmissionpolicybindings;validatingadmissionpolicies;validatingadmissionpolicybindings,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list

// Condition types and reasons of the co-existence modes.
const (
	// ConditionUpstreamReady mirrors the upstream Sandbox's Ready
	// condition in translate, overlay and observe mode.
	ConditionUpstreamReady = "UpstreamReady"

	ReasonUpstreamNotServed    = "UpstreamAPINotServed"
	ReasonUpstreamNotFound     = "UpstreamNotFound"
	ReasonUpstreamRefMissing   = "UpstreamRefMissing"
	ReasonUpstreamConflict     = "UpstreamConflict"
	ReasonOverlayPodUngoverned = "OverlayPodUngoverned"
	ReasonObserveOnly          = "ObserveOnly"
)

// upstreamRecheck bounds how stale a mirrored upstream status may get when
// no watch event arrives (the upstream API was installed after kars started).
const upstreamRecheck = 30 * time.Second

// upstreamObs is what one reconcile saw of the upstream Sandbox.
type upstreamObs struct {
	mode   string
	name   string
	status agentsandbox.Status
}

// upstreamMode returns the sandbox's co-existence mode ("off" when unset).
func upstreamMode(sb *karsv1.KarsSandbox) string {
	if uc := sb.Spec.UpstreamCompatibility; uc != nil && uc.SigsAgentSandbox != "" {
		return uc.SigsAgentSandbox
	}
	return agentsandbox.ModeOff
}

func upstreamRef(sb *karsv1.KarsSandbox) string {
	if uc := sb.Spec.UpstreamCompatibility; uc != nil && uc.UpstreamRef != nil {
		return uc.UpstreamRef.Name
	}
	return ""
}

func newUpstreamSandbox() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(agentsandbox.GroupVersionKind)
	return u
}

// upstreamServed reports whether the API server serves agent-sandbox's
// Sandbox, asking the REST mapper (and so discovery) each time: the CRD
// may be installed after kars started.
func (r *SandboxReconciler) upstreamServed() bool {
	_, err := r.client.RESTMapper().RESTMapping(schema.GroupKind{Group: agentsandbox.Group, Kind: "Sandbox"}, agentsandbox.V1beta1)
	return err == nil
}

// getUpstream reads the upstream Sandbox name in sb's namespace straight
// from the API server (kars does not cache foreign kinds).
func (r *SandboxReconciler) getUpstream(ctx context.Context, sb *karsv1.KarsSandbox, name string) (*unstructured.Unstructured, error) {
	u := newUpstreamSandbox()
	if err := r.apiReader.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: name}, u); err != nil {
		return nil, err
	}
	return u, nil
}

// realizeWorkload runs the sandbox's pod the way its mode says, in place of
// a plain substrate.Realize. o receives the upstream observation and, when
// the mode cannot proceed, a block.
func (r *SandboxReconciler) realizeWorkload(ctx context.Context, sb *karsv1.KarsSandbox, d *render.Sandbox, o *outcome) (Observation, error) {
	mode := upstreamMode(sb)
	if mode != agentsandbox.ModeOff && !r.upstreamServed() {
		o.block = &block{reason: ReasonUpstreamNotServed, transient: true, keepWorkload: true, retryAfter: upstreamRecheck,
			message: fmt.Sprintf("upstreamCompatibility.sigsAgentSandbox is %s but the API server does not serve agents.x-k8s.io/v1beta1 Sandboxes: install agent-sandbox 1.0 (or set it to off)", mode)}
		return Observation{}, nil
	}
	switch mode {
	case agentsandbox.ModeTranslate:
		return r.realizeTranslate(ctx, sb, d, o)
	case agentsandbox.ModeOverlay:
		return r.realizeOverlay(ctx, sb, d, o)
	}
	obs, err := r.substrate.Realize(ctx, sb, d)
	if err != nil {
		return obs, err
	}
	// A sandbox that was in another mode still carries UpstreamReady: only
	// then look for a Sandbox kars translated earlier (asking the API
	// server on every reconcile of every native sandbox would cost a
	// discovery request where agent-sandbox is not installed). It goes once
	// kars's own pod is ready; until then the condition keeps reporting it.
	if meta.FindStatusCondition(sb.Status.Conditions, ConditionUpstreamReady) == nil || !r.upstreamServed() {
		return obs, nil
	}
	u, err := r.getUpstream(ctx, sb, sb.Name)
	if apierrors.IsNotFound(err) || (err == nil && !metav1.IsControlledBy(u, sb)) {
		return obs, nil // nothing of kars's; someone else's is never touched
	}
	if err != nil {
		return obs, err
	}
	if !obs.Ready {
		st, err := agentsandbox.ReadStatus(u)
		if err != nil {
			return obs, err
		}
		o.upstream = &upstreamObs{mode: agentsandbox.ModeTranslate, name: sb.Name, status: st}
		return obs, nil
	}
	uid := u.GetUID()
	if err := r.client.Delete(ctx, u, client.Preconditions{UID: &uid}); client.IgnoreNotFound(err) != nil {
		return obs, fmt.Errorf("delete translated upstream Sandbox %s/%s: %w", sb.Namespace, sb.Name, err)
	}
	return obs, nil
}

// realizeTranslate applies the upstream Sandbox that carries kars's
// governed pod and reports on it.
func (r *SandboxReconciler) realizeTranslate(ctx context.Context, sb *karsv1.KarsSandbox, d *render.Sandbox, o *outcome) (Observation, error) {
	want, err := agentsandbox.Translate(sb.Name, sb.Namespace, render.Labels(sb, "upstream-sandbox"), d.Deployment.Spec.Template, sb.Spec.Suspended)
	if err != nil {
		return Observation{}, err
	}
	if err := controllerutil.SetControllerReference(sb, want, r.client.Scheme()); err != nil {
		return Observation{}, err
	}
	have, err := r.getUpstream(ctx, sb, sb.Name)
	switch {
	case apierrors.IsNotFound(err):
		have = nil
	case err != nil:
		return Observation{}, err
	case !metav1.IsControlledBy(have, sb):
		o.block = &block{reason: ReasonUpstreamConflict, transient: true, keepWorkload: true,
			message: fmt.Sprintf("an upstream Sandbox %s/%s exists that kars did not create; kars never adopts it: rename the KarsSandbox, delete that Sandbox, or use overlay mode to govern it", sb.Namespace, sb.Name)}
		return Observation{}, nil
	}
	hash, err := hashOf(want)
	if err != nil {
		return Observation{}, err
	}
	want.SetAnnotations(map[string]string{AnnotationAppliedHash: hash})
	if have == nil || have.GetAnnotations()[AnnotationAppliedHash] != hash {
		if err := r.client.Apply(ctx, client.ApplyConfigurationFromUnstructured(want), client.FieldOwner(render.ManagedBy), client.ForceOwnership); err != nil {
			return Observation{}, fmt.Errorf("apply upstream Sandbox %s/%s: %w", sb.Namespace, sb.Name, err)
		}
		if have, err = r.getUpstream(ctx, sb, sb.Name); err != nil {
			return Observation{}, err
		}
	}
	st, err := agentsandbox.ReadStatus(have)
	if err != nil {
		return Observation{}, fmt.Errorf("upstream Sandbox %s/%s: %w", sb.Namespace, sb.Name, err)
	}
	o.upstream = &upstreamObs{mode: agentsandbox.ModeTranslate, name: sb.Name, status: st}
	obs := Observation{Message: "upstream Sandbox: " + st.Message, RouterAdmin: routerAdminURL(d)}
	if st.Ready {
		// The Sandbox's Ready may still describe an earlier pod.
		pod, err := r.podOf(ctx, have)
		if err != nil {
			return obs, err
		}
		obs.Ready = pod != nil && podReady(pod)
	}
	if obs.Ready {
		// The upstream controller runs the governed pod now; kars's own
		// Deployment (native before the switch) can go.
		if err := r.substrate.Stop(ctx, sb); err != nil {
			return obs, err
		}
	}
	return obs, nil
}

func routerAdminURL(d *render.Sandbox) string {
	return fmt.Sprintf("https://%s:%d", d.Names.RouterHostname, render.RouterAdminPort)
}

// observe is the whole reconcile of an observe-mode sandbox: read the
// upstream Sandbox and mirror it. kars renders and runs nothing; a kars
// Deployment left from native mode is stopped.
func (r *SandboxReconciler) observe(ctx context.Context, sb *karsv1.KarsSandbox) (outcome, time.Duration, error) {
	var o outcome
	ref := upstreamRef(sb)
	switch {
	case !r.upstreamServed():
		o.block = &block{reason: ReasonUpstreamNotServed, transient: true, retryAfter: upstreamRecheck,
			message: "observe mode needs agents.x-k8s.io/v1beta1 Sandboxes, which the API server does not serve: install agent-sandbox 1.0"}
		return o, 0, nil
	case ref == "":
		o.block = &block{reason: ReasonUpstreamRefMissing, message: "observe mode needs spec.upstreamCompatibility.upstreamRef naming the upstream Sandbox"}
		return o, 0, nil
	}
	u, err := r.getUpstream(ctx, sb, ref)
	if apierrors.IsNotFound(err) {
		o.block = &block{reason: ReasonUpstreamNotFound, transient: true, retryAfter: upstreamRecheck,
			message: fmt.Sprintf("upstream Sandbox %s/%s not found", sb.Namespace, ref)}
		return o, 0, nil
	}
	if err != nil {
		return o, 0, err
	}
	st, err := agentsandbox.ReadStatus(u)
	if err != nil {
		return o, 0, fmt.Errorf("upstream Sandbox %s/%s: %w", sb.Namespace, ref, err)
	}
	o.upstream = &upstreamObs{mode: agentsandbox.ModeObserve, name: ref, status: st}
	return o, upstreamRecheck, r.substrate.Stop(ctx, sb)
}

// upstreamConditions adds the upstream mirror to a status sandboxStatus
// derived, and in observe mode replaces what a kars-run pod would report.
func upstreamConditions(st *karsv1.KarsSandboxStatus, sb *karsv1.KarsSandbox, o outcome, now time.Time) {
	set := func(t string, status metav1.ConditionStatus, reason, msg string) {
		c := metav1.Condition{Type: t, Status: status, Reason: reason, Message: msg, ObservedGeneration: sb.Generation,
			LastTransitionTime: metav1.NewTime(now.Truncate(time.Second))}
		if old := meta.FindStatusCondition(st.Conditions, t); old != nil && old.Status == status {
			c.LastTransitionTime = old.LastTransitionTime
		}
		meta.SetStatusCondition(&st.Conditions, c)
	}
	u := o.upstream
	if u == nil {
		meta.RemoveStatusCondition(&st.Conditions, ConditionUpstreamReady)
		return
	}
	ready, reason := metav1.ConditionFalse, u.status.Reason
	if u.status.Ready {
		ready = metav1.ConditionTrue
	}
	if reason == "" {
		reason = "Unknown"
	}
	set(ConditionUpstreamReady, ready, reason, fmt.Sprintf("upstream Sandbox %s (operatingMode %s): %s", u.name, u.status.OperatingMode, u.status.Message))
	if u.mode != agentsandbox.ModeObserve || o.block != nil {
		return
	}
	msg := "observe mode: kars mirrors upstream Sandbox " + u.name + " and governs nothing"
	set(karsv1.ConditionRouterEnforcing, metav1.ConditionFalse, ReasonObserveOnly, msg)
	set(karsv1.ConditionProgressing, metav1.ConditionFalse, ReasonObserveOnly, msg)
	set(karsv1.ConditionRuntimeReady, ready, reason, u.status.Message)
	set(karsv1.ConditionReady, ready, reason, msg+": "+u.status.Message)
	st.RouterEndpoint, st.ConfigDigest, st.EnforcedDigest, st.RuntimeImage, st.Model = "", "", "", "", ""
	switch {
	case u.status.OperatingMode == agentsandbox.OperatingSuspended:
		st.Phase = karsv1.SandboxSuspended
	case u.status.Ready:
		st.Phase = karsv1.SandboxRunning
	default:
		st.Phase = karsv1.SandboxProvisioning
	}
}

// podReady reports the pod's Ready condition.
func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podOf returns the pod the upstream Sandbox controls, or nil.
func (r *SandboxReconciler) podOf(ctx context.Context, u *unstructured.Unstructured) (*corev1.Pod, error) {
	var pods corev1.PodList
	if err := r.apiReader.List(ctx, &pods, client.InNamespace(u.GetNamespace())); err != nil {
		return nil, err
	}
	for i := range pods.Items {
		if metav1.IsControlledBy(&pods.Items[i], u) && pods.Items[i].DeletionTimestamp.IsZero() {
			return &pods.Items[i], nil
		}
	}
	return nil, nil
}

// watchUpstream makes changes of upstream Sandboxes reconcile the
// sandboxes that translate, overlay or observe them, when the API server
// serves them at start (otherwise those modes fall back to rechecking every
// upstreamRecheck).
func watchUpstream(mgr ctrl.Manager, b *builder.Builder, c client.Reader) *builder.Builder {
	if _, err := mgr.GetRESTMapper().RESTMapping(schema.GroupKind{Group: agentsandbox.Group, Kind: "Sandbox"}, agentsandbox.V1beta1); err != nil {
		return b
	}
	return b.Watches(newUpstreamSandbox(), handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		var list karsv1.KarsSandboxList
		if err := c.List(ctx, &list, client.InNamespace(o.GetNamespace())); err != nil {
			return nil
		}
		var out []reconcile.Request
		for _, sb := range list.Items {
			mode := upstreamMode(&sb)
			if (mode != agentsandbox.ModeOff && upstreamRef(&sb) == o.GetName()) || (mode == agentsandbox.ModeTranslate && sb.Name == o.GetName()) ||
				metav1.IsControlledBy(o, &sb) || controllerutil.ContainsFinalizer(&sb, FinalizerOverlay) {
				out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&sb)})
			}
		}
		return out
	}))
}
