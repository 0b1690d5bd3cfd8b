package controller

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"maps"
	"reflect"
	"sort"
	"sync"
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
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/mesh/policy"
)

// TrustKeysName is the ConfigMap in the system namespace holding the
// Ed25519 public keys trust edges are signed with: data maps a keyID to
// the base64 (standard or URL) public key. Whoever may edit it decides
// whose signatures count.
const TrustKeysName = "kars-trust-keys"

// verifiedGraphs holds the verified, live edges of every TrustGraph for
// the MeshReconciler, which projects them into routers. A change wakes
// every sandbox's mesh reconcile.
type verifiedGraphs struct {
	mu     sync.Mutex
	graphs map[string][]policy.Edge
	events chan event.GenericEvent
	client client.Reader
}

func newVerifiedGraphs(c client.Reader) *verifiedGraphs {
	return &verifiedGraphs{graphs: map[string][]policy.Edge{}, events: make(chan event.GenericEvent, 16), client: c}
}

// set replaces one graph's edges and reports whether they changed.
func (v *verifiedGraphs) set(name string, edges []policy.Edge) {
	v.mu.Lock()
	old, had := v.graphs[name]
	if edges == nil {
		delete(v.graphs, name)
	} else {
		v.graphs[name] = edges
	}
	changed := had != (edges != nil) || !reflect.DeepEqual(old, edges)
	v.mu.Unlock()
	if changed {
		select {
		case v.events <- event.GenericEvent{Object: &karsv1.TrustGraph{ObjectMeta: metav1.ObjectMeta{Name: name}}}:
		default: // a wake-up is already queued; it lists every sandbox
		}
	}
}

// project returns the live edges whose From is one of self, or nil when
// no graph names this router (the graph then does not constrain it).
func (v *verifiedGraphs) project(self []string, now time.Time) *policy.Graph {
	if v == nil {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []policy.Edge
	for _, name := range sortedKeys(v.graphs) {
		for _, e := range v.graphs[name] {
			if e.ExpiresAt != nil && !now.Before(*e.ExpiresAt) {
				continue
			}
			for _, s := range self {
				if e.From == s {
					out = append(out, e)
					break
				}
			}
		}
	}
	if out == nil {
		return nil
	}
	return &policy.Graph{Edges: out}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range maps.Keys(m) {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// source wakes the MeshReconciler for every sandbox when a graph changes.
func (v *verifiedGraphs) source() source.Source {
	return source.Channel(v.events, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, _ client.Object) []reconcile.Request {
		var list karsv1.KarsSandboxList
		if err := v.client.List(ctx, &list); err != nil {
			return nil
		}
		out := make([]reconcile.Request, len(list.Items))
		for i, sb := range list.Items {
			out[i] = reconcile.Request{NamespacedName: types.NamespacedName{Namespace: sb.Namespace, Name: sb.Name}}
		}
		return out
	}))
}

// TrustGraphReconciler verifies each edge's signature over its canonical
// bytes (policy.EdgeSigningBytes) with the key its keyID names in the
// kars-trust-keys ConfigMap, drops expired and unverifiable edges,
// reports the counts, and hands the verified graph to the routers
// through the MeshReconciler.
type TrustGraphReconciler struct {
	client    client.Client
	apiReader client.Reader
	ns        string
	graphs    *verifiedGraphs
	now       func() time.Time
}

func setupTrustGraphs(mgr ctrl.Manager, o Options, graphs *verifiedGraphs) error {
	r := &TrustGraphReconciler{client: mgr.GetClient(), apiReader: mgr.GetAPIReader(), ns: o.Env.SystemNamespace, graphs: graphs, now: o.Now}
	return ctrl.NewControllerManagedBy(mgr).
		Named("trustgraph").
		For(&karsv1.TrustGraph{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Complete(r)
}

// Reconcile implements reconcile.Reconciler.
func (r *TrustGraphReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	tg := &karsv1.TrustGraph{}
	if err := r.client.Get(ctx, req.NamespacedName, tg); err != nil {
		if apierrors.IsNotFound(err) {
			r.graphs.set(req.Name, nil)
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, err
	}
	// The key ConfigMap is not kars-rendered, so the label-filtered
	// cache does not hold it: read it from the API server.
	keys, keyErr := r.keys(ctx)
	now := r.now()
	var verified []policy.Edge
	var rejected []string
	var next time.Duration
	for i, e := range tg.Spec.Edges {
		var exp *time.Time
		if e.ExpiresAt != nil {
			t := e.ExpiresAt.UTC()
			exp = &t
		}
		pub, known := keys[e.KeyID]
		switch {
		case exp != nil && !now.Before(*exp):
			rejected = append(rejected, fmt.Sprintf("edge %d (%s → %s) expired", i, e.From, e.To))
			continue
		case !known:
			rejected = append(rejected, fmt.Sprintf("edge %d (%s → %s): key %q is not in %s/%s", i, e.From, e.To, e.KeyID, r.ns, TrustKeysName))
			continue
		}
		if err := policy.VerifyEdge(pub, e.Signature, tg.Spec.TrustDomain, e.From, e.To, int(e.Score), exp); err != nil {
			rejected = append(rejected, fmt.Sprintf("edge %d (%s → %s): the signature by %q does not verify", i, e.From, e.To, e.KeyID))
			continue
		}
		verified = append(verified, policy.Edge{From: e.From, To: e.To, Score: int(e.Score), ExpiresAt: exp})
		if exp != nil && (next == 0 || exp.Sub(now) < next) {
			next = exp.Sub(now) + time.Second
		}
	}
	r.graphs.set(tg.Name, verified)
	st := tg.Status.DeepCopy()
	st.VerifiedEdges, st.RejectedEdges, st.ObservedGeneration = int32(len(verified)), int32(len(rejected)), tg.Generation
	cond := metav1.Condition{Type: karsv1.ConditionReady, Status: metav1.ConditionTrue, Reason: "Verified", ObservedGeneration: tg.Generation,
		Message: fmt.Sprintf("%d edges verified and projected into routers", len(verified))}
	if len(rejected) > 0 {
		cond.Status, cond.Reason = metav1.ConditionFalse, "EdgesRejected"
		cond.Message = fmt.Sprintf("%d verified, %d dropped: %s", len(verified), len(rejected), joinFirst(rejected, 5))
	}
	if keyErr != nil {
		cond.Status, cond.Reason = metav1.ConditionFalse, "KeysUnavailable"
		cond.Message = fmt.Sprintf("trust keys %s/%s: %v", r.ns, TrustKeysName, keyErr)
	}
	meta.SetStatusCondition(&st.Conditions, cond)
	if !equality.Semantic.DeepEqual(*st, tg.Status) {
		patch := client.MergeFrom(tg.DeepCopy())
		tg.Status = *st
		if err := r.client.Status().Patch(ctx, tg, patch); err != nil {
			return reconcile.Result{}, client.IgnoreNotFound(err)
		}
	}
	if keyErr != nil {
		return reconcile.Result{RequeueAfter: 30 * time.Second}, nil
	}
	// Keys may be added or rotated without touching the graph: look
	// again now and then, and when the next edge expires.
	return reconcile.Result{RequeueAfter: minPositive(next, time.Minute)}, nil
}

func joinFirst(s []string, n int) string {
	out := ""
	for i, x := range s {
		if i == n {
			return out + fmt.Sprintf("; and %d more", len(s)-n)
		}
		if i > 0 {
			out += "; "
		}
		out += x
	}
	return out
}

// keys reads the trust keys ConfigMap.
func (r *TrustGraphReconciler) keys(ctx context.Context) (map[string]ed25519.PublicKey, error) {
	cm := &corev1.ConfigMap{}
	if err := r.apiReader.Get(ctx, client.ObjectKey{Namespace: r.ns, Name: TrustKeysName}, cm); err != nil {
		return nil, err
	}
	out := map[string]ed25519.PublicKey{}
	for id, v := range cm.Data {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			if b, err := enc.DecodeString(v); err == nil && len(b) == ed25519.PublicKeySize {
				out[id] = b
				break
			}
		}
	}
	return out, nil
}
