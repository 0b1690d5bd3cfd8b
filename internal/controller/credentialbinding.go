package controller

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/egress/credbind"
	"github.com/kars-io/kars/internal/render"
)

// indexCredentialSandbox indexes CredentialBindings by the sandbox they
// bind a credential for.
const indexCredentialSandbox = "spec.sandboxRef.name"

// Reasons of a CredentialBinding's Ready condition.
const (
	ReasonBound              = "Bound"
	ReasonCredentialInvalid  = "Invalid"
	ReasonCredentialNoTarget = "SandboxNotFound"
)

// credentialBindings returns the sandbox's usable bindings (the ones the
// router gets) and the problems of the others.
func credentialBindings(ctx context.Context, c client.Reader, sb *karsv1.KarsSandbox) ([]karsv1.CredentialBinding, map[string]string, error) {
	var list karsv1.CredentialBindingList
	if err := c.List(ctx, &list, client.InNamespace(sb.Namespace), client.MatchingFields{indexCredentialSandbox: sb.Name}); err != nil {
		return nil, nil, fmt.Errorf("list CredentialBindings of %s/%s: %w", sb.Namespace, sb.Name, err)
	}
	var live []karsv1.CredentialBinding
	for _, b := range list.Items {
		if b.DeletionTimestamp.IsZero() {
			live = append(live, b)
		}
	}
	usable, problems := render.UsableCredentials(sb, live)
	return usable, problems, nil
}

// CredentialBindingReconciler reports a binding: Ready=True/Bound with the
// placeholder once its sandbox compiles it into the router's config, or
// why not. The sandbox reconciler does the compiling.
type CredentialBindingReconciler struct {
	client client.Client
	now    func() time.Time
}

// Reconcile implements reconcile.Reconciler.
func (r *CredentialBindingReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var b karsv1.CredentialBinding
	if err := r.client.Get(ctx, req.NamespacedName, &b); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	st := *b.Status.DeepCopy()
	st.ObservedGeneration = b.Generation
	st.Placeholder = ""
	ok, reason, msg := false, "", ""
	var sb karsv1.KarsSandbox
	switch err := r.client.Get(ctx, client.ObjectKey{Namespace: b.Namespace, Name: b.Spec.SandboxRef.Name}, &sb); {
	case apierrors.IsNotFound(err):
		reason, msg = ReasonCredentialNoTarget, fmt.Sprintf("KarsSandbox %s not found in namespace %s", b.Spec.SandboxRef.Name, b.Namespace)
	case err != nil:
		return ctrl.Result{}, err
	default:
		_, problems, err := credentialBindings(ctx, r.client, &sb)
		if err != nil {
			return ctrl.Result{}, err
		}
		if p, bad := problems[b.Name]; bad {
			reason, msg = ReasonCredentialInvalid, p
		} else {
			ok, reason = true, ReasonBound
			st.Placeholder = credbind.Placeholder(sb.Namespace, sb.Name, b.Name)
			msg = fmt.Sprintf("sandbox %s's router places Secret %s key %s on %d endpoint(s); the agent holds the placeholder", sb.Name, b.Spec.SecretRef.Name, b.Spec.SecretRef.Key, len(b.Spec.Endpoints))
		}
	}
	s := metav1.ConditionFalse
	if ok {
		s = metav1.ConditionTrue
	}
	c := metav1.Condition{Type: karsv1.ConditionReady, Status: s, Reason: reason, Message: msg, ObservedGeneration: b.Generation,
		LastTransitionTime: metav1.NewTime(r.now().Truncate(time.Second))}
	if old := meta.FindStatusCondition(st.Conditions, c.Type); old != nil && old.Status == s {
		c.LastTransitionTime = old.LastTransitionTime
	}
	meta.SetStatusCondition(&st.Conditions, c)
	if !equality.Semantic.DeepEqual(st, b.Status) {
		patch := client.MergeFrom(b.DeepCopy())
		b.Status = st
		if err := r.client.Status().Patch(ctx, &b, patch); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
	}
	return ctrl.Result{}, nil
}

// boundSandbox maps a binding to its sandbox.
func boundSandbox(_ context.Context, o client.Object) []reconcile.Request {
	b := o.(*karsv1.CredentialBinding)
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: b.Namespace, Name: b.Spec.SandboxRef.Name}}}
}

// bindingsOf maps a sandbox to its bindings (their validity depends on
// its runtime.env and on each other).
func bindingsOf(c client.Reader) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		var list karsv1.CredentialBindingList
		if err := c.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexCredentialSandbox: o.GetName()}); err != nil {
			return nil
		}
		out := make([]reconcile.Request, len(list.Items))
		for i, b := range list.Items {
			out[i] = reconcile.Request{NamespacedName: types.NamespacedName{Namespace: b.Namespace, Name: b.Name}}
		}
		return out
	}
}

func setupCredentialBindings(mgr ctrl.Manager, o Options) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &karsv1.CredentialBinding{}, indexCredentialSandbox, func(o client.Object) []string {
		return []string{o.(*karsv1.CredentialBinding).Spec.SandboxRef.Name}
	}); err != nil {
		return err
	}
	r := &CredentialBindingReconciler{client: mgr.GetClient(), now: o.Now}
	return ctrl.NewControllerManagedBy(mgr).
		Named("credentialbinding").
		For(&karsv1.CredentialBinding{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// One binding's agentEnv can make a sibling's a duplicate.
		Watches(&karsv1.CredentialBinding{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
			b := o.(*karsv1.CredentialBinding)
			return bindingsOf(mgr.GetClient())(ctx, &karsv1.KarsSandbox{ObjectMeta: metav1.ObjectMeta{Namespace: b.Namespace, Name: b.Spec.SandboxRef.Name}})
		})).
		Watches(&karsv1.KarsSandbox{}, handler.EnqueueRequestsFromMapFunc(bindingsOf(mgr.GetClient())),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: o.MaxConcurrentReconciles}).
		Complete(r)
}
