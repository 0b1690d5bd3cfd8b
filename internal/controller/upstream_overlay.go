package controller

import (
	"context"
	"errors"
	"fmt"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/agentsandbox"
	"github.com/kars-io/kars/internal/overlay"
	"github.com/kars-io/kars/internal/render"
)

// FinalizerOverlay keeps a sandbox until its overlay's admission policies,
// which are cluster-scoped and so cannot be owned by it, are removed.
const FinalizerOverlay = "kars.io/upstream-overlay"

// AnnotationOverlayUpstream on the overlay's policies names the upstream
// Sandbox they govern, so that they outlive a switch away from overlay
// while that Sandbox still runs pods.
const AnnotationOverlayUpstream = "kars.io/overlay-upstream"

// realizeOverlay installs the policies that govern the upstream Sandbox's
// pod and reports on that pod. It never writes to the upstream Sandbox or
// its pod.
func (r *SandboxReconciler) realizeOverlay(ctx context.Context, sb *karsv1.KarsSandbox, d *render.Sandbox, o *outcome) (Observation, error) {
	ref := upstreamRef(sb)
	if ref == "" {
		o.block = &block{reason: ReasonUpstreamRefMissing, keepWorkload: true,
			message: "overlay mode needs spec.upstreamCompatibility.upstreamRef naming the upstream Sandbox whose pod kars governs"}
		return Observation{}, nil
	}
	u, err := r.getUpstream(ctx, sb, ref)
	if apierrors.IsNotFound(err) {
		o.block = &block{reason: ReasonUpstreamNotFound, transient: true, keepWorkload: true, retryAfter: upstreamRecheck,
			message: fmt.Sprintf("upstream Sandbox %s/%s not found; kars keeps its own pod running until the overlaid one is governed and ready", sb.Namespace, ref)}
		return Observation{}, nil
	}
	if err != nil {
		return Observation{}, err
	}
	if metav1.IsControlledBy(u, sb) {
		o.block = &block{reason: ReasonUpstreamConflict, keepWorkload: true,
			message: fmt.Sprintf("upstream Sandbox %s/%s is kars's own translation of this sandbox; overlay governs a Sandbox the upstream controller owns", sb.Namespace, ref)}
		return Observation{}, nil
	}
	pol, err := overlay.Render(sb, ref, &d.Deployment.Spec.Template)
	if err != nil {
		return Observation{}, err
	}
	for _, obj := range pol.Objects() {
		co := obj.(client.Object)
		a := co.GetAnnotations()
		if a == nil {
			a = map[string]string{}
		}
		a[AnnotationOverlayUpstream] = ref
		co.SetAnnotations(a)
		if _, err := r.apply.apply(ctx, co); err != nil {
			return Observation{}, err
		}
	}
	st, err := agentsandbox.ReadStatus(u)
	if err != nil {
		return Observation{}, fmt.Errorf("upstream Sandbox %s/%s: %w", sb.Namespace, ref, err)
	}
	o.upstream = &upstreamObs{mode: agentsandbox.ModeOverlay, name: ref, status: st}
	pod, err := r.podOf(ctx, u)
	if err != nil {
		return Observation{}, err
	}
	obs := Observation{RouterAdmin: routerAdminURL(d)}
	switch {
	case pod == nil:
		obs.Message = fmt.Sprintf("upstream Sandbox %s has no pod (operatingMode %s)", ref, st.OperatingMode)
		return obs, nil
	case pod.Annotations[overlay.AnnotationDigest] != pol.Digest:
		// Created before the overlay (or under an older one): kars cannot
		// vouch for it and does not touch it.
		o.block = &block{reason: ReasonOverlayPodUngoverned, transient: true, keepWorkload: true, retryAfter: upstreamRecheck,
			message: fmt.Sprintf("pod %s of upstream Sandbox %s was not admitted through this overlay; run `kars migrate to-overlay %s --upstream-ref %s` to have the upstream controller recreate it governed",
				pod.Name, ref, sb.Name, ref)}
		return Observation{}, nil
	}
	// The Sandbox's Ready may still describe the pod it had before; only
	// the governed pod's own readiness counts.
	obs.Ready, obs.Message = st.Ready && podReady(pod), "overlaid pod "+pod.Name+": "+st.Message
	if obs.Ready {
		// The governed upstream pod serves the agent; kars's own
		// Deployment (native before the switch) can go.
		if err := r.substrate.Stop(ctx, sb); err != nil {
			return obs, err
		}
	}
	return obs, nil
}

// reconcileOverlayFinalizer keeps FinalizerOverlay on a sandbox while it
// has overlay policies, and removes them when the sandbox is deleted or
// has left overlay mode — but after leaving overlay mode only once the
// upstream Sandbox no longer runs, so that it cannot start an ungoverned
// pod (a watch on upstream Sandboxes brings the sandbox back then).
func (r *SandboxReconciler) reconcileOverlayFinalizer(ctx context.Context, sb *karsv1.KarsSandbox) error {
	has := controllerutil.ContainsFinalizer(sb, FinalizerOverlay)
	deleting := !sb.DeletionTimestamp.IsZero()
	if upstreamMode(sb) == agentsandbox.ModeOverlay && !deleting {
		if has {
			return nil
		}
		patch := client.MergeFrom(sb.DeepCopy())
		controllerutil.AddFinalizer(sb, FinalizerOverlay)
		return r.client.Patch(ctx, sb, patch)
	}
	if !has {
		return nil
	}
	if !deleting {
		if up, err := r.overlaidUpstream(ctx, sb); err != nil || up != "" {
			return err
		}
	}
	if err := r.deleteOverlayPolicies(ctx, sb); err != nil {
		return err
	}
	patch := client.MergeFrom(sb.DeepCopy())
	controllerutil.RemoveFinalizer(sb, FinalizerOverlay)
	return client.IgnoreNotFound(r.client.Patch(ctx, sb, patch))
}

// overlaidUpstream returns the name of the upstream Sandbox the sandbox's
// overlay policies govern when that Sandbox still runs pods.
func (r *SandboxReconciler) overlaidUpstream(ctx context.Context, sb *karsv1.KarsSandbox) (string, error) {
	var mp admissionv1.MutatingAdmissionPolicy
	if err := r.client.Get(ctx, client.ObjectKey{Name: overlay.Name(sb)}, &mp); err != nil {
		return "", client.IgnoreNotFound(err)
	}
	ref := mp.Annotations[AnnotationOverlayUpstream]
	if ref == "" || !r.upstreamServed() {
		return "", nil
	}
	u, err := r.getUpstream(ctx, sb, ref)
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	st, err := agentsandbox.ReadStatus(u)
	if err != nil || st.OperatingMode == agentsandbox.OperatingSuspended {
		return "", err
	}
	return ref, nil
}

func (r *SandboxReconciler) deleteOverlayPolicies(ctx context.Context, sb *karsv1.KarsSandbox) error {
	name := overlay.Name(sb)
	var errs []error
	for _, obj := range []client.Object{
		&admissionv1.MutatingAdmissionPolicyBinding{}, &admissionv1.ValidatingAdmissionPolicyBinding{},
		&admissionv1.MutatingAdmissionPolicy{}, &admissionv1.ValidatingAdmissionPolicy{},
	} {
		obj.SetName(name)
		if err := r.client.Delete(ctx, obj); client.IgnoreNotFound(err) != nil {
			errs = append(errs, fmt.Errorf("delete %T %s: %w", obj, name, err))
		}
	}
	return errors.Join(errs...)
}
