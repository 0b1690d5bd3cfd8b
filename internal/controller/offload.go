package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
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
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/offload"
)

// The offload reconciler creates and deletes namespaces and the kars
// objects in them, and binds the offload's KarsPairing.
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=kars.azure.com,resources=karssandboxes;inferencepolicies;toolpolicies;karspairings,verbs=create

// offloadRefresh is how often a live offload's token use is read from its
// router (for status answers and `kars mesh list`).
const offloadRefresh = 30 * time.Second

// OffloadReconciler reconciles offload pairings (KarsPairings with no
// sandbox: a host's, redeemed with the plugin's kars_pair) and their
// offloads: it ends each offload whose result was acknowledged, which
// was handed back, whose TTL passed or whose pairing was revoked, expired
// or deleted — settling the tokens its router metered against the
// pairing's budget, deleting its namespace and telling the host; it tells
// the host when an offload is ready; and it reports the pairing's slots,
// tokens and phase.
type OffloadReconciler struct {
	client client.Client
	broker *offloadBroker
	admin  offloadAdmin
	now    func() time.Time
}

// setupOffload registers the offload broker and reconciler.
func setupOffload(mgr ctrl.Manager, o Options) error {
	oo := *o.Offload
	if oo.Dir == "" {
		return errors.New("controller: offload needs a state folder (Offload.Dir) for the broker's sessions and audit log")
	}
	if oo.Registry == "" || oo.Relay == "" {
		oo.Registry, oo.Relay = o.Env.Mesh.Registry, o.Env.Mesh.Relay
	}
	if oo.Logger == nil {
		oo.Logger = slog.Default()
	}
	admin, ok := o.Prober.(offloadAdmin)
	if !ok {
		return errors.New("controller: the router prober cannot read offload routers' budgets and audit logs")
	}
	b := &offloadBroker{c: mgr.GetClient(), live: mgr.GetAPIReader(), sys: o.Env.SystemNamespace, oo: oo, now: o.Now,
		log: oo.Logger.With("component", "offload-broker"), admin: admin, up: make(chan struct{})}
	if err := mgr.Add(b); err != nil {
		return err
	}
	r := &OffloadReconciler{client: mgr.GetClient(), broker: b, admin: admin, now: o.Now}
	toPairing := func(_ context.Context, obj client.Object) []reconcile.Request {
		ns, name, ok := cutRef(obj.GetAnnotations()[offload.AnnotationPairing])
		if obj.GetLabels()[offload.LabelOffload] != "true" {
			return nil
		}
		if !ok {
			// A sandbox carries only the pairing's name; its namespace
			// holds the reference.
			nsObj := &corev1.Namespace{}
			if err := mgr.GetClient().Get(context.Background(), client.ObjectKey{Name: obj.GetNamespace()}, nsObj); err != nil {
				return nil
			}
			if ns, name, ok = cutRef(nsObj.Annotations[offload.AnnotationPairing]); !ok {
				return nil
			}
		}
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}}
	}
	offloadOnly := predicate.NewPredicateFuncs(func(obj client.Object) bool { return obj.GetLabels()[offload.LabelOffload] == "true" })
	return ctrl.NewControllerManagedBy(mgr).
		Named("offload").
		For(&karsv1.KarsPairing{}, builder.WithPredicates(predicate.NewPredicateFuncs(func(obj client.Object) bool {
			return isOffloadPairing(obj.(*karsv1.KarsPairing))
		}))).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(toPairing), builder.WithPredicates(offloadOnly)).
		Watches(&karsv1.KarsSandbox{}, handler.EnqueueRequestsFromMapFunc(toPairing), builder.WithPredicates(offloadOnly)).
		// The offload's own KarsPairing turns Ready when its router admits
		// the host: that is when the host may send the task.
		Watches(&karsv1.KarsPairing{}, handler.EnqueueRequestsFromMapFunc(toPairing), builder.WithPredicates(offloadOnly)).
		WithOptions(controller.Options{MaxConcurrentReconciles: o.MaxConcurrentReconciles}).
		Complete(r)
}

func cutRef(ref string) (ns, name string, ok bool) {
	ns, name, ok = strings.Cut(ref, "/")
	return ns, name, ok && ns != "" && name != ""
}

// Reconcile implements reconcile.Reconciler for an offload pairing.
func (r *OffloadReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	now := r.now()
	kp := &karsv1.KarsPairing{}
	err := r.client.Get(ctx, req.NamespacedName, kp)
	if apierrors.IsNotFound(err) {
		// The pairing is gone: so are its offloads.
		gone := &karsv1.KarsPairing{ObjectMeta: metav1.ObjectMeta{Namespace: req.Namespace, Name: req.Name}}
		nss, err := offloadNamespaces(ctx, r.client, gone)
		if err != nil {
			return reconcile.Result{}, err
		}
		for i := range nss {
			if err := r.endOffload(ctx, nil, &nss[i], offload.EndDeleted); err != nil {
				return reconcile.Result{}, err
			}
		}
		return reconcile.Result{}, r.broker.syncPolicy(ctx)
	}
	if err != nil || !isOffloadPairing(kp) {
		return reconcile.Result{}, err
	}
	if err := r.broker.syncPolicy(ctx); err != nil {
		log.FromContext(ctx).Info("offload broker policy not synced", "err", err)
	}
	nss, err := offloadNamespaces(ctx, r.client, kp)
	if err != nil {
		return reconcile.Result{}, err
	}
	next := time.Duration(0)
	wake := func(d time.Duration) {
		if d > 0 && (next == 0 || d < next) {
			next = d
		}
	}
	wake(kp.Spec.ExpiresAt.Sub(now) + time.Second)
	var errs []error
	for i := range nss {
		ns := &nss[i]
		if ns.DeletionTimestamp != nil {
			continue
		}
		reason := ns.Annotations[offload.AnnotationEnd]
		expires, _ := time.Parse(time.RFC3339, ns.Annotations[offload.AnnotationExpires])
		switch {
		case reason != "":
		case kp.Spec.Revoked:
			reason = offload.EndRevoked
		case !now.Before(kp.Spec.ExpiresAt.Time):
			reason = offload.EndExpired
		case !expires.IsZero() && !now.Before(expires):
			reason = offload.EndTTL
		}
		if reason != "" {
			if err := r.endOffload(ctx, kp, ns, reason); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		wake(expires.Sub(now) + time.Second)
		wake(offloadRefresh)
		r.observe(ctx, kp, ns)
	}
	// Fresh state for the status: ending offloads may have been settled.
	if err := r.client.Get(ctx, req.NamespacedName, kp); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if nss, err = offloadNamespaces(ctx, r.client, kp); err != nil {
		return reconcile.Result{}, err
	}
	if err := r.writeStatus(ctx, kp, nss, now); err != nil {
		errs = append(errs, err)
	}
	if kp.Status.TokensDay != "" {
		midnight := now.UTC().Truncate(24 * time.Hour).Add(24 * time.Hour)
		wake(midnight.Sub(now) + time.Second)
	}
	if err := errors.Join(errs...); err != nil {
		return reconcile.Result{}, err
	}
	return reconcile.Result{RequeueAfter: next}, nil
}

// observe tells the host once its offload is ready and records the
// tokens its router has metered so far.
func (r *OffloadReconciler) observe(ctx context.Context, kp *karsv1.KarsPairing, ns *corev1.Namespace) {
	id := ns.Labels[offload.LabelID]
	sb := &karsv1.KarsSandbox{}
	if err := r.client.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: offload.SandboxName(id)}, sb); err != nil {
		return
	}
	if t, ok, err := routerTargetOf(ctx, r.client, sb); err == nil && ok {
		if bud, err := r.admin.Budget(ctx, t); err == nil {
			if seen := strconv.FormatInt(bud.Ledger.Lifetime, 10); ns.Annotations[offload.AnnotationUsed] != seen {
				patch := client.MergeFrom(ns.DeepCopy())
				ns.Annotations[offload.AnnotationUsed] = seen
				r.client.Patch(ctx, ns, patch)
			}
		}
	}
	if ns.Annotations[offload.AnnotationReady] != "" || !r.broker.ready() {
		return
	}
	did := r.broker.readyDID(ctx, ns)
	if did == "" {
		return
	}
	info := offloadInfo(ns, did)
	r.broker.notify(kp.Name, offload.NewEvent(offload.EventReady, &info, nil))
	r.broker.record(ctx, audit.Record{Action: "offload:ready:" + kp.Name, Decision: "allow", Rule: ruleOffload,
		Reason: fmt.Sprintf("offload %s is ready: its router %s admits the host", id, did),
		Attrs:  map[string]string{"offload": id, "sandbox_did": did, "peer_did": ns.Annotations[offload.AnnotationPeer]}})
	patch := client.MergeFrom(ns.DeepCopy())
	ns.Annotations[offload.AnnotationReady] = r.now().UTC().Format(time.RFC3339)
	if err := r.client.Patch(ctx, ns, patch); err != nil {
		log.FromContext(ctx).Info("offload ready mark not recorded", "offload", id, "err", err)
	}
}

// endOffload settles an offload's tokens against its pairing, deletes its
// namespace (and with it the sandbox, its router and its KarsPairing),
// records it and tells the host. kp is nil when the pairing is gone.
//
// Settling is at least once: the charge is recorded on the pairing before
// the namespace is marked settled, so a crash in between charges the
// offload twice (in the budget's favour) rather than never.
func (r *OffloadReconciler) endOffload(ctx context.Context, kp *karsv1.KarsPairing, ns *corev1.Namespace, reason string) error {
	id := ns.Labels[offload.LabelID]
	if ns.Annotations[offload.AnnotationEnd] == "" {
		if err := markEnding(ctx, r.client, ns, reason); err != nil {
			return err
		}
	}
	reason = ns.Annotations[offload.AnnotationEnd]
	used, measured, head := r.finalUse(ctx, ns)
	if _, settled := ns.Annotations[offload.AnnotationSettled]; !settled {
		if kp != nil {
			if err := r.charge(ctx, client.ObjectKeyFromObject(kp), used); err != nil {
				return err
			}
		}
		patch := client.MergeFrom(ns.DeepCopy())
		ns.Annotations[offload.AnnotationSettled] = strconv.FormatInt(used, 10)
		if err := r.client.Patch(ctx, ns, patch); err != nil {
			return err
		}
	}
	if err := r.client.Delete(ctx, ns); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	attrs := map[string]string{"offload": id, "reason": reason, "tokens_used": strconv.FormatInt(used, 10), "tokens_measured": strconv.FormatBool(measured),
		"peer_did": ns.Annotations[offload.AnnotationPeer], "task_sha256": ns.Annotations[offload.AnnotationTask]}
	if head != nil {
		attrs["sandbox_audit_seq"], attrs["sandbox_audit_hash"] = strconv.FormatUint(head.Seq, 10), head.Hash
	}
	name := ns.Labels[offload.LabelPairing]
	if r.broker.ready() {
		r.broker.record(ctx, audit.Record{Action: "offload:end:" + name, Decision: "allow", Rule: ruleOffload,
			Reason: fmt.Sprintf("offload %s ended (%s): %d tokens charged to the pairing, its namespace deleted", id, reason, used), Attrs: attrs})
	}
	log.FromContext(ctx).Info("offload ended", "offload", id, "reason", reason, "tokens", used)
	if reason != offload.EndRevoked && reason != offload.EndDeleted {
		info := offloadInfo(ns, "")
		info.TokensUsed = used
		r.broker.notify(name, offload.NewEvent(offload.EventEnded, &info, nil))
	}
	return nil
}

// finalUse is what an ending offload used: its router's lifetime count
// when the router answers, else the last count read, else (an offload
// whose use cannot be known) its whole allocation.
func (r *OffloadReconciler) finalUse(ctx context.Context, ns *corev1.Namespace) (used int64, measured bool, head *AuditHead) {
	if s, ok := ns.Annotations[offload.AnnotationSettled]; ok {
		n, _ := strconv.ParseInt(s, 10, 64)
		return n, true, nil
	}
	id := ns.Labels[offload.LabelID]
	sb := &karsv1.KarsSandbox{}
	if err := r.client.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: offload.SandboxName(id)}, sb); err == nil {
		if t, ok, err := routerTargetOf(ctx, r.client, sb); err == nil && ok {
			if h, err := r.admin.AuditHead(ctx, t); err == nil {
				head = &h
			}
			if bud, err := r.admin.Budget(ctx, t); err == nil {
				return bud.Ledger.Lifetime, true, head
			}
		}
	}
	if s := ns.Annotations[offload.AnnotationUsed]; s != "" {
		n, _ := strconv.ParseInt(s, 10, 64)
		return n, true, head
	}
	n, _ := strconv.ParseInt(ns.Annotations[offload.AnnotationTokens], 10, 64)
	return n, false, head
}

// charge adds used tokens to the pairing's count for today, under the API
// server's optimistic concurrency.
func (r *OffloadReconciler) charge(ctx context.Context, key client.ObjectKey, used int64) error {
	day := offload.Day(r.now())
	for {
		kp := &karsv1.KarsPairing{}
		if err := r.broker.live.Get(ctx, key, kp); err != nil {
			return client.IgnoreNotFound(err)
		}
		if kp.Status.TokensDay != day {
			kp.Status.TokensDay, kp.Status.TokensUsed = day, 0
		}
		kp.Status.TokensUsed += used
		err := r.client.Status().Update(ctx, kp)
		if !apierrors.IsConflict(err) {
			return err
		}
	}
}

// writeStatus reports the pairing's phase, slots and tokens.
func (r *OffloadReconciler) writeStatus(ctx context.Context, kp *karsv1.KarsPairing, nss []corev1.Namespace, now time.Time) error {
	slots, reserved := liveOffloads(nss)
	st := *kp.Status.DeepCopy()
	st.SlotsInUse, st.TokensReserved, st.ObservedGeneration = int32(len(slots)), reserved, kp.Generation
	day := offload.Day(now)
	if st.TokensDay != "" && st.TokensDay != day {
		st.TokensDay, st.TokensUsed = day, 0
	}
	cond := metav1.Condition{Type: karsv1.ConditionReady, Status: metav1.ConditionFalse, ObservedGeneration: kp.Generation}
	pv := pairingView(kp)
	switch {
	case kp.Spec.Revoked:
		st.Phase, cond.Reason, cond.Message = karsv1.PairingRevoked, "Revoked", "the pairing was revoked: its offloads are stopped and the broker refuses the host"
	case !now.Before(kp.Spec.ExpiresAt.Time):
		st.Phase, cond.Reason, cond.Message = karsv1.PairingExpired, "Expired", "the pairing expired at "+kp.Spec.ExpiresAt.UTC().Format(time.RFC3339)
	case st.PeerIdentity == "":
		st.Phase, cond.Reason, cond.Message = karsv1.PairingPending, "AwaitingRedemption", "the pairing token has not been redeemed yet"
	case kp.Spec.Offload == nil:
		st.Phase, cond.Reason, cond.Message = karsv1.PairingActive, "NoOffloadTemplate", "the host is paired, but spec.offload is not set: offload requests are refused"
	case pv.Daily > 0 && pv.Daily-pv.UsedOn(day)-reserved <= 0:
		st.Phase, cond.Reason = karsv1.PairingExhausted, "BudgetSpent"
		cond.Message = fmt.Sprintf("today's token budget of %d is spent (%d used, %d held by live offloads); offload requests are refused until 00:00 UTC", pv.Daily, pv.UsedOn(day), reserved)
	case !r.broker.ready():
		st.Phase, cond.Reason, cond.Message = karsv1.PairingActive, "BrokerNotReady", "the offload broker has not connected to kars-mesh yet"
	default:
		st.Phase, cond.Status, cond.Reason = karsv1.PairingActive, metav1.ConditionTrue, "Active"
		cond.Message = fmt.Sprintf("the offload broker admits %s: %d of %d slots in use", st.PeerIdentity, len(slots), pv.Slots)
	}
	meta.SetStatusCondition(&st.Conditions, cond)
	if equality.Semantic.DeepEqual(st, kp.Status) {
		return nil
	}
	kp.Status = st
	// A conflict (a redemption, or a settlement, wrote first) is returned
	// so that the pairing is reconciled again with what they wrote.
	return client.IgnoreNotFound(r.client.Status().Update(ctx, kp))
}
