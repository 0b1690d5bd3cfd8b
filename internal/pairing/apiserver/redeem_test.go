package apiserver

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/kars-io/kars/internal/pairing"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controlplane"
	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/scheme"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// startAPIServer starts a real kube-apiserver and etcd and returns a
// client whose status updates refused with 409 Conflict are counted in
// conflicts: proof that redemptions really raced.
func startAPIServer(t *testing.T, conflicts *atomic.Int64) client.Client {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs a control plane (run without -short)")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cp, err := controlplane.Start(ctx, controlplane.Options{})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cp.Stop() })
	cfg := rest.CopyConfig(cp.Config)
	cfg.QPS, cfg.Burst = -1, 0
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(r)
			if err == nil && r.Method == http.MethodPut && resp.StatusCode == http.StatusConflict {
				conflicts.Add(1)
			}
			return resp, err
		})
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testPayload(now time.Time) pairing.Payload {
	return pairing.Payload{Name: "alice-laptop", Registry: "http://127.0.0.1:18080", Relay: "ws://127.0.0.1:18080/ws", Slots: 3,
		Exp: now.Add(90 * 24 * time.Hour).Unix(), Capabilities: []string{"offload"}}
}

// issue creates a KarsPairing for a fresh token, as `kars pair generate`
// does, and returns the token.
func issue(t *testing.T, c client.Client, key ed25519.PrivateKey, ns, name string) string {
	t.Helper()
	now := time.Now()
	p := testPayload(now)
	p.Name = name
	tok, err := pairing.Mint(rand.Reader, key, p)
	if err != nil {
		t.Fatal(err)
	}
	h := pairing.Hash(tok)
	kp := &karsv1.KarsPairing{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{pairing.LabelTokenHash: pairing.HashLabel(h)}},
		Spec: karsv1.KarsPairingSpec{TokenHash: karsv1.Digest(h), DisplayName: name, Slots: 3,
			ExpiresAt: metav1.NewTime(time.Unix(p.Exp, 0)), Capabilities: []karsv1.PairingCapability{karsv1.CapabilityOffload}},
	}
	if err := c.Create(context.Background(), kp); err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestConcurrentRedemptionExactlyOneWins races redemptions of one token
// from distinct identities: 500 tokens × 20 redeemers started together,
// 10,000 redemptions in all. For every token exactly one redemption wins,
// its identity is the one bound in the status, and every other gets
// ErrAlreadyRedeemed. The API server's conflicts are counted to show the
// contenders really overlapped.
func TestConcurrentRedemptionExactlyOneWins(t *testing.T) {
	var conflicts atomic.Int64
	c := startAPIServer(t, &conflicts)
	ctx := context.Background()
	ns := "kars-pairing-race"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kars-system"}}); err != nil {
		t.Fatal(err)
	}
	key, err := EnsureKey(ctx, c, "kars-system")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := LoadPublicKey(ctx, c, "kars-system")
	if err != nil || !pub.Equal(key.Public()) {
		t.Fatalf("public key %v", err)
	}
	again, _ := EnsureKey(ctx, c, "kars-system")
	if !again.Equal(key) {
		t.Fatal("EnsureKey made a second key")
	}
	const tokens, racers = 500, 20
	ids := make([]*identity.Identity, racers)
	for i := range ids {
		ids[i], _ = identity.New(rand.Reader)
	}
	for round := range tokens {
		name := fmt.Sprintf("p-%d", round)
		tok := issue(t, c, key, ns, name)
		now := time.Now()
		start := make(chan struct{})
		var wg sync.WaitGroup
		results := make([]error, racers)
		for i := range racers {
			wg.Go(func() {
				<-start
				_, results[i] = Redeem(ctx, c, pub, pairing.NewRedemption(tok, ids[i], now), now)
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range results {
			switch {
			case err == nil:
				if winner >= 0 {
					t.Fatalf("%s: redeemers %d and %d both won", name, winner, i)
				}
				winner = i
			case errors.Is(err, pairing.ErrAlreadyRedeemed):
			default:
				t.Fatalf("%s: redeemer %d: %v", name, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("%s: nobody won", name)
		}
		kp := &karsv1.KarsPairing{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, kp); err != nil {
			t.Fatal(err)
		}
		if kp.Status.PeerIdentity != ids[winner].DID() || kp.Status.Phase != karsv1.PairingActive || kp.Status.RedeemedAt == nil {
			t.Fatalf("%s: status %+v, winner %s", name, kp.Status, ids[winner].DID())
		}
		// The winner may present it again (a lost answer); a loser may not.
		if _, err := Redeem(ctx, c, pub, pairing.NewRedemption(tok, ids[winner], now), now); err != nil {
			t.Fatalf("%s: the winner's retry: %v", name, err)
		}
		if _, err := Redeem(ctx, c, pub, pairing.NewRedemption(tok, ids[(winner+1)%racers], now), now); !errors.Is(err, pairing.ErrAlreadyRedeemed) {
			t.Fatalf("%s: a loser's retry: %v", name, err)
		}
	}
	if conflicts.Load() == 0 {
		t.Fatal("no redemption ever lost a race at the API server: the test did not make them contend")
	}
	t.Logf("%d redemptions of %d tokens; %d status updates lost a race to the API server's optimistic concurrency", tokens*racers, tokens, conflicts.Load())
}
