package controller

import (
	"context"
	"fmt"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/governance/toolpolicy"
	"github.com/kars-io/kars/internal/render"
)

// Field indexes on KarsSandbox: which policies a sandbox references. They
// map a policy event to its sandboxes and a policy to the routers that must
// enforce it.
const (
	indexInferenceRef  = "spec.inferenceRef.name"
	indexToolPolicyRef = "spec.governance.toolPolicyRef.name"
)

// policyKind adapts the reconciler to InferencePolicy or ToolPolicy.
type policyKind struct {
	kind   string
	index  string
	newObj func() client.Object
	status func(client.Object) *karsv1.PolicyStatus
	// check compiles the policy on its own and reports why the router
	// would refuse it.
	check func(client.Object) error
}

var inferencePolicyKind = policyKind{
	kind:   "InferencePolicy",
	index:  indexInferenceRef,
	newObj: func() client.Object { return &karsv1.InferencePolicy{} },
	status: func(o client.Object) *karsv1.PolicyStatus { return &o.(*karsv1.InferencePolicy).Status },
	check: func(o client.Object) error {
		ip := o.(*karsv1.InferencePolicy)
		probe := &karsv1.KarsSandbox{ObjectMeta: metav1.ObjectMeta{Namespace: ip.Namespace, Name: "policy-check"}}
		_, err := render.RouterConfig(probe, ip, nil, nil, render.Bindings{})
		return err
	},
}

var toolPolicyKind = policyKind{
	kind:   "ToolPolicy",
	index:  indexToolPolicyRef,
	newObj: func() client.Object { return &karsv1.ToolPolicy{} },
	status: func(o client.Object) *karsv1.PolicyStatus { return &o.(*karsv1.ToolPolicy).Status },
	check: func(o client.Object) error {
		tp := o.(*karsv1.ToolPolicy)
		_, err := governance.Compile(toolpolicy.FromSpec(tp.Namespace+"/"+tp.Name, &tp.Spec))
		return err
	},
}

// PolicyReconciler reports a policy's status: whether it compiles, which
// sandboxes use it, and whether every running router that uses it
// enforces the config compiled from its current spec.
type PolicyReconciler struct {
	client client.Client
	kind   policyKind
	now    func() time.Time
	// mesh is the environment's mesh endpoints, part of the compiled
	// config whose digest a router reports.
	mesh *render.MeshEndpoints
}

// Reconcile implements reconcile.Reconciler.
func (r *PolicyReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	obj := r.kind.newObj()
	if err := r.client.Get(ctx, req.NamespacedName, obj); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	var list karsv1.KarsSandboxList
	if err := r.client.List(ctx, &list, client.InNamespace(req.Namespace), client.MatchingFields{r.kind.index: req.Name}); err != nil {
		return reconcile.Result{}, err
	}
	old := r.kind.status(obj)
	st := *old.DeepCopy()
	st.ObservedGeneration = obj.GetGeneration()
	st.Sandboxes = nil
	st.EnforcingSandboxes = 0
	active := 0
	for i := range list.Items {
		sb := &list.Items[i]
		st.Sandboxes = append(st.Sandboxes, sb.Name)
		if !runsRouter(sb) {
			continue
		}
		active++
		ok, err := r.enforces(ctx, sb, obj)
		if err != nil {
			return reconcile.Result{}, err
		}
		if ok {
			st.EnforcingSandboxes++
		}
	}
	slices.Sort(st.Sandboxes)

	compileErr := r.kind.check(obj)
	switch {
	case compileErr != nil:
		st.Phase = karsv1.PolicyPhaseInvalid
	case active == 0:
		st.Phase = karsv1.PolicyPhasePending
	case int(st.EnforcingSandboxes) == active:
		st.Phase = karsv1.PolicyPhaseRouterEnforcing
	default:
		st.Phase = karsv1.PolicyPhaseAwaitingRouterEnforcement
	}
	now := metav1.NewTime(r.now().Truncate(time.Second))
	setCond := func(t string, ok bool, reason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		c := metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: st.ObservedGeneration, LastTransitionTime: now}
		if prev := meta.FindStatusCondition(st.Conditions, t); prev != nil && prev.Status == s {
			c.LastTransitionTime = prev.LastTransitionTime
		}
		meta.SetStatusCondition(&st.Conditions, c)
	}
	if compileErr != nil {
		setCond(karsv1.ConditionCompiled, false, karsv1.PolicyPhaseInvalid, compileErr.Error())
	} else {
		setCond(karsv1.ConditionCompiled, true, "Compiled", "")
	}
	switch st.Phase {
	case karsv1.PolicyPhaseRouterEnforcing:
		setCond(karsv1.ConditionReady, true, st.Phase, fmt.Sprintf("%d of %d running routers enforce this generation", st.EnforcingSandboxes, active))
	case karsv1.PolicyPhaseAwaitingRouterEnforcement:
		setCond(karsv1.ConditionReady, false, st.Phase, fmt.Sprintf("%d of %d running routers enforce this generation", st.EnforcingSandboxes, active))
	case karsv1.PolicyPhasePending:
		setCond(karsv1.ConditionReady, false, st.Phase, "no running sandbox uses this policy")
	default:
		setCond(karsv1.ConditionReady, false, st.Phase, "the policy does not compile")
	}
	if equality.Semantic.DeepEqual(&st, old) {
		return reconcile.Result{}, nil
	}
	patch := client.MergeFrom(obj.DeepCopyObject().(client.Object))
	*r.kind.status(obj) = st
	if err := r.client.Status().Patch(ctx, obj, patch); err != nil && !apierrors.IsNotFound(err) {
		return reconcile.Result{}, err
	}
	return reconcile.Result{}, nil
}

// runsRouter reports whether a sandbox is expected to run a router now: not
// suspended, not being deleted, and not blocked.
func runsRouter(sb *karsv1.KarsSandbox) bool {
	if sb.Spec.Suspended || !sb.DeletionTimestamp.IsZero() {
		return false
	}
	switch sb.Status.Phase {
	case karsv1.SandboxFailed, karsv1.SandboxDegraded, karsv1.SandboxSuspended:
		return false
	}
	return true
}

// enforces reports whether sb's router serves the config compiled from the
// current generation of policy (and of the sandbox's other policy). It
// recompiles rather than trusting status.configDigest, which may still
// describe the previous generation.
func (r *PolicyReconciler) enforces(ctx context.Context, sb *karsv1.KarsSandbox, policy client.Object) (bool, error) {
	if sb.Status.EnforcedDigest == "" {
		return false, nil
	}
	var ip *karsv1.InferencePolicy
	var tp *karsv1.ToolPolicy
	switch p := policy.(type) {
	case *karsv1.InferencePolicy:
		ip = p
	case *karsv1.ToolPolicy:
		tp = p
	}
	if ip == nil {
		ip = &karsv1.InferencePolicy{}
		if err := r.client.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: sb.Spec.InferenceRef.Name}, ip); err != nil {
			return false, client.IgnoreNotFound(err)
		}
	}
	if tp == nil {
		if ref := sb.Spec.Governance.ToolPolicyRef; ref != nil && sb.Spec.GovernanceEnabled() {
			tp = &karsv1.ToolPolicy{}
			if err := r.client.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: ref.Name}, tp); err != nil {
				return false, client.IgnoreNotFound(err)
			}
		}
	}
	b, err := bindings(ctx, r.client, sb)
	if err != nil {
		return false, err
	}
	creds, _, err := credentialBindings(ctx, r.client, sb)
	if err != nil {
		return false, err
	}
	d, err := render.RouterConfigDigest(sb, ip, tp, r.mesh, b, creds...)
	if err != nil {
		return false, nil
	}
	return d == sb.Status.EnforcedDigest, nil
}
