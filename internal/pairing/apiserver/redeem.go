// Package apiserver keeps kars's pairing state on the Kubernetes API
// server: the cluster's pairing key (a Secret, and its public half in a
// ConfigMap) and the redemption of tokens, which binds a KarsPairing to
// the redeemer's identity under optimistic concurrency.
package apiserver

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"github.com/kars-io/kars/internal/pairing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// Redeem binds the pairing whose token r presents to r's identity: the
// token's signature (by the cluster's pairing key pub) and expiry, the
// redeemer's proof, then a status update conditioned on the
// resourceVersion it read. The API server's optimistic concurrency makes
// exactly one of any number of concurrent redemptions win; the others
// get a conflict, read the pairing again and find it bound. Presenting
// the token again with the identity it is bound to returns the result
// unchanged (a retry after a lost answer).
func Redeem(ctx context.Context, c client.Client, pub ed25519.PublicKey, r pairing.Redemption, now time.Time) (*pairing.Result, error) {
	p, err := pairing.Verify(r.Token, pub, now)
	if err != nil {
		return nil, err
	}
	if _, err := r.Check(now); err != nil {
		return nil, err
	}
	hash := pairing.Hash(r.Token)
	var list karsv1.KarsPairingList
	if err := c.List(ctx, &list, client.MatchingLabels{pairing.LabelTokenHash: pairing.HashLabel(hash)}); err != nil {
		return nil, fmt.Errorf("pairing: listing pairings: %w", err)
	}
	var kp *karsv1.KarsPairing
	for i := range list.Items {
		if string(list.Items[i].Spec.TokenHash) == hash {
			kp = &list.Items[i]
			break
		}
	}
	if kp == nil {
		return nil, pairing.ErrUnknownToken
	}
	for {
		switch {
		case kp.Spec.Revoked:
			return nil, pairing.ErrRevoked
		case !now.Before(kp.Spec.ExpiresAt.Time):
			return nil, pairing.ErrExpired
		case kp.Status.PeerIdentity == r.DID:
			return result(kp, p), nil
		case kp.Status.PeerIdentity != "":
			return nil, pairing.ErrAlreadyRedeemed
		}
		kp.Status.Phase = karsv1.PairingActive
		t := metav1.NewTime(now.UTC().Truncate(time.Second))
		kp.Status.RedeemedAt, kp.Status.PeerIdentity = &t, r.DID
		err := c.Status().Update(ctx, kp)
		if err == nil {
			return result(kp, p), nil
		}
		if !apierrors.IsConflict(err) {
			return nil, fmt.Errorf("pairing: binding %s/%s: %w", kp.Namespace, kp.Name, err)
		}
		// Someone else wrote first (another redeemer, or the
		// controller's status): read again and decide again.
		fresh := &karsv1.KarsPairing{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(kp), fresh); err != nil {
			return nil, fmt.Errorf("pairing: re-reading %s/%s: %w", kp.Namespace, kp.Name, err)
		}
		kp = fresh
	}
}

func result(kp *karsv1.KarsPairing, p *pairing.Payload) *pairing.Result {
	return &pairing.Result{Pairing: kp.Namespace + "/" + kp.Name, Name: p.Name, Sandbox: p.Sandbox, Issuer: p.Issuer,
		Registry: p.Registry, Relay: p.Relay, ExpiresAt: kp.Spec.ExpiresAt.UTC(), Capabilities: p.Capabilities}
}
