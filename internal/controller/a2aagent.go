package controller

import (
	"context"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/a2a/peer"
	"github.com/kars-io/kars/internal/routerconfig"
)

// +kubebuilder:rbac:groups=kars.azure.com,resources=a2aagents,verbs=get;list;watch
// +kubebuilder:rbac:groups=kars.azure.com,resources=a2aagents/status,verbs=get;update;patch

// A2AAgent phases and reasons.
const (
	PhaseA2AVerified   = "Verified"
	PhaseA2AUnverified = "Unverified"
	PhaseA2AExpired    = "Expired"

	ReasonCardVerified   = "CardVerified"
	ReasonCardUnverified = "CardUnverified"
	ReasonExpired        = "Expired"
)

// a2aAgentRecheck is how often a verified card is fetched again (a
// partner rotating its key, or taking the agent down, shows within it).
const a2aAgentRecheck = time.Hour

// a2aAgentRetry spaces fetches of a card that did not verify.
const a2aAgentRetry = time.Minute

// A2AAgentReconciler verifies registered foreign agents: it fetches the
// card, checks its signature against the pinned key and finds the JSON-RPC
// endpoint for the registered protocol version, and reports it in the
// status, where the sandbox reconciler picks verified agents up for the
// routers of the sandboxes they list.
type A2AAgentReconciler struct {
	client client.Client
	fetch  *peer.Fetcher
	now    func() time.Time
}

// Reconcile implements reconcile.Reconciler.
func (r *A2AAgentReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var a karsv1.A2AAgent
	if err := r.client.Get(ctx, req.NamespacedName, &a); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	now := r.now()
	st := *a.Status.DeepCopy()
	st.ObservedGeneration = a.Generation
	var requeue time.Duration
	set := func(ok bool, reason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		c := metav1.Condition{Type: karsv1.ConditionReady, Status: s, Reason: reason, Message: msg, ObservedGeneration: a.Generation}
		if old := meta.FindStatusCondition(st.Conditions, c.Type); old != nil && old.Status == s {
			c.LastTransitionTime = old.LastTransitionTime
		} else {
			c.LastTransitionTime = metav1.NewTime(now.Truncate(time.Second))
		}
		meta.SetStatusCondition(&st.Conditions, c)
	}
	version := a.Spec.ProtocolVersion
	if version == "" {
		version = "1.0"
	}
	switch {
	case a.Spec.ExpiresAt != nil && !now.Before(a.Spec.ExpiresAt.Time):
		st.Phase, st.Endpoint = PhaseA2AExpired, ""
		set(false, ReasonExpired, "the registration ended at "+a.Spec.ExpiresAt.UTC().Format(time.RFC3339))
	case st.Phase == PhaseA2AVerified && a.Status.ObservedGeneration == a.Generation && st.LastVerified != nil &&
		now.Sub(st.LastVerified.Time) < a2aAgentRecheck:
		requeue = a2aAgentRecheck - now.Sub(st.LastVerified.Time)
	default:
		fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		v, err := r.fetch.Fetch(fctx, a.Spec.CardURL, string(a.Spec.JWSThumbprint), version)
		cancel()
		if err != nil {
			st.Phase, st.Endpoint = PhaseA2AUnverified, ""
			set(false, ReasonCardUnverified, "the card at "+a.Spec.CardURL+" does not verify: "+err.Error())
			requeue = a2aAgentRetry
			break
		}
		st.Phase, st.Endpoint, st.CardDigest, st.Skills = PhaseA2AVerified, v.Endpoint, v.CardDigest, v.Skills
		st.LastVerified = &metav1.Time{Time: now.Truncate(time.Second)}
		set(true, ReasonCardVerified, "card of "+v.Name+" signed by the pinned key; A2A "+version+" at "+v.Endpoint)
		requeue = a2aAgentRecheck
	}
	if a.Spec.ExpiresAt != nil && now.Before(a.Spec.ExpiresAt.Time) {
		requeue = minPositive(requeue, a.Spec.ExpiresAt.Sub(now)+time.Second)
	}
	if !equality.Semantic.DeepEqual(st, a.Status) {
		patch := client.MergeFrom(a.DeepCopy())
		a.Status = st
		if err := r.client.Status().Patch(ctx, &a, patch); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// a2aPeers are the verified, unexpired A2AAgents in sb's namespace that
// list sb: the foreign agents its router lets it call.
func (r *SandboxReconciler) a2aPeers(ctx context.Context, sb *karsv1.KarsSandbox, now time.Time) ([]routerconfig.A2APeer, error) {
	var list karsv1.A2AAgentList
	if err := r.client.List(ctx, &list, client.InNamespace(sb.Namespace)); err != nil {
		if meta.IsNoMatchError(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []routerconfig.A2APeer
	for _, a := range list.Items {
		if !slices.Contains(a.Spec.Sandboxes, sb.Name) || a.Status.Phase != PhaseA2AVerified || a.Status.ObservedGeneration != a.Generation ||
			a.Status.Endpoint == "" || (a.Spec.ExpiresAt != nil && !now.Before(a.Spec.ExpiresAt.Time)) {
			continue
		}
		p := routerconfig.A2APeer{Name: a.Name, Endpoint: a.Status.Endpoint, ProtocolVersion: a.Spec.ProtocolVersion,
			Thumbprint: string(a.Spec.JWSThumbprint), Skills: a.Spec.AllowedSkills}
		if p.ProtocolVersion == "" {
			p.ProtocolVersion = "1.0"
		}
		if rl := a.Spec.RateLimit; rl != nil {
			p.RateLimit = routerconfig.A2ARateLimit{RPM: int(rl.RPM), Burst: int(rl.Burst)}
		}
		if a.Spec.ExpiresAt != nil {
			t := a.Spec.ExpiresAt.UTC()
			p.ExpiresAt = &t
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b routerconfig.A2APeer) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// setupA2AAgents registers the A2AAgent reconciler and makes a verified
// (or unverified) agent reconcile the sandboxes it lists.
func setupA2AAgents(mgr ctrl.Manager, c client.Client, fetch *peer.Fetcher, now func() time.Time) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("a2aagent").
		For(&karsv1.A2AAgent{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Complete(&A2AAgentReconciler{client: c, fetch: fetch, now: now})
}

// sandboxesOfAgent maps an A2AAgent to the sandboxes it lists.
func sandboxesOfAgent(_ context.Context, o client.Object) []reconcile.Request {
	a := o.(*karsv1.A2AAgent)
	out := make([]reconcile.Request, 0, len(a.Spec.Sandboxes))
	for _, name := range a.Spec.Sandboxes {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: a.Namespace, Name: name}})
	}
	return out
}

var _ handler.MapFunc = sandboxesOfAgent
