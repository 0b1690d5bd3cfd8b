package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
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
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/mesh/policy"
	pairingapi "github.com/kars-io/kars/internal/pairing/apiserver"
	"github.com/kars-io/kars/internal/render"
)

// Router admin paths of the mesh bridge (internal/mesh/bridge).
const (
	MeshStatusPath = "/admin/v1/mesh"
	MeshPolicyPath = "/admin/v1/mesh/policy"
)

// Annotations a token pairing redeemed elsewhere carries (`kars mesh
// auth`): where its peer's registry and relay are.
const (
	AnnotationPeerRegistry = "kars.io/peer-registry"
	AnnotationPeerRelay    = "kars.io/peer-relay"
)

// LabelPairing groups the two KarsPairings `kars pair A B` creates.
const LabelPairing = "kars.io/pairing"

// RouterMesh is what a router's mesh bridge reports.
type RouterMesh struct {
	DID          string `json:"did"`
	PolicyDigest string `json:"policyDigest"`
	Connected    bool   `json:"connected"`
}

// MeshAdmin reads a router's mesh identity and sets its mesh policy over
// the admin API. HTTPSProber implements it.
type MeshAdmin interface {
	MeshStatus(ctx context.Context, t RouterTarget) (RouterMesh, error)
	PushMeshPolicy(ctx context.Context, t RouterTarget, p *policy.Policy) error
}

// MeshStatus implements MeshAdmin.
func (p *HTTPSProber) MeshStatus(ctx context.Context, t RouterTarget) (RouterMesh, error) {
	var m RouterMesh
	body, err := p.get(ctx, t, MeshStatusPath, &m)
	if err == nil && m.DID == "" {
		err = fmt.Errorf("router admin API returned no mesh identity: %.200s", body)
	}
	return m, err
}

// PushMeshPolicy implements MeshAdmin.
func (p *HTTPSProber) PushMeshPolicy(ctx context.Context, t RouterTarget, pol *policy.Policy) error {
	b, err := json.Marshal(pol)
	if err != nil {
		return err
	}
	var out struct {
		Digest string `json:"digest"`
	}
	if _, err := p.call(ctx, t, "PUT", MeshPolicyPath, b, &out); err != nil {
		return err
	}
	if out.Digest != pol.Digest() {
		return fmt.Errorf("router enforces mesh policy %s after the push, want %s", out.Digest, pol.Digest())
	}
	return nil
}

// MeshReconciler keeps every sandbox's router enforcing the mesh policy
// its pairings (and the verified trust graph) define, and reports each
// KarsPairing's phase. It reconciles sandboxes: a router's policy is the
// sum of the sandbox's pairings. Pushing over the admin API, rather than
// through the router ConfigMap the kubelet refreshes within a minute or
// so, is what makes a revocation take effect in seconds.
type MeshReconciler struct {
	client client.Client
	admin  MeshAdmin
	graph  *verifiedGraphs
	now    func() time.Time
	// resync re-reads routers and re-pushes policies this often, so a
	// router that lost its state (a new identity) is noticed by its
	// peers.
	resync time.Duration

	mu   sync.Mutex
	dids map[types.UID]string // routers' mesh identities, last seen
}

// indexPeerSandbox indexes KarsPairings by spec.peerSandbox.
const indexPeerSandbox = "spec.peerSandbox"

// setupMesh registers the MeshReconciler.
func setupMesh(mgr ctrl.Manager, o Options, graph *verifiedGraphs) error {
	admin, ok := o.Prober.(MeshAdmin)
	if !ok {
		return errors.New("controller: the router prober cannot reach the mesh admin API")
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &karsv1.KarsPairing{}, indexPeerSandbox, func(o client.Object) []string {
		if p := o.(*karsv1.KarsPairing).Spec.PeerSandbox; p != "" {
			return []string{p}
		}
		return nil
	}); err != nil {
		return err
	}
	r := &MeshReconciler{client: mgr.GetClient(), admin: admin, graph: graph, now: o.Now, resync: time.Minute, dids: map[types.UID]string{}}
	c := mgr.GetClient()
	return ctrl.NewControllerManagedBy(mgr).
		Named("mesh").
		// A sandbox reconciles itself and the sandboxes paired with it
		// (its router's identity is their peer).
		Watches(&karsv1.KarsSandbox{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
			out := []reconcile.Request{{NamespacedName: client.ObjectKeyFromObject(o)}}
			var list karsv1.KarsPairingList
			if err := c.List(ctx, &list, client.MatchingFields{indexPeerSandbox: o.GetNamespace() + "/" + o.GetName()}); err == nil {
				for _, p := range list.Items {
					if p.Spec.SandboxRef != nil {
						out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: p.Namespace, Name: p.Spec.SandboxRef.Name}})
					}
				}
			}
			return out
		})).
		Watches(&karsv1.KarsPairing{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			p := o.(*karsv1.KarsPairing)
			if p.Spec.SandboxRef == nil {
				return nil
			}
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: p.Namespace, Name: p.Spec.SandboxRef.Name}}}
		})).
		WatchesRawSource(graph.source()).
		WithOptions(controller.Options{MaxConcurrentReconciles: o.MaxConcurrentReconciles}).
		Complete(r)
}

// pairingOutcome is one pairing's computed state.
type pairingOutcome struct {
	phase, reason, message string
	peerDID                string
	peer                   *policy.Peer
}

// Reconcile implements reconcile.Reconciler for a sandbox.
func (r *MeshReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var list karsv1.KarsPairingList
	if err := r.client.List(ctx, &list, client.InNamespace(req.Namespace)); err != nil {
		return reconcile.Result{}, err
	}
	var pairings []*karsv1.KarsPairing
	for i := range list.Items {
		if ref := list.Items[i].Spec.SandboxRef; ref != nil && ref.Name == req.Name {
			pairings = append(pairings, &list.Items[i])
		}
	}
	sb := &karsv1.KarsSandbox{}
	if err := r.client.Get(ctx, req.NamespacedName, sb); err != nil {
		if !apierrors.IsNotFound(err) {
			return reconcile.Result{}, err
		}
		sb = nil
	}
	now := r.now()
	outcomes := make([]pairingOutcome, len(pairings))
	var pol policy.Policy
	next := r.resync
	for i, p := range pairings {
		outcomes[i] = r.pairing(ctx, sb, p, now)
		if pe := outcomes[i].peer; pe != nil {
			pol.Peers = append(pol.Peers, *pe)
			next = min(next, max(p.Spec.ExpiresAt.Sub(now)+time.Second, time.Second))
		}
	}
	slices.SortFunc(pol.Peers, func(a, b policy.Peer) int { return strings.Compare(a.Name, b.Name) })

	configured, pushErr := false, error(nil)
	if sb != nil {
		if t, ok, err := r.target(ctx, sb); err != nil {
			pushErr = err
		} else if ok {
			configured, pushErr = r.push(ctx, sb, t, &pol)
		} else {
			pushErr = errors.New("the sandbox's router is not running yet")
		}
	}
	if pushErr != nil {
		log.FromContext(ctx).V(1).Info("mesh policy not pushed", "sandbox", req.NamespacedName, "err", pushErr)
		next = min(next, 5*time.Second)
	}
	var errs []error
	for i, p := range pairings {
		if err := r.writeStatus(ctx, p, outcomes[i], configured, pushErr); err != nil {
			errs = append(errs, err)
		}
	}
	return reconcile.Result{RequeueAfter: next}, errors.Join(errs...)
}

// pairing computes one pairing's phase and, when active, its peer.
func (r *MeshReconciler) pairing(ctx context.Context, sb *karsv1.KarsSandbox, p *karsv1.KarsPairing, now time.Time) pairingOutcome {
	switch {
	case p.Spec.Revoked:
		return pairingOutcome{phase: karsv1.PairingRevoked, reason: "Revoked", message: "the pairing was revoked; routers refuse the peer"}
	case !now.Before(p.Spec.ExpiresAt.Time):
		return pairingOutcome{phase: karsv1.PairingExpired, reason: "Expired", message: "the pairing expired at " + p.Spec.ExpiresAt.UTC().Format(time.RFC3339)}
	case sb == nil:
		return pairingOutcome{phase: karsv1.PairingPending, reason: "SandboxNotFound", message: fmt.Sprintf("sandbox %s/%s does not exist", p.Namespace, p.Spec.SandboxRef.Name)}
	}
	peer := &policy.Peer{Name: p.Name, Pairing: p.Namespace + "/" + p.Name, ExpiresAt: p.Spec.ExpiresAt.UTC().Truncate(time.Second)}
	for _, c := range p.Spec.Capabilities {
		peer.Capabilities = append(peer.Capabilities, string(c))
	}
	if ps := p.Spec.PeerSandbox; ps != "" {
		ns, name, _ := strings.Cut(ps, "/")
		other := &karsv1.KarsSandbox{}
		if err := r.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, other); err != nil {
			return pairingOutcome{phase: karsv1.PairingPending, reason: "PeerNotFound", message: fmt.Sprintf("peer sandbox %s: %v", ps, err)}
		}
		did, err := r.didOf(ctx, other)
		if err != nil {
			return pairingOutcome{phase: karsv1.PairingPending, reason: "PeerNotReady", message: fmt.Sprintf("peer sandbox %s has not reported its mesh identity yet: %v", ps, err)}
		}
		peer.DID, peer.Sandbox = did, ps
		return pairingOutcome{phase: karsv1.PairingActive, reason: "Active", peerDID: did, peer: peer}
	}
	if p.Status.PeerIdentity == "" {
		return pairingOutcome{phase: karsv1.PairingPending, reason: "AwaitingRedemption", message: "the pairing token has not been redeemed yet"}
	}
	peer.DID, peer.Registry = p.Status.PeerIdentity, p.Annotations[AnnotationPeerRegistry]
	return pairingOutcome{phase: karsv1.PairingActive, reason: "Active", peerDID: p.Status.PeerIdentity, peer: peer}
}

// target is how to reach sb's router admin API; ok is false while the
// router has no endpoint yet.
func (r *MeshReconciler) target(ctx context.Context, sb *karsv1.KarsSandbox) (RouterTarget, bool, error) {
	return routerTargetOf(ctx, r.client, sb)
}

// routerTargetOf is how to reach sb's router admin API: its endpoint,
// pinned certificate and bearer token; ok is false while the router has
// no endpoint yet.
func routerTargetOf(ctx context.Context, c client.Reader, sb *karsv1.KarsSandbox) (RouterTarget, bool, error) {
	if sb.Status.RouterEndpoint == "" {
		return RouterTarget{}, false, nil
	}
	names, err := render.NamesFor(sb)
	if err != nil {
		return RouterTarget{}, false, err
	}
	sec := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: names.RouterAdmin}, sec); err != nil {
		return RouterTarget{}, false, client.IgnoreNotFound(err)
	}
	// Never hand the router's token to, or trust the certificate of, a
	// Secret of that name that kars did not create.
	if !ownedBy(sec, sb) {
		return RouterTarget{}, false, fmt.Errorf("admin Secret %s is not the sandbox's", names.RouterAdmin)
	}
	return RouterTarget{Endpoint: sb.Status.RouterEndpoint, ServerName: names.RouterHostname,
		CertPEM: sec.Data[render.AdminCertKey], Token: sec.Data[render.AdminTokenKey]}, true, nil
}

// didOf asks sb's router for its mesh identity; the last one seen
// stands in while the router is unreachable (a restart), so a peer's
// pairing does not flap.
func (r *MeshReconciler) didOf(ctx context.Context, sb *karsv1.KarsSandbox) (string, error) {
	t, ok, err := r.target(ctx, sb)
	if err == nil && ok {
		var st RouterMesh
		if st, err = r.admin.MeshStatus(ctx, t); err == nil {
			r.mu.Lock()
			r.dids[sb.UID] = st.DID
			r.mu.Unlock()
			return st.DID, nil
		}
	} else if err == nil {
		err = errors.New("its router is not running yet")
	}
	r.mu.Lock()
	did, known := r.dids[sb.UID]
	r.mu.Unlock()
	if known {
		return did, nil
	}
	return "", err
}

// push makes the router enforce pol, unless it already does.
func (r *MeshReconciler) push(ctx context.Context, sb *karsv1.KarsSandbox, t RouterTarget, pol *policy.Policy) (bool, error) {
	st, err := r.admin.MeshStatus(ctx, t)
	if err != nil {
		return false, err
	}
	r.mu.Lock()
	r.dids[sb.UID] = st.DID
	r.mu.Unlock()
	pol.Graph = r.graph.project([]string{sb.Namespace + "/" + sb.Name, st.DID}, r.now())
	if st.PolicyDigest == pol.Digest() {
		return true, nil
	}
	if err := r.admin.PushMeshPolicy(ctx, t, pol); err != nil {
		return false, err
	}
	log.FromContext(ctx).Info("mesh policy pushed", "sandbox", client.ObjectKeyFromObject(sb), "peers", len(pol.Peers), "digest", pol.Digest())
	return true, nil
}

// writeStatus updates a pairing's status, conditioned on the version it
// read: a redemption binding the pairing at the same moment wins, and
// the next reconcile sees it.
func (r *MeshReconciler) writeStatus(ctx context.Context, p *karsv1.KarsPairing, o pairingOutcome, configured bool, pushErr error) error {
	st := *p.Status.DeepCopy()
	st.Phase = o.phase
	if p.Spec.PeerSandbox != "" && o.peerDID != "" {
		st.PeerIdentity = o.peerDID
	}
	st.ObservedGeneration = p.Generation
	cond := metav1.Condition{Type: karsv1.ConditionReady, Status: metav1.ConditionFalse, Reason: o.reason, Message: o.message, ObservedGeneration: p.Generation}
	switch {
	case o.phase != karsv1.PairingActive:
	case configured:
		cond.Status, cond.Message = metav1.ConditionTrue, "the router enforces the pairing with "+o.peerDID
	default:
		cond.Reason, cond.Message = "RouterNotConfigured", "the pairing is active but its router has not taken it yet"
		if pushErr != nil {
			cond.Message += ": " + pushErr.Error()
		}
	}
	meta.SetStatusCondition(&st.Conditions, cond)
	if equality.Semantic.DeepEqual(st, p.Status) {
		return nil
	}
	p.Status = st
	if err := r.client.Status().Update(ctx, p); err != nil && !apierrors.IsConflict(err) {
		return client.IgnoreNotFound(err)
	}
	return nil
}

// setupMeshControllers registers what the mesh needs when the
// environment has one: the TrustGraph and mesh reconcilers, the cluster's
// pairing key, and (DeployMesh) kars-mesh itself.
func setupMeshControllers(mgr ctrl.Manager, o Options) error {
	graphs := newVerifiedGraphs(mgr.GetClient())
	if err := setupTrustGraphs(mgr, o, graphs); err != nil {
		return err
	}
	if err := setupMesh(mgr, o, graphs); err != nil {
		return err
	}
	c := mgr.GetClient()
	live := mgr.GetAPIReader()
	return mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		// The system namespace may not exist yet (kars dev creates it
		// after the controller starts): retry until it does. Then look
		// again every minute: `kars mesh peer enable` changes the
		// federation configuration kars-mesh is rendered from.
		wait := time.Second
		for {
			err := ensureMeshSystem(ctx, c, live, o)
			if err != nil {
				log.FromContext(ctx).Info("mesh system objects not ready; retrying", "err", err, "in", wait)
				wait = min(2*wait, time.Minute)
			} else {
				wait = time.Minute
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
	}))
}

// ensureMeshSystem creates the cluster's pairing key and, with
// DeployMesh, applies kars-mesh (with federation when the
// kars-mesh-federation ConfigMap and Secret exist).
func ensureMeshSystem(ctx context.Context, c client.Client, live client.Reader, o Options) error {
	// The key objects are not kars-rendered, so the cache does not hold
	// them: read through the API server.
	if _, err := pairingapi.EnsureKey(ctx, liveClient{Client: c, live: live}, o.Env.SystemNamespace); err != nil {
		return fmt.Errorf("pairing key: %w", err)
	}
	if !o.DeployMesh {
		return nil
	}
	in := render.MeshSystemInput{Env: o.Env, Redeem: true}
	cm := &corev1.ConfigMap{}
	switch err := live.Get(ctx, client.ObjectKey{Namespace: o.Env.SystemNamespace, Name: render.FederationName}, cm); {
	case err == nil:
		in.FederationPort, in.FederationSecret = render.FederationPort, render.FederationName
		for _, line := range strings.Split(cm.Data["peers"], "\n") {
			if line = strings.TrimSpace(line); line != "" {
				in.FederationPeers = append(in.FederationPeers, line)
			}
		}
	case !apierrors.IsNotFound(err):
		return err
	}
	objs, err := render.MeshSystem(in)
	if err != nil {
		return err
	}
	a := &applier{c: c, live: live, metrics: getMetrics()}
	for _, obj := range objs {
		if _, err := a.apply(ctx, obj); err != nil {
			return fmt.Errorf("deploy kars-mesh: %w", err)
		}
	}
	return nil
}

// liveClient reads from the API server and writes through the manager's
// client.
type liveClient struct {
	client.Client
	live client.Reader
}

func (l liveClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	return l.live.Get(ctx, key, obj, opts...)
}
