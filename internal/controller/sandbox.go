package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/agentsandbox"
	"github.com/kars-io/kars/internal/render"
)

// SandboxReconciler reconciles a KarsSandbox: fetch → render → apply →
// realise → handshake → report.
type SandboxReconciler struct {
	client    client.Client
	apiReader client.Reader
	apply     *applier
	substrate Substrate
	prober    RouterProber
	images    ImageInspector
	env       render.Environment
	now       func() time.Time
	events    recorder.EventRecorder
	metrics   *metrics

	// registryBackoff spaces retries of unreachable BYO registries;
	// routerBackoff spaces probes of a router that has not loaded the
	// current config yet (the kubelet takes up to a minute to update a
	// mounted ConfigMap).
	registryBackoff *backoff
	routerBackoff   *backoff
	// anchorEvery is how often a running router's audit head is copied
	// into the status (auditAnchor).
	anchorEvery time.Duration
	// egress establishes the verified allowlist and active approvals.
	egress *egressInputs
}

// Reconcile implements reconcile.Reconciler.
func (r *SandboxReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var sb karsv1.KarsSandbox
	if err := r.client.Get(ctx, req.NamespacedName, &sb); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if err := r.reconcileOverlayFinalizer(ctx, &sb); err != nil {
		return ctrl.Result{}, err
	}
	if fin := r.substrate.Finalizer(); fin != "" {
		if !sb.DeletionTimestamp.IsZero() {
			if !controllerutil.ContainsFinalizer(&sb, fin) {
				return ctrl.Result{}, nil
			}
			if err := r.substrate.Cleanup(ctx, &sb); err != nil {
				return ctrl.Result{}, fmt.Errorf("clean up sandbox %s/%s: %w", sb.Namespace, sb.Name, err)
			}
			patch := client.MergeFrom(sb.DeepCopy())
			controllerutil.RemoveFinalizer(&sb, fin)
			return ctrl.Result{}, client.IgnoreNotFound(r.client.Patch(ctx, &sb, patch))
		}
		if !controllerutil.ContainsFinalizer(&sb, fin) {
			patch := client.MergeFrom(sb.DeepCopy())
			controllerutil.AddFinalizer(&sb, fin)
			if err := r.client.Patch(ctx, &sb, patch); err != nil {
				return ctrl.Result{}, err
			}
		}
	} else if !sb.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil // the garbage collector removes what it owns
	}

	o, requeue, err := r.realize(ctx, &sb)
	if o.block != nil && !o.block.keepWorkload {
		if serr := r.substrate.Stop(ctx, &sb); serr != nil {
			err = errors.Join(err, fmt.Errorf("stop workload: %w", serr))
		}
	}
	if o.block != nil {
		requeue = o.block.retryAfter
	}
	if serr := r.writeStatus(ctx, &sb, o); serr != nil {
		err = errors.Join(err, serr)
	}
	if apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
		// The namespace is being deleted and takes the sandbox with it;
		// recreating what it just removed would only fight it.
		log.FromContext(ctx).V(1).Info("namespace terminating; not recreating objects", "err", err)
		return ctrl.Result{}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// forget drops the retry state of a deleted sandbox.
func (r *SandboxReconciler) forget(key types.NamespacedName) {
	r.registryBackoff.reset(key)
	r.routerBackoff.reset(key)
}

// realize fetches what the sandbox references, renders, applies, lets the
// substrate run the pod and asks the router what it enforces. It returns
// the outcome to report and how soon to look again.
func (r *SandboxReconciler) realize(ctx context.Context, sb *karsv1.KarsSandbox) (outcome, time.Duration, error) {
	if upstreamMode(sb) == agentsandbox.ModeObserve {
		return r.observe(ctx, sb)
	}
	var o outcome
	a2aIn, a2a := r.a2aGoAhead(ctx, sb, r.now())
	o.a2a = a2a
	names, err := render.NamesFor(sb)
	if err != nil {
		o.block = &block{reason: render.ReasonInvalidSpec, message: err.Error()}
		return o, 0, nil
	}
	var ip karsv1.InferencePolicy
	if err := r.client.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: sb.Spec.InferenceRef.Name}, &ip); err != nil {
		if !apierrors.IsNotFound(err) {
			return o, 0, err
		}
		o.block = &block{reason: ReasonInferencePolicyNotFound, transient: true,
			message: fmt.Sprintf("InferencePolicy %s not found in namespace %s: create it (the sandbox starts once it exists)", sb.Spec.InferenceRef.Name, sb.Namespace)}
		return o, 0, nil
	}
	o.model = ip.Spec.ModelPreference.Primary.Model
	var tp *karsv1.ToolPolicy
	if ref := sb.Spec.Governance.ToolPolicyRef; ref != nil && sb.Spec.GovernanceEnabled() {
		tp = &karsv1.ToolPolicy{}
		if err := r.client.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: ref.Name}, tp); err != nil {
			if !apierrors.IsNotFound(err) {
				return o, 0, err
			}
			o.block = &block{reason: ReasonToolPolicyNotFound, transient: true,
				message: fmt.Sprintf("ToolPolicy %s not found in namespace %s: create it (the sandbox starts once it exists)", ref.Name, sb.Namespace)}
			return o, 0, nil
		}
	}
	var byoImage string
	// In overlay mode the upstream pod template chooses the image, not
	// runtime.byo, so there is no image of kars's to verify.
	if sb.Spec.Runtime.Kind == karsv1.RuntimeBYO && sb.Spec.Runtime.BYO != nil && upstreamMode(sb) != agentsandbox.ModeOverlay {
		var b *block
		if byoImage, b = r.verifyBYO(ctx, sb); b != nil {
			o.block = b
			return o, 0, nil
		}
	}
	now := r.now()
	admin, err := adminCredentials(ctx, r.client, r.apiReader, sb, names, now)
	if err != nil {
		return o, 0, err
	}
	b, err := bindings(ctx, r.client, sb)
	if err != nil {
		return o, 0, err
	}
	peers, err := r.a2aPeers(ctx, sb, now)
	if err != nil {
		return o, 0, err
	}
	egIn, allowCond, egNext, err := r.egress.input(ctx, r.apiReader, sb, names, now)
	if err != nil {
		return o, 0, err
	}
	o.allowlist = allowCond
	creds, _, err := credentialBindings(ctx, r.client, sb)
	if err != nil {
		return o, 0, err
	}
	d, err := render.Render(render.Input{Sandbox: sb, Inference: &ip, Tools: tp, Bindings: b, Admin: admin, BYOImage: byoImage, Now: now, Env: r.env,
		Egress: egIn, A2A: a2aIn, A2APeers: peers, Credentials: creds})
	if err != nil {
		if reason := render.ReasonOf(err); reason != "" {
			var re *render.Error
			errors.As(err, &re)
			o.block = &block{reason: reason, message: re.Message,
				runtime: reason == render.ReasonAdapterMissing || reason == render.ReasonShapeInvalid}
			return o, 0, nil
		}
		return o, 0, err
	}
	o.configDigest, o.runtimeImage, o.a2aRendered = d.ConfigDigest, d.Runtime.Image, d.A2AExposed
	if d.A2AExposed {
		o.a2aExpiresAt = sb.Spec.A2A.ExpiresAt
	}

	for _, obj := range d.Objects() {
		if obj == client.Object(d.Deployment) {
			continue // the substrate's part
		}
		if _, err := r.apply.apply(ctx, obj); err != nil {
			if conflict(&o, err) {
				return o, conflictRetry, nil
			}
			o.block = &block{reason: ReasonApplyFailed, message: err.Error(), transient: true}
			return o, 0, err
		}
	}
	if d.AgentConfig == nil {
		if err := r.deleteOwned(ctx, sb, &corev1.ConfigMap{}, names.AgentConfig); err != nil {
			return o, 0, err
		}
	}
	if err := r.reconcileCiliumPolicy(ctx, sb, d.A2AExposed); err != nil {
		if conflict(&o, err) {
			return o, conflictRetry, nil
		}
		return o, 0, err
	}
	obs, err := r.realizeWorkload(ctx, sb, d, &o)
	if o.block != nil {
		return o, 0, err
	}
	if err != nil {
		if conflict(&o, err) {
			return o, conflictRetry, nil
		}
		o.block = &block{reason: ReasonApplyFailed, message: err.Error(), transient: true}
		return o, 0, err
	}
	o.obs = obs

	var requeue time.Duration
	if due, ok := renewalDue(admin); ok {
		requeue = max(due.Sub(now), time.Second)
	}
	if o.a2a.retry {
		requeue = minPositive(requeue, 2*time.Second)
	}
	// An expired approval leaves the router's egress state (the router
	// itself stopped honouring it at expiresAt).
	requeue = minPositive(requeue, egNext)
	if d.A2AExposed {
		// Close the exposure when its window ends, without waiting for an
		// unrelated event.
		requeue = minPositive(requeue, sb.Spec.A2A.ExpiresAt.Sub(now)+time.Second)
	}
	if obs.Ready && !sb.Spec.Suspended {
		o.enforcedDigest, o.probeErr = r.prober.EnforcedDigest(ctx, RouterTarget{
			Endpoint: obs.RouterAdmin, ServerName: names.RouterHostname, CertPEM: admin.CertPEM, Token: admin.Token,
		})
		switch {
		case o.probeErr != nil:
			r.metrics.probes.WithLabelValues("error").Inc()
			requeue = minPositive(requeue, r.routerBackoff.next(client.ObjectKeyFromObject(sb)))
		case o.enforcedDigest != d.ConfigDigest:
			r.metrics.probes.WithLabelValues("mismatch").Inc()
			requeue = minPositive(requeue, r.routerBackoff.next(client.ObjectKeyFromObject(sb)))
		default:
			r.metrics.probes.WithLabelValues("match").Inc()
			r.routerBackoff.reset(client.ObjectKeyFromObject(sb))
			requeue = minPositive(requeue, r.readAuditHead(ctx, sb, &o, RouterTarget{
				Endpoint: obs.RouterAdmin, ServerName: names.RouterHostname, CertPEM: admin.CertPEM, Token: admin.Token}))
		}
	}
	return o, requeue, nil
}

// readAuditHead reads the router's audit head into o when the anchor in the
// status is older than anchorEvery, and returns when to read it next.
func (r *SandboxReconciler) readAuditHead(ctx context.Context, sb *karsv1.KarsSandbox, o *outcome, t RouterTarget) time.Duration {
	hr, ok := r.prober.(AuditHeadReader)
	if !ok {
		return 0
	}
	if a := sb.Status.Audit; a != nil && a.RecordedAt != nil {
		if next := a.RecordedAt.Add(r.anchorEvery).Sub(r.now()); next > 0 {
			return next
		}
	}
	h, err := hr.AuditHead(ctx, t)
	if err != nil {
		log.FromContext(ctx).Info("audit head not read", "err", err)
		return r.anchorEvery
	}
	o.auditHead = &h
	return r.anchorEvery
}

// conflictRetry is how often a sandbox blocked by a foreign object looks
// again: the object is not kars's, so its deletion triggers no watch.
const conflictRetry = 30 * time.Second

// conflict blocks the sandbox with reason Conflict when err is a
// *ConflictError, and reports whether it was.
func conflict(o *outcome, err error) bool {
	var c *ConflictError
	if !errors.As(err, &c) {
		return false
	}
	o.block = &block{reason: ReasonConflict, message: c.Error(), transient: true, retryAfter: conflictRetry}
	return true
}

func minPositive(a, b time.Duration) time.Duration {
	if a <= 0 {
		return b
	}
	return min(a, b)
}

// deleteOwned deletes a rendered object that is no longer desired, if it
// exists and belongs to the sandbox.
func (r *SandboxReconciler) deleteOwned(ctx context.Context, sb *karsv1.KarsSandbox, obj client.Object, name string) error {
	if err := r.client.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: name}, obj); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !ownedBy(obj, sb) {
		return nil
	}
	uid := obj.GetUID()
	return client.IgnoreNotFound(r.client.Delete(ctx, obj, client.Preconditions{UID: &uid}))
}

// writeStatus patches the status only when it changed, and records an event
// when the sandbox becomes ready or blocked.
func (r *SandboxReconciler) writeStatus(ctx context.Context, sb *karsv1.KarsSandbox, o outcome) error {
	st := sandboxStatus(sb, o, r.now())
	upstreamConditions(&st, sb, o, r.now())
	a2aCondition(&st, sb, o, r.now())
	if equality.Semantic.DeepEqual(st, sb.Status) {
		return nil
	}
	wasReady := condTrue(sb.Status.Conditions, karsv1.ConditionReady)
	oldDegraded := degradedReason(sb.Status.Conditions, karsv1.ConditionDegraded)
	patch := client.MergeFrom(sb.DeepCopy())
	sb.Status = st
	if err := r.client.Status().Patch(ctx, sb, patch); err != nil {
		return client.IgnoreNotFound(err)
	}
	if r.events != nil {
		if b := o.block; b != nil && b.reason != oldDegraded {
			r.events.Eventf(sb, nil, corev1.EventTypeWarning, b.reason, "Reconcile", "%s", b.message)
		} else if !wasReady && condTrue(st.Conditions, karsv1.ConditionReady) {
			r.events.Eventf(sb, nil, corev1.EventTypeNormal, ReasonReady, "Reconcile", "the router enforces %s", o.configDigest)
		}
	}
	log.FromContext(ctx).V(1).Info("status updated", "phase", st.Phase, "configDigest", st.ConfigDigest)
	return nil
}

func condTrue(cs []metav1.Condition, t string) bool {
	for _, c := range cs {
		if c.Type == t {
			return c.Status == metav1.ConditionTrue
		}
	}
	return false
}

func degradedReason(cs []metav1.Condition, t string) string {
	for _, c := range cs {
		if c.Type == t && c.Status == metav1.ConditionTrue {
			return c.Reason
		}
	}
	return ""
}
