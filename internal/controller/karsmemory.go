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
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// MemoryFinalizer keeps a KarsMemory with deleteOnSandboxDelete until the
// router has forgotten the sandbox's memories in the store.
const MemoryFinalizer = "kars.io/memory-cleanup"

// Reasons of KarsMemory conditions (besides ReasonBound, which it shares
// with CredentialBinding).
const (
	ReasonProvisioning      = "Provisioning"
	ReasonStoreMissing      = "StoreMissing"
	ReasonAuthMisconfigured = "AuthMisconfigured"
	ReasonUnreachable       = "Unreachable"
	ReasonCleanupFailed     = "CleanupFailed"
	ReasonDuplicateBinding  = "DuplicateBinding"
)

// MemoryStatusPath and MemoryForgetPath are the router admin endpoints of
// its KarsMemory binding (internal/router).
const (
	MemoryStatusPath = "/admin/v1/memory"
	MemoryForgetPath = "/admin/v1/memory/forget"
)

// RouterMemory is a router's view of its memory binding.
type RouterMemory struct {
	Store     string `json:"store"`
	Reachable bool   `json:"reachable"`
	Problem   string `json:"problem"`
	Error     string `json:"error"`
}

// MemoryReader reads and acts on a router's memory binding; HTTPSProber
// implements it. The router, which holds the Foundry identity, checks the
// store and forgets memories; the controller holds no credential for it.
type MemoryReader interface {
	MemoryStatus(ctx context.Context, t RouterTarget) (RouterMemory, error)
	ForgetMemory(ctx context.Context, t RouterTarget) error
}

// MemoryStatus implements MemoryReader.
func (p *HTTPSProber) MemoryStatus(ctx context.Context, t RouterTarget) (RouterMemory, error) {
	var m RouterMemory
	_, err := p.get(ctx, t, MemoryStatusPath, &m)
	return m, err
}

// ForgetMemory implements MemoryReader.
func (p *HTTPSProber) ForgetMemory(ctx context.Context, t RouterTarget) error {
	var out map[string]any
	_, err := p.post(ctx, t, MemoryForgetPath, &out)
	return err
}

// KarsMemoryReconciler reports whether a KarsMemory's store is bound — the
// sandbox's router enforces it and reaches the store with its identity —
// and forgets the sandbox's memories when the binding is deleted with
// deleteOnSandboxDelete. The sandbox reconciler compiles the binding into
// the router config.
type KarsMemoryReconciler struct {
	client client.Client
	prober RouterProber
	now    func() time.Time
}

// Reconcile implements reconcile.Reconciler.
func (r *KarsMemoryReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var m karsv1.KarsMemory
	if err := r.client.Get(ctx, req.NamespacedName, &m); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	var sb karsv1.KarsSandbox
	sbErr := r.client.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: m.Spec.SandboxRef.Name}, &sb)
	if !m.DeletionTimestamp.IsZero() || (sbErr == nil && !sb.DeletionTimestamp.IsZero() && m.Spec.DeleteOnSandboxDelete) {
		return r.cleanup(ctx, &m, &sb, sbErr)
	}
	if m.Spec.DeleteOnSandboxDelete && !controllerutil.ContainsFinalizer(&m, MemoryFinalizer) {
		patch := client.MergeFrom(m.DeepCopy())
		controllerutil.AddFinalizer(&m, MemoryFinalizer)
		if err := r.client.Patch(ctx, &m, patch); err != nil {
			return ctrl.Result{}, err
		}
	} else if !m.Spec.DeleteOnSandboxDelete && controllerutil.ContainsFinalizer(&m, MemoryFinalizer) {
		patch := client.MergeFrom(m.DeepCopy())
		controllerutil.RemoveFinalizer(&m, MemoryFinalizer)
		if err := r.client.Patch(ctx, &m, patch); err != nil {
			return ctrl.Result{}, err
		}
	}
	phase, reason, msg, requeue := "Pending", ReasonProvisioning, "", 15*time.Second
	switch {
	case sbErr != nil:
		msg = fmt.Sprintf("sandbox %s: %v", m.Spec.SandboxRef.Name, client.IgnoreNotFound(sbErr))
		if apierrors.IsNotFound(sbErr) {
			msg = fmt.Sprintf("sandbox %s does not exist", m.Spec.SandboxRef.Name)
		}
	default:
		if winner, err := memoryOf(ctx, r.client, &sb); err == nil && winner != nil && winner.Name != m.Name {
			phase, reason, requeue = "Failed", ReasonDuplicateBinding, 0
			msg = fmt.Sprintf("sandbox %s is bound to KarsMemory %s already: one memory per sandbox", sb.Name, winner.Name)
			break
		}
		if sb.Status.Phase != karsv1.SandboxRunning {
			msg = fmt.Sprintf("waiting for sandbox %s to run with the binding (it is %s)", sb.Name, sb.Status.Phase)
			break
		}
		t, err := adminTarget(ctx, r.client, &sb)
		reader, ok := r.prober.(MemoryReader)
		if err != nil || !ok {
			msg = fmt.Sprintf("cannot reach the router of sandbox %s: %v", sb.Name, err)
			break
		}
		st, err := reader.MemoryStatus(ctx, t)
		switch {
		case err != nil:
			msg = fmt.Sprintf("the router of sandbox %s has not loaded the binding yet: %v", sb.Name, err)
		case st.Reachable:
			phase, reason, requeue = "Bound", ReasonBound, 10*time.Minute
			msg = fmt.Sprintf("the router of sandbox %s reaches store %s", sb.Name, st.Store)
		case st.Problem == ReasonStoreMissing || st.Problem == ReasonAuthMisconfigured:
			phase, reason, msg, requeue = "Failed", st.Problem, st.Error, time.Minute
		default:
			reason, msg = ReasonUnreachable, st.Error
		}
	}
	st := *m.Status.DeepCopy()
	st.ObservedGeneration, st.Phase = m.Generation, phase
	setCondition(&st.Conditions, m.Generation, karsv1.ConditionReady, phase == "Bound", reason, msg, r.now())
	if !equality.Semantic.DeepEqual(st, m.Status) {
		patch := client.MergeFrom(m.DeepCopy())
		m.Status = st
		if err := r.client.Status().Patch(ctx, &m, patch); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// cleanupGrace bounds how long a deleted binding waits for its router to
// forget the memories before it lets go (the router may be gone for good).
const cleanupGrace = 10 * time.Minute

// cleanup asks the sandbox's router to forget its memories, then releases
// the finalizer.
func (r *KarsMemoryReconciler) cleanup(ctx context.Context, m *karsv1.KarsMemory, sb *karsv1.KarsSandbox, sbErr error) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(m, MemoryFinalizer) {
		return ctrl.Result{}, nil
	}
	err := sbErr
	if err == nil {
		var t RouterTarget
		if t, err = adminTarget(ctx, r.client, sb); err == nil {
			if reader, ok := r.prober.(MemoryReader); ok {
				err = reader.ForgetMemory(ctx, t)
			} else {
				err = fmt.Errorf("this controller cannot reach routers")
			}
		}
	}
	since := m.CreationTimestamp.Time
	if m.DeletionTimestamp != nil {
		since = m.DeletionTimestamp.Time
	} else if sb.DeletionTimestamp != nil {
		since = sb.DeletionTimestamp.Time
	}
	// Without a sandbox (deleted, or being deleted with its namespace)
	// there is no router left to ask: let go at once rather than hold the
	// namespace.
	gone := sbErr != nil || !sb.DeletionTimestamp.IsZero()
	if err != nil && !gone && r.now().Sub(since) < cleanupGrace {
		st := *m.Status.DeepCopy()
		setCondition(&st.Conditions, m.Generation, karsv1.ConditionReady, false, ReasonCleanupFailed,
			"forgetting the sandbox's memories: "+err.Error(), r.now())
		patch := client.MergeFrom(m.DeepCopy())
		m.Status = st
		_ = r.client.Status().Patch(ctx, m, patch)
		return ctrl.Result{RequeueAfter: 15 * time.Second}, nil
	}
	if err != nil {
		log.FromContext(ctx).Info("the sandbox's memories could not be forgotten; they stay in the Foundry store", "err", err)
	}
	if !m.DeletionTimestamp.IsZero() {
		patch := client.MergeFrom(m.DeepCopy())
		controllerutil.RemoveFinalizer(m, MemoryFinalizer)
		return ctrl.Result{}, client.IgnoreNotFound(r.client.Patch(ctx, m, patch))
	}
	// The sandbox is going: its memories are forgotten; the binding
	// itself goes when the user deletes it.
	return ctrl.Result{}, nil
}

func setCondition(cs *[]metav1.Condition, gen int64, t string, ok bool, reason, msg string, now time.Time) {
	s := metav1.ConditionFalse
	if ok {
		s = metav1.ConditionTrue
	}
	c := metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen, LastTransitionTime: metav1.NewTime(now.Truncate(time.Second))}
	if prev := meta.FindStatusCondition(*cs, t); prev != nil && prev.Status == s {
		c.LastTransitionTime = prev.LastTransitionTime
	}
	meta.SetStatusCondition(cs, c)
}

// memoryOf returns the KarsMemory bound to sb: the oldest of those that
// name it (one memory per sandbox), or nil.
func memoryOf(ctx context.Context, c client.Reader, sb *karsv1.KarsSandbox) (*karsv1.KarsMemory, error) {
	var list karsv1.KarsMemoryList
	if err := c.List(ctx, &list, client.InNamespace(sb.Namespace)); err != nil {
		return nil, fmt.Errorf("list KarsMemories in %s: %w", sb.Namespace, err)
	}
	var mine []karsv1.KarsMemory
	for _, m := range list.Items {
		if m.Spec.SandboxRef.Name == sb.Name && m.DeletionTimestamp.IsZero() {
			mine = append(mine, m)
		}
	}
	if len(mine) == 0 {
		return nil, nil
	}
	slices.SortFunc(mine, func(a, b karsv1.KarsMemory) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	return &mine[0], nil
}

// setupKarsMemories registers the KarsMemory reconciler and makes binding
// changes reconcile their sandbox.
func setupKarsMemories(mgr ctrl.Manager, o Options, b *builder.Builder) (*builder.Builder, error) {
	c := mgr.GetClient()
	r := &KarsMemoryReconciler{client: c, prober: o.Prober, now: o.Now}
	err := ctrl.NewControllerManagedBy(mgr).
		Named("karsmemory").
		For(&karsv1.KarsMemory{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, deletionChanged{}))).
		Watches(&karsv1.KarsSandbox{}, handler.EnqueueRequestsFromMapFunc(memoriesOf(c)), builder.WithPredicates(phaseChanged{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: o.MaxConcurrentReconciles}).
		Complete(r)
	if err != nil {
		return nil, err
	}
	return b.Watches(&karsv1.KarsMemory{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		m := o.(*karsv1.KarsMemory)
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: m.Namespace, Name: m.Spec.SandboxRef.Name}}}
	}), builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, deletionChanged{}))), nil
}

// memoriesOf maps a sandbox to the KarsMemories that name it.
func memoriesOf(c client.Reader) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		var list karsv1.KarsMemoryList
		if err := c.List(ctx, &list, client.InNamespace(o.GetNamespace())); err != nil {
			return nil
		}
		var out []reconcile.Request
		for _, m := range list.Items {
			if m.Spec.SandboxRef.Name == o.GetName() {
				out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&m)})
			}
		}
		return out
	}
}

// deletionChanged passes events where an object starts being deleted.
type deletionChanged struct{ predicate.Funcs }

// Update implements predicate.Predicate.
func (deletionChanged) Update(e event.UpdateEvent) bool {
	return e.ObjectOld.GetDeletionTimestamp().IsZero() != e.ObjectNew.GetDeletionTimestamp().IsZero()
}
