package controller

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/routerconfig"
)

// ConditionRouterConfirmed is the EgressApproval condition that the
// sandbox's router enforces the approval: it lists it, by UID, among the
// approvals it holds (GET /admin/v1/egress).
const ConditionRouterConfirmed = "RouterConfirmed"

// EgressApproval phases.
const (
	PhasePending = "Pending"
	PhaseActive  = "Active"
	PhaseExpired = "Expired"
	PhaseInvalid = "Invalid"
)

// EgressApprovedStatus is the part of the router's egress status the
// controller reads.
type EgressApprovedStatus struct {
	Approvals []struct {
		Name      string    `json:"name"`
		UID       string    `json:"uid"`
		ExpiresAt time.Time `json:"expiresAt"`
		Active    bool      `json:"active"`
	} `json:"approvals"`
}

// EgressStatusReader reads a router's egress status.
type EgressStatusReader interface {
	EgressStatus(ctx context.Context, t RouterTarget) (EgressApprovedStatus, error)
}

// EgressPath is the router admin endpoint of the egress status.
const EgressPath = "/admin/v1/egress"

// EgressStatus implements EgressStatusReader.
func (p *HTTPSProber) EgressStatus(ctx context.Context, t RouterTarget) (EgressApprovedStatus, error) {
	var st EgressApprovedStatus
	_, err := p.get(ctx, t, EgressPath, &st)
	return st, err
}

// EgressApprovalReconciler moves an approval through Pending → Active →
// Expired: Active once the sandbox's router echoes it (RouterConfirmed),
// Expired at creation + ttl. The router enforces the expiry itself with
// its own clock, so access ends on time even when the controller is down;
// the controller only reports it.
type EgressApprovalReconciler struct {
	client client.Client
	reader client.Reader
	prober RouterProber
	now    func() time.Time
}

// Reconcile implements reconcile.Reconciler.
func (r *EgressApprovalReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var a karsv1.EgressApproval
	if err := r.client.Get(ctx, req.NamespacedName, &a); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	now := r.now()
	exp := ApprovalExpiresAt(&a)
	st := *a.Status.DeepCopy()
	st.ObservedGeneration = a.Generation
	st.ExpiresAt = &metav1.Time{Time: exp.UTC().Truncate(time.Second)}
	set := func(ok bool, reason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		c := metav1.Condition{Type: ConditionRouterConfirmed, Status: s, Reason: reason, Message: msg, ObservedGeneration: a.Generation,
			LastTransitionTime: metav1.NewTime(now.Truncate(time.Second))}
		if old := meta.FindStatusCondition(st.Conditions, c.Type); old != nil && old.Status == s {
			c.LastTransitionTime = old.LastTransitionTime
		}
		meta.SetStatusCondition(&st.Conditions, c)
	}
	var requeue time.Duration
	switch {
	case approvalTTL(&a) > MaxTTL:
		st.Phase = PhaseInvalid
		set(false, "TTLTooLong", fmt.Sprintf("ttl %s exceeds the ceiling of %s", approvalTTL(&a), MaxTTL))
	case !now.Before(exp):
		st.Phase = PhaseExpired
		set(false, PhaseExpired, "expired at "+exp.UTC().Format(time.RFC3339)+"; the router stopped allowing its hosts then")
	default:
		requeue = exp.Sub(now) + time.Second
		phase, ok, reason, msg, retry := r.confirm(ctx, &a, now)
		st.Phase = phase
		set(ok, reason, msg)
		if retry > 0 {
			requeue = min(requeue, retry)
		}
	}
	if !equality.Semantic.DeepEqual(st, a.Status) {
		patch := client.MergeFrom(a.DeepCopy())
		a.Status = st
		if err := r.client.Status().Patch(ctx, &a, patch); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// confirm asks the sandbox's router whether it enforces a.
func (r *EgressApprovalReconciler) confirm(ctx context.Context, a *karsv1.EgressApproval, now time.Time) (phase string, ok bool, reason, msg string, retry time.Duration) {
	var sb karsv1.KarsSandbox
	if err := r.client.Get(ctx, client.ObjectKey{Namespace: a.Namespace, Name: a.Spec.Sandbox}, &sb); err != nil {
		if apierrors.IsNotFound(err) {
			return PhaseInvalid, false, "SandboxNotFound", fmt.Sprintf("KarsSandbox %s not found in namespace %s", a.Spec.Sandbox, a.Namespace), 10 * time.Second
		}
		return PhasePending, false, "SandboxUnreadable", err.Error(), 5 * time.Second
	}
	active, _, err := activeApprovals(ctx, r.reader, &sb, now)
	if err != nil {
		return PhasePending, false, "ListFailed", err.Error(), 5 * time.Second
	}
	if !slices.ContainsFunc(active, func(x routerconfig.EgressApproval) bool { return x.UID == string(a.UID) }) {
		return PhaseInvalid, false, "TooManyApprovals", "the sandbox has too many active approvals; this one is not enforced", time.Minute
	}
	reader, okR := r.prober.(EgressStatusReader)
	if !okR || sb.Status.RouterEndpoint == "" {
		return PhasePending, false, "RouterNotReady", "the sandbox's router is not running yet", 2 * time.Second
	}
	names, err := render.NamesFor(&sb)
	if err != nil {
		return PhaseInvalid, false, "SandboxInvalid", err.Error(), 0
	}
	var sec corev1.Secret
	if err := r.reader.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: names.RouterAdmin}, &sec); err != nil {
		return PhasePending, false, "RouterNotReady", "router admin credentials: " + err.Error(), 2 * time.Second
	}
	est, err := reader.EgressStatus(ctx, RouterTarget{Endpoint: sb.Status.RouterEndpoint, ServerName: names.RouterHostname,
		CertPEM: sec.Data[render.AdminCertKey], Token: sec.Data[render.AdminTokenKey]})
	if err != nil {
		return PhasePending, false, "RouterUnreachable", err.Error(), 2 * time.Second
	}
	for _, x := range est.Approvals {
		if x.UID == string(a.UID) && x.Active {
			return PhaseActive, true, "Enforced", "the router enforces this approval until " + x.ExpiresAt.UTC().Format(time.RFC3339), 0
		}
	}
	return PhasePending, false, "NotYetEnforced", "the router does not list this approval yet", time.Second
}

// approvedSandbox maps an approval to its sandbox.
func approvedSandbox(_ context.Context, o client.Object) []reconcile.Request {
	a := o.(*karsv1.EgressApproval)
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: a.Namespace, Name: a.Spec.Sandbox}}}
}

// setupEgressApprovals registers the EgressApproval reconciler; a sandbox
// change (its router coming up, its endpoint) wakes its approvals.
func setupEgressApprovals(mgr ctrl.Manager, o Options) error {
	r := &EgressApprovalReconciler{client: mgr.GetClient(), reader: mgr.GetClient(), prober: o.Prober, now: o.Now}
	return ctrl.NewControllerManagedBy(mgr).
		Named("egressapproval").
		For(&karsv1.EgressApproval{}).
		Watches(&karsv1.KarsSandbox{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, sb client.Object) []reconcile.Request {
			var list karsv1.EgressApprovalList
			if err := mgr.GetClient().List(ctx, &list, client.InNamespace(sb.GetNamespace())); err != nil {
				return nil
			}
			var out []reconcile.Request
			for _, a := range list.Items {
				if a.Spec.Sandbox == sb.GetName() {
					out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: a.Namespace, Name: a.Name}})
				}
			}
			return out
		})).
		WithOptions(controller.Options{MaxConcurrentReconciles: o.MaxConcurrentReconciles}).
		Complete(r)
}
