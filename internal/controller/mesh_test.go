package controller

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/mesh/bridge"
	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/policy"
	"github.com/kars-io/kars/internal/pairing"
	pairingapi "github.com/kars-io/kars/internal/pairing/apiserver"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/trust"
)

// allowAll is the stand-in router's governance: the controller tests
// exercise what the controller pushes, not what the router decides.
type allowAll struct{}

func (allowAll) Decide(string) governance.Decision {
	return governance.Decision{Verdict: governance.Allow}
}
func (allowAll) Audit(context.Context, audit.Record) error { return nil }
func (allowAll) AuditFailing() bool                        { return false }

// standInBridge opens a real mesh bridge for a stand-in router (never
// connected to a relay): its admin handler keeps the pushed policy.
func standInBridge(t *testing.T, c *routerconfig.Config) *bridge.Bridge {
	t.Helper()
	if c.Mesh == nil {
		return nil
	}
	ts, err := trust.Open("", trust.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ts.Close() })
	b, err := bridge.Open(bridge.Options{Dir: t.TempDir(), Registry: c.Mesh.Registry, Relay: c.Mesh.Relay,
		Self: []string{c.Sandbox.AgentID}, Threshold: c.Mesh.TrustThreshold, Gov: allowAll{}, Trust: ts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// meshSandbox starts a sandbox with its stand-in router.
func meshSandbox(t *testing.T, ns, name string) (*karsv1.KarsSandbox, *standInRouter) {
	t.Helper()
	sb := minimalSandbox(ns, name, karsv1.RuntimeOpenClaw)
	withPolicies(t, sb)
	create(t, sb)
	waitRendered(t, sb)
	r := startRouter(t, sb)
	markDeploymentReady(t, sb)
	waitCondition(t, sb, karsv1.ConditionReady, metav1.ConditionTrue, ReasonReady)
	return sb, r
}

func sandboxPairing(ns, name, sandbox, peer string, exp time.Time) *karsv1.KarsPairing {
	return &karsv1.KarsPairing{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{LabelPairing: "test"}},
		Spec: karsv1.KarsPairingSpec{TokenHash: karsv1.Digest(pairing.Hash(name + "-never-issued")), ExpiresAt: metav1.NewTime(exp),
			Capabilities: []karsv1.PairingCapability{karsv1.CapabilityHandoff}, SandboxRef: &karsv1.LocalObjectReference{Name: sandbox}, PeerSandbox: peer},
	}
}

// waitPolicy waits until the router's bridge enforces a policy ok accepts.
func waitPolicy(t *testing.T, r *standInRouter, within time.Duration, what string, ok func(*policy.Policy) error) {
	t.Helper()
	eventually(t, within, what, func() error { return ok(r.mesh.Policy()) })
}

func waitPairing(t *testing.T, ns, name, phase string, ready metav1.ConditionStatus) *karsv1.KarsPairing {
	t.Helper()
	kp := &karsv1.KarsPairing{}
	eventually(t, 20*time.Second, fmt.Sprintf("pairing %s/%s %s", ns, name, phase), func() error {
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, kp); err != nil {
			return err
		}
		c := meta.FindStatusCondition(kp.Status.Conditions, karsv1.ConditionReady)
		if kp.Status.Phase != phase || c == nil || c.Status != ready {
			return fmt.Errorf("phase %q, ready %+v", kp.Status.Phase, c)
		}
		return nil
	})
	return kp
}

func peerNamed(p *policy.Policy, name string) (policy.Peer, error) {
	if pe, ok := p.ByName(name); ok {
		return pe, nil
	}
	return policy.Peer{}, fmt.Errorf("no peer %q in %+v", name, p.Peers)
}

// TestMeshPairingReconciled: `kars pair planner worker` creates a
// KarsPairing per direction; the controller resolves each peer router's
// identity, pushes the policy into both routers and reports the pairings
// Active; a revocation empties the router's policy within 5 s.
func TestMeshPairingReconciled(t *testing.T) {
	requireController(t)
	nsA, nsB := newNamespace(t, "mesh-planner"), newNamespace(t, "mesh-worker")
	planner, pr := meshSandbox(t, nsA, "planner")
	worker, wr := meshSandbox(t, nsB, "worker")
	exp := time.Now().Add(24 * time.Hour)
	create(t, sandboxPairing(nsA, "worker", "planner", nsB+"/worker", exp), sandboxPairing(nsB, "planner", "worker", nsA+"/planner", exp))

	waitPolicy(t, pr, 20*time.Second, "planner's router pairs with worker", func(p *policy.Policy) error {
		pe, err := peerNamed(p, "worker")
		if err == nil && (pe.DID != wr.mesh.DID() || pe.Sandbox != nsB+"/worker" || pe.Pairing != nsA+"/worker") {
			err = fmt.Errorf("peer %+v, want DID %s", pe, wr.mesh.DID())
		}
		return err
	})
	waitPolicy(t, wr, 20*time.Second, "worker's router pairs with planner", func(p *policy.Policy) error {
		pe, err := peerNamed(p, "planner")
		if err == nil && pe.DID != pr.mesh.DID() {
			err = fmt.Errorf("peer %+v", pe)
		}
		return err
	})
	kp := waitPairing(t, nsA, "worker", karsv1.PairingActive, metav1.ConditionTrue)
	if kp.Status.PeerIdentity != wr.mesh.DID() {
		t.Fatalf("planner's pairing is bound to %q, want worker's %s", kp.Status.PeerIdentity, wr.mesh.DID())
	}
	_ = planner
	_ = worker

	// A pairing expiring soon leaves the policy when it expires.
	create(t, sandboxPairing(nsA, "shortlived", "planner", nsB+"/worker2", time.Now().Add(time.Hour)))
	waitPairing(t, nsA, "shortlived", karsv1.PairingPending, metav1.ConditionFalse)

	// Revocation: within 5 s of the edit, the router no longer names the
	// peer.
	updateRetrying(t, client.ObjectKey{Namespace: nsA, Name: "worker"}, &karsv1.KarsPairing{}, func(p *karsv1.KarsPairing) { p.Spec.Revoked = true })
	start := time.Now()
	waitPolicy(t, pr, 5*time.Second, "revocation reaches planner's router", func(p *policy.Policy) error {
		if _, err := peerNamed(p, "worker"); err == nil {
			return errors.New("still paired")
		}
		return nil
	})
	t.Logf("revocation took effect in the router %s after the edit", time.Since(start).Round(time.Millisecond))
	waitPairing(t, nsA, "worker", karsv1.PairingRevoked, metav1.ConditionFalse)
}

// TestMeshTokenPairing: a token pairing is PendingPairing until redeemed;
// the redemption binds an identity, which the controller puts into the
// issuing sandbox's router; an expired pairing leaves it.
func TestMeshTokenPairing(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "mesh-token")
	_, r := meshSandbox(t, ns, "offload")
	ctx := context.Background()
	sys := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kars-system"}}
	_ = k8s.Create(ctx, sys)
	var key ed25519.PrivateKey
	eventually(t, 30*time.Second, "the controller creates the pairing key", func() error {
		var err error
		key, err = pairingapi.LoadKey(ctx, k8s, "kars-system")
		return err
	})
	pub := key.Public().(ed25519.PublicKey)
	exp := time.Now().Add(5 * time.Second).Truncate(time.Second).Add(time.Second)
	tok, err := pairing.Mint(rand.Reader, key, pairing.Payload{Name: "alice-laptop", Sandbox: ns + "/offload", Registry: "http://r", Relay: "ws://r/ws",
		Slots: 3, Exp: exp.Unix(), Capabilities: []string{"offload"}})
	if err != nil {
		t.Fatal(err)
	}
	h := pairing.Hash(tok)
	create(t, &karsv1.KarsPairing{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "alice-laptop", Labels: map[string]string{pairing.LabelTokenHash: pairing.HashLabel(h)}},
		Spec: karsv1.KarsPairingSpec{TokenHash: karsv1.Digest(h), DisplayName: "alice-laptop", Slots: 3, ExpiresAt: metav1.NewTime(exp),
			Capabilities: []karsv1.PairingCapability{karsv1.CapabilityOffload}, SandboxRef: &karsv1.LocalObjectReference{Name: "offload"}},
	})
	kp := waitPairing(t, ns, "alice-laptop", karsv1.PairingPending, metav1.ConditionFalse)
	if c := meta.FindStatusCondition(kp.Status.Conditions, karsv1.ConditionReady); c.Reason != "AwaitingRedemption" {
		t.Fatalf("condition %+v", c)
	}
	alice, _ := identity.New(rand.Reader)
	res, err := pairingapi.Redeem(ctx, k8s, pub, pairing.NewRedemption(tok, alice, time.Now()), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if res.Sandbox != ns+"/offload" || res.Pairing != ns+"/alice-laptop" {
		t.Fatalf("result %+v", res)
	}
	waitPolicy(t, r, 10*time.Second, "the redeemed identity is paired", func(p *policy.Policy) error {
		pe, err := peerNamed(p, "alice-laptop")
		if err == nil && pe.DID != alice.DID() {
			err = fmt.Errorf("peer %+v", pe)
		}
		return err
	})
	waitPairing(t, ns, "alice-laptop", karsv1.PairingActive, metav1.ConditionTrue)
	// At expiry the peer leaves the router and the pairing says so.
	waitPolicy(t, r, 15*time.Second, "the expired pairing leaves the router", func(p *policy.Policy) error {
		if _, err := peerNamed(p, "alice-laptop"); err == nil {
			return errors.New("still paired")
		}
		return nil
	})
	waitPairing(t, ns, "alice-laptop", karsv1.PairingExpired, metav1.ConditionFalse)
}

// TestTrustGraphVerifiedAndProjected: only edges whose signature verifies
// with a key from kars-trust-keys, and that have not expired, reach the
// routers they concern; the status counts both kinds.
func TestTrustGraphVerifiedAndProjected(t *testing.T) {
	requireController(t)
	ctx := context.Background()
	ns := newNamespace(t, "mesh-graph")
	_, r := meshSandbox(t, ns, "judge")
	_ = k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kars-system"}})
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	_, rogue, _ := ed25519.GenerateKey(rand.Reader)
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-system", Name: TrustKeysName},
		Data: map[string]string{"contoso-2026": base64.StdEncoding.EncodeToString(pub)}}
	if err := k8s.Create(ctx, cm); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k8s.Delete(ctx, cm) })
	self := ns + "/judge"
	const domain = "contoso.com"
	edge := func(to string, score int, exp *time.Time, k ed25519.PrivateKey, kid string) karsv1.TrustEdge {
		sig, err := policy.SignEdge(k, domain, self, to, score, exp)
		if err != nil {
			t.Fatal(err)
		}
		e := karsv1.TrustEdge{From: self, To: to, Score: karsv1.TrustScore(score), KeyID: kid, Signature: sig}
		if exp != nil {
			mt := metav1.NewTime(*exp)
			e.ExpiresAt = &mt
		}
		return e
	}
	past := time.Now().Add(-time.Hour).Truncate(time.Second)
	future := time.Now().Add(time.Hour).Truncate(time.Second)
	tampered := edge("kars-x/tampered", 900, nil, key, "contoso-2026")
	tampered.Score = 999 // signed as 900
	tg := &karsv1.TrustGraph{ObjectMeta: metav1.ObjectMeta{Name: "contoso-" + ns}, Spec: karsv1.TrustGraphSpec{TrustDomain: domain, Edges: []karsv1.TrustEdge{
		edge("kars-x/good", 700, &future, key, "contoso-2026"),
		tampered,
		edge("kars-x/expired", 800, &past, key, "contoso-2026"),
		edge("kars-x/rogue", 800, nil, rogue, "contoso-2026"),
		edge("kars-x/unknown-key", 800, nil, key, "nobody"),
	}}}
	if err := k8s.Create(ctx, tg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k8s.Delete(ctx, tg) })
	eventually(t, 20*time.Second, "graph status", func() error {
		cur := &karsv1.TrustGraph{}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(tg), cur); err != nil {
			return err
		}
		if cur.Status.VerifiedEdges != 1 || cur.Status.RejectedEdges != 4 {
			return fmt.Errorf("verified %d, rejected %d", cur.Status.VerifiedEdges, cur.Status.RejectedEdges)
		}
		return nil
	})
	waitPolicy(t, r, 20*time.Second, "the verified edge reaches the router", func(p *policy.Policy) error {
		if p.Graph == nil || len(p.Graph.Edges) != 1 || p.Graph.Edges[0].To != "kars-x/good" || p.Graph.Edges[0].Score != 700 {
			return fmt.Errorf("graph %+v", p.Graph)
		}
		return nil
	})
	// Deleting the graph lifts the constraint.
	if err := k8s.Delete(ctx, tg); err != nil {
		t.Fatal(err)
	}
	waitPolicy(t, r, 20*time.Second, "the graph leaves the router", func(p *policy.Policy) error {
		if p.Graph != nil {
			return fmt.Errorf("graph %+v", p.Graph)
		}
		return nil
	})
}
