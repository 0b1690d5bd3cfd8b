package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
)

// +kubebuilder:rbac:groups=kars.azure.com,resources=karssreactions,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=kars.azure.com,resources=karssreactions/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=kars.azure.com,resources=karspairings,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=kars.azure.com,resources=inferencepolicies,verbs=patch
// +kubebuilder:rbac:groups="",resources=pods,verbs=delete

// The phases of a KarsSREAction.
const (
	SREPhaseProposed  = "Proposed"
	SREPhaseExecuting = "Executing"
	SREPhaseSucceeded = "Succeeded"
	SREPhaseFailed    = "Failed"
	SREPhaseRejected  = "Rejected"
	SREPhaseExpired   = "Expired"
)

// Event reasons of the SRE reconciler: the audit trail of every decision,
// on the action and on its target.
const (
	ReasonSREExecuted = "SREActionExecuted"
	ReasonSREFailed   = "SREActionFailed"
	ReasonSRERejected = "SREActionRejected"
	ReasonSREExpired  = "SREActionExpired"
)

// ConditionExecuted is True once an approved action ran successfully.
const ConditionExecuted = "Executed"

// defaultSRETTL is the schema default of spec.ttlMinutes.
const defaultSRETTL = 15 * time.Minute

// sreRetryWindow is how long after its TTL an action that started in time
// keeps retrying transient failures before it is marked Failed.
const sreRetryWindow = 10 * time.Minute

// Restarter is implemented by substrates that can restart a sandbox's pod
// in place (RestartSandbox), in two steps so that a retried restart
// restarts nothing twice: Running names the pods running now (opaque
// identities: pod UIDs on Kubernetes), the reconciler records them on the
// action, and Restart restarts those of them that still run.
type Restarter interface {
	Running(ctx context.Context, sb *karsv1.KarsSandbox) ([]string, error)
	Restart(ctx context.Context, sb *karsv1.KarsSandbox, ids []string) error
}

// AnnotationActingOn on a KarsSREAction records the identities (pod or
// Secret UIDs) an executing action acts on, written before it acts, so a
// retry after a crash acts on the same ones and no others.
const AnnotationActingOn = "kars.io/sre-acting-on"

// RouterAdmin calls a router's admin API with its pinned certificate and
// bearer token; HTTPSProber implements it.
type RouterAdmin interface {
	Call(ctx context.Context, t RouterTarget, method, path string, v any) error
}

// Call implements RouterAdmin.
func (p *HTTPSProber) Call(ctx context.Context, t RouterTarget, method, path string, v any) error {
	_, err := p.call(ctx, t, method, path, nil, v)
	return err
}

// SREActionReconciler executes approved KarsSREActions. It never runs an
// action that is Pending, Rejected or past its TTL (creation time plus
// spec.ttlMinutes, measured against the server-set creationTimestamp);
// approval and rejection are final (the CRD refuses changing them), and
// the phases Succeeded, Failed, Rejected and Expired are terminal. Before
// running it claims the action by writing phase Executing with an
// optimistic-concurrency update, so two controllers never both run it; each
// action is idempotent, so finishing one whose controller died while
// Executing applies its effect once.
type SREActionReconciler struct {
	client    client.Client
	substrate Substrate
	admin     RouterAdmin
	events    recorder.EventRecorder
	now       func() time.Time
}

func setupSREActions(mgr ctrl.Manager, o Options) error {
	r := &SREActionReconciler{client: mgr.GetClient(), substrate: o.Substrate, events: mgr.GetEventRecorder(render.ManagedBy), now: o.Now}
	r.admin, _ = o.Prober.(RouterAdmin)
	return ctrl.NewControllerManagedBy(mgr).
		Named("karssreaction").
		For(&karsv1.KarsSREAction{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: o.MaxConcurrentReconciles}).
		Complete(r)
}

// ExpiresAt is when action a expires unexecuted.
func ExpiresAt(a *karsv1.KarsSREAction) time.Time {
	ttl := time.Duration(a.Spec.TTLMinutes) * time.Minute
	if ttl <= 0 {
		ttl = defaultSRETTL
	}
	return a.CreationTimestamp.Add(ttl)
}

// terminal reports whether phase ends the action's life.
func terminal(phase string) bool {
	switch phase {
	case SREPhaseSucceeded, SREPhaseFailed, SREPhaseRejected, SREPhaseExpired:
		return true
	}
	return false
}

// Reconcile implements reconcile.Reconciler.
func (r *SREActionReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var a karsv1.KarsSREAction
	if err := r.client.Get(ctx, req.NamespacedName, &a); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if terminal(a.Status.Phase) || !a.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	now := r.now()
	expires := ExpiresAt(&a)
	switch {
	case a.Spec.Approval.State == "Rejected":
		return ctrl.Result{}, r.finish(ctx, &a, SREPhaseRejected, fmt.Sprintf("rejected by %s%s", a.Spec.Approval.DecidedBy, comment(a.Spec.Approval.Comment)), nil)
	case a.Status.Phase != SREPhaseExecuting && !now.Before(expires):
		// An approval that arrives, or is first seen, after the TTL does
		// not run the action: the proposal was about a moment now gone.
		return ctrl.Result{}, r.finish(ctx, &a, SREPhaseExpired, fmt.Sprintf("expired at %s with approval %s", expires.UTC().Format(time.RFC3339), a.Spec.Approval.State), nil)
	case a.Spec.Approval.State != "Approved":
		if a.Status.Phase != SREPhaseProposed || a.Status.ExpiresAt == nil || a.Status.ObservedGeneration != a.Generation {
			before := a.DeepCopy()
			a.Status.Phase, a.Status.ExpiresAt, a.Status.ObservedGeneration = SREPhaseProposed, &metav1.Time{Time: expires}, a.Generation
			a.Status.Result = "awaiting approval"
			if err := r.client.Status().Patch(ctx, &a, client.MergeFrom(before)); err != nil {
				return ctrl.Result{}, err
			}
		}
		return ctrl.Result{RequeueAfter: expires.Sub(now) + time.Second}, nil
	}

	// Approved and before the TTL: claim it, then run it.
	if a.Status.Phase != SREPhaseExecuting {
		a.Status.Phase, a.Status.ExpiresAt, a.Status.ObservedGeneration = SREPhaseExecuting, &metav1.Time{Time: expires}, a.Generation
		a.Status.ExecutedAt = &metav1.Time{Time: now}
		a.Status.Result = "executing, approved by " + a.Spec.Approval.DecidedBy
		// Update, not patch: the resourceVersion makes this a claim only
		// one writer wins.
		if err := r.client.Status().Update(ctx, &a); err != nil {
			if apierrors.IsConflict(err) {
				return ctrl.Result{RequeueAfter: 100 * time.Millisecond}, nil
			}
			return ctrl.Result{}, err
		}
	}
	target, result, err := r.execute(ctx, &a)
	var transient transientError
	if errors.As(err, &transient) && now.Before(expires.Add(sreRetryWindow)) {
		// The router or API server did not answer: try again while the
		// action still holds its claim, for a while past its TTL.
		log.FromContext(ctx).Info("SRE action will be retried", "action", req.NamespacedName, "err", err)
		return ctrl.Result{RequeueAfter: 5 * time.Second}, nil
	}
	if err != nil {
		return ctrl.Result{}, r.finish(ctx, &a, SREPhaseFailed, err.Error(), target)
	}
	return ctrl.Result{}, r.finish(ctx, &a, SREPhaseSucceeded, result, target)
}

func comment(c string) string {
	if c == "" {
		return ""
	}
	return ": " + c
}

// transientError marks failures worth retrying (network, conflicts).
type transientError struct{ error }

func (t transientError) Unwrap() error { return t.error }

// finish records a terminal phase and its audit events.
func (r *SREActionReconciler) finish(ctx context.Context, a *karsv1.KarsSREAction, phase, result string, target runtime.Object) error {
	before := a.DeepCopy()
	a.Status.Phase, a.Status.Result, a.Status.ObservedGeneration = phase, truncate(result, 2048), a.Generation
	if a.Status.ExpiresAt == nil {
		a.Status.ExpiresAt = &metav1.Time{Time: ExpiresAt(a)}
	}
	cond := metav1.Condition{Type: ConditionExecuted, Status: metav1.ConditionFalse, Reason: phase, Message: a.Status.Result, ObservedGeneration: a.Generation}
	if phase == SREPhaseSucceeded {
		cond.Status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&a.Status.Conditions, cond)
	if err := r.client.Status().Patch(ctx, a, client.MergeFrom(before)); err != nil {
		return err
	}
	reason, typ := map[string]string{
		SREPhaseSucceeded: ReasonSREExecuted, SREPhaseFailed: ReasonSREFailed, SREPhaseRejected: ReasonSRERejected, SREPhaseExpired: ReasonSREExpired,
	}[phase], corev1.EventTypeNormal
	if phase == SREPhaseFailed || phase == SREPhaseExpired {
		typ = corev1.EventTypeWarning
	}
	note := fmt.Sprintf("%s %s/%s (proposed by %s: %s): %s", a.Spec.Action, a.Spec.Target.Kind, a.Spec.Target.Name,
		orUnknown(a.Spec.ProposedBy), truncate(a.Spec.Reason, 200), a.Status.Result)
	r.events.Eventf(a, target, typ, reason, string(a.Spec.Action), "%s", truncate(note, 1000))
	if target != nil {
		r.events.Eventf(target, a, typ, reason, string(a.Spec.Action), "%s", truncate(note, 1000))
	}
	log.FromContext(ctx).Info("SRE action finished", "action", client.ObjectKeyFromObject(a), "type", a.Spec.Action,
		"target", a.Spec.Target.Name, "phase", phase, "approvedBy", a.Spec.Approval.DecidedBy, "result", a.Status.Result)
	return nil
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// execute runs the action and returns its target (for events) and a
// sentence on what it did.
func (r *SREActionReconciler) execute(ctx context.Context, a *karsv1.KarsSREAction) (client.Object, string, error) {
	key := client.ObjectKey{Namespace: a.Namespace, Name: a.Spec.Target.Name}
	if a.Spec.Action == karsv1.SRERevokePairing {
		var p karsv1.KarsPairing
		if err := r.client.Get(ctx, key, &p); err != nil {
			return nil, "", notFoundOr(err, "KarsPairing", key)
		}
		if p.Spec.Revoked {
			return &p, "pairing was already revoked", nil
		}
		before := p.DeepCopy()
		p.Spec.Revoked = true
		if err := r.client.Patch(ctx, &p, client.MergeFrom(before)); err != nil {
			return &p, "", transientOr(err)
		}
		return &p, "pairing revoked", nil
	}
	var sb karsv1.KarsSandbox
	if err := r.client.Get(ctx, key, &sb); err != nil {
		return nil, "", notFoundOr(err, "KarsSandbox", key)
	}
	patchSandbox := func(mutate func(*karsv1.KarsSandbox) bool, done, already string) (client.Object, string, error) {
		before := sb.DeepCopy()
		if !mutate(&sb) {
			return &sb, already, nil
		}
		if err := r.client.Patch(ctx, &sb, client.MergeFrom(before)); err != nil {
			return &sb, "", transientOr(err)
		}
		return &sb, done, nil
	}
	switch a.Spec.Action {
	case karsv1.SRESuspendSandbox:
		return patchSandbox(func(s *karsv1.KarsSandbox) bool { c := !s.Spec.Suspended; s.Spec.Suspended = true; return c },
			"sandbox suspended (scaled to zero, state kept)", "sandbox was already suspended")
	case karsv1.SREResumeSandbox:
		return patchSandbox(func(s *karsv1.KarsSandbox) bool { c := s.Spec.Suspended; s.Spec.Suspended = false; return c },
			"sandbox resumed", "sandbox was not suspended")
	case karsv1.SRERevokeA2AExposure:
		return patchSandbox(func(s *karsv1.KarsSandbox) bool { c := s.Spec.A2A.Enabled; s.Spec.A2A.Enabled = false; return c },
			"inbound A2A exposure revoked (spec.a2a.enabled=false)", "the sandbox was not exposed over A2A")
	case karsv1.SRERestartSandbox:
		rs, ok := r.substrate.(Restarter)
		if !ok {
			return &sb, "", fmt.Errorf("this controller's substrate cannot restart pods")
		}
		if sb.Spec.Suspended {
			return &sb, "", fmt.Errorf("sandbox is suspended: nothing runs to restart (resume it instead)")
		}
		ids, err := r.actingOn(ctx, a, func() ([]string, error) { return rs.Running(ctx, &sb) })
		if err != nil {
			return &sb, "", err
		}
		if len(ids) == 0 {
			return &sb, "", fmt.Errorf("no pod of the sandbox is running (phase %s)", sb.Status.Phase)
		}
		if err := rs.Restart(ctx, &sb, ids); err != nil {
			return &sb, "", transientOr(err)
		}
		return &sb, "pod restarted (router state and workspace kept)", nil
	case karsv1.SRERotateRouterCredentials:
		return r.rotate(ctx, a, &sb)
	case karsv1.SREReleaseQuarantine:
		return r.releaseQuarantine(ctx, &sb)
	case karsv1.SRESetModel:
		return r.setModel(ctx, &sb, a.Spec.Params["model"])
	case karsv1.SREQuarantineAgent:
		return r.quarantine(ctx, &sb, quarantineReason(a))
	}
	return &sb, "", fmt.Errorf("unknown action %q", a.Spec.Action)
}

func notFoundOr(err error, kind string, key client.ObjectKey) error {
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%s %s not found", kind, key)
	}
	return transientError{err}
}

func transientOr(err error) error {
	if apierrors.IsConflict(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) || apierrors.IsServiceUnavailable(err) {
		return transientError{err}
	}
	return err
}

// actingOn returns the identities recorded on the action, or records and
// returns those list gives on the first attempt.
func (r *SREActionReconciler) actingOn(ctx context.Context, a *karsv1.KarsSREAction, list func() ([]string, error)) ([]string, error) {
	if v, ok := a.Annotations[AnnotationActingOn]; ok {
		if v == "" {
			return nil, nil
		}
		return strings.Split(v, ","), nil
	}
	ids, err := list()
	if err != nil {
		return nil, transientOr(err)
	}
	before := a.DeepCopy()
	if a.Annotations == nil {
		a.Annotations = map[string]string{}
	}
	a.Annotations[AnnotationActingOn] = strings.Join(ids, ",")
	if err := r.client.Patch(ctx, a, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return nil, transientError{fmt.Errorf("record what the action acts on: %w", err)}
	}
	return ids, nil
}

// rotate replaces the router's admin credentials (bearer token and TLS key
// pair): it deletes the admin Secret, and the sandbox reconciler, which
// owns the Secret, generates new ones, which rolls the pod (the
// certificate digest is on its template).
func (r *SREActionReconciler) rotate(ctx context.Context, a *karsv1.KarsSREAction, sb *karsv1.KarsSandbox) (client.Object, string, error) {
	names, err := render.NamesFor(sb)
	if err != nil {
		return sb, "", err
	}
	var s corev1.Secret
	err = r.client.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: names.RouterAdmin}, &s)
	if client.IgnoreNotFound(err) != nil {
		return sb, "", transientError{err}
	}
	if err == nil && !ownedBy(&s, sb) {
		return sb, "", fmt.Errorf("the Secret %s/%s is not the sandbox's (no controller reference): not touching it", s.Namespace, s.Name)
	}
	ids, err := r.actingOn(ctx, a, func() ([]string, error) {
		if s.UID == "" {
			return nil, nil
		}
		return []string{string(s.UID)}, nil
	})
	if err != nil {
		return sb, "", err
	}
	if len(ids) == 0 {
		return sb, "", fmt.Errorf("the sandbox has no admin credentials yet: nothing to rotate")
	}
	if s.UID == "" || !slices.Contains(ids, string(s.UID)) {
		return sb, "router admin token and TLS certificate rotated; the pod rolls to load them", nil
	}
	if err := r.client.Delete(ctx, &s, client.Preconditions{UID: &s.UID}); client.IgnoreNotFound(err) != nil {
		return sb, "", transientOr(err)
	}
	return sb, "router admin token and TLS certificate rotated; the pod rolls to load them", nil
}

// routerTarget is the admin API of the sandbox's running router.
func (r *SREActionReconciler) routerTarget(ctx context.Context, sb *karsv1.KarsSandbox) (RouterTarget, error) {
	if r.admin == nil {
		return RouterTarget{}, fmt.Errorf("this controller cannot call router admin APIs")
	}
	if sb.Status.RouterEndpoint == "" || sb.Spec.Suspended {
		return RouterTarget{}, fmt.Errorf("no router is running for the sandbox (phase %s)", sb.Status.Phase)
	}
	names, err := render.NamesFor(sb)
	if err != nil {
		return RouterTarget{}, err
	}
	var s corev1.Secret
	if err := r.client.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: names.RouterAdmin}, &s); err != nil {
		return RouterTarget{}, notFoundOr(err, "Secret", client.ObjectKey{Namespace: sb.Namespace, Name: names.RouterAdmin})
	}
	return RouterTarget{Endpoint: sb.Status.RouterEndpoint, ServerName: names.RouterHostname, CertPEM: s.Data[render.AdminCertKey], Token: s.Data[render.AdminTokenKey]}, nil
}

// quarantineReason is what the router tells the agent and logs: the action's
// name and reason, as printable text within the router's 256 bytes (the
// CRD allows a 2,048-byte reason).
func quarantineReason(a *karsv1.KarsSREAction) string {
	s := strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return ' '
		}
		return r
	}, "KarsSREAction "+a.Namespace+"/"+a.Name+": "+a.Spec.Reason)
	for len(s) > 256 {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}

// quarantine asks the router to quarantine the agent: every further
// decision is denied until a ReleaseQuarantine. The router keeps the
// quarantine in its state (it survives restarts), and a second call leaves
// the first quarantine in place, so a retried action changes nothing more.
func (r *SREActionReconciler) quarantine(ctx context.Context, sb *karsv1.KarsSandbox, reason string) (client.Object, string, error) {
	t, err := r.routerTarget(ctx, sb)
	if err != nil {
		return sb, "", err
	}
	var out struct {
		Agent   string `json:"agent"`
		Imposed bool   `json:"imposed"`
	}
	if err := r.admin.Call(ctx, t, http.MethodPost, "/admin/v1/quarantine?reason="+url.QueryEscape(reason), &out); err != nil {
		return sb, "", transientError{fmt.Errorf("router admin API: %w", err)}
	}
	if !out.Imposed {
		return sb, "agent " + out.Agent + " was already quarantined", nil
	}
	return sb, "agent " + out.Agent + " quarantined by the router: every call is denied until a ReleaseQuarantine", nil
}

// releaseQuarantine asks the router to clear its quarantine of the agent.
func (r *SREActionReconciler) releaseQuarantine(ctx context.Context, sb *karsv1.KarsSandbox) (client.Object, string, error) {
	t, err := r.routerTarget(ctx, sb)
	if err != nil {
		return sb, "", err
	}
	var out struct {
		Agent   string `json:"agent"`
		Cleared bool   `json:"cleared"`
	}
	if err := r.admin.Call(ctx, t, http.MethodDelete, "/admin/v1/quarantine", &out); err != nil {
		return sb, "", transientError{fmt.Errorf("router admin API: %w", err)}
	}
	if !out.Cleared {
		return sb, "agent " + out.Agent + " was not quarantined", nil
	}
	return sb, "quarantine of agent " + out.Agent + " released by the router", nil
}

// setModel switches the primary model of the sandbox's InferencePolicy, as
// `kars model set` does; the router hot-reloads it without a restart.
func (r *SREActionReconciler) setModel(ctx context.Context, sb *karsv1.KarsSandbox, model string) (client.Object, string, error) {
	var ip karsv1.InferencePolicy
	key := client.ObjectKey{Namespace: sb.Namespace, Name: sb.Spec.InferenceRef.Name}
	if err := r.client.Get(ctx, key, &ip); err != nil {
		return sb, "", notFoundOr(err, "InferencePolicy", key)
	}
	p := &ip.Spec.ModelPreference.Primary
	if p.Provider == karsv1.ProviderOffline {
		return sb, "", fmt.Errorf("sandbox uses the offline model, which has one model")
	}
	if p.Model == model && (p.Provider != karsv1.ProviderAzureOpenAI || p.Deployment == model) {
		return sb, "model was already " + model, nil
	}
	before := ip.DeepCopy()
	old := p.Model
	p.Model = model
	if p.Provider == karsv1.ProviderAzureOpenAI {
		p.Deployment = model
	}
	if err := r.client.Patch(ctx, &ip, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return sb, "", transientOr(err)
	}
	return sb, fmt.Sprintf("model %s → %s (InferencePolicy %s); the router reloads without a restart", old, model, key), nil
}
