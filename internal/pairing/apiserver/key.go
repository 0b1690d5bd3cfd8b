package apiserver

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kars-io/kars/internal/render"
)

// KeyName names the cluster's pairing key objects in the system
// namespace: a Secret holding the Ed25519 seed (read by the controller
// and by operators who mint tokens, `kars pair generate`), and a
// ConfigMap holding only the public key (read by kars-mesh, which
// verifies tokens on redemption and must never be able to mint them).
const KeyName = render.PairingKeyName

// Keys of the objects' data.
const (
	SeedKey      = "seed"
	PublicKeyKey = "publicKey"
)

// EnsureKey returns the cluster's pairing key, creating the Secret and
// the ConfigMap the first time. Two callers racing create one key: the
// loser's Create fails with AlreadyExists and it reads the winner's.
func EnsureKey(ctx context.Context, c client.Client, ns string) (ed25519.PrivateKey, error) {
	if k, err := LoadKey(ctx, c, ns); err == nil {
		return k, ensurePublic(ctx, c, ns, k.Public().(ed25519.PublicKey))
	} else if !apierrors.IsNotFound(err) {
		return nil, err
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: KeyName, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/part-of": "kars"}},
		Type: corev1.SecretTypeOpaque, Data: map[string][]byte{SeedKey: key.Seed()}}
	if err := c.Create(ctx, sec); err != nil {
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("pairing key Secret %s/%s: %w", ns, KeyName, err)
		}
		if key, err = LoadKey(ctx, c, ns); err != nil {
			return nil, err
		}
	}
	return key, ensurePublic(ctx, c, ns, key.Public().(ed25519.PublicKey))
}

func ensurePublic(ctx context.Context, c client.Client, ns string, pub ed25519.PublicKey) error {
	want := base64.StdEncoding.EncodeToString(pub)
	cm := &corev1.ConfigMap{}
	err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: KeyName}, cm)
	switch {
	case apierrors.IsNotFound(err):
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: KeyName, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/part-of": "kars"}},
			Data: map[string]string{PublicKeyKey: want}}
		if err := c.Create(ctx, cm); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("pairing key ConfigMap %s/%s: %w", ns, KeyName, err)
		}
		return nil
	case err != nil:
		return err
	case cm.Data[PublicKeyKey] == want:
		return nil
	}
	patch := client.MergeFrom(cm.DeepCopy())
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[PublicKeyKey] = want
	return c.Patch(ctx, cm, patch)
}

// LoadKey reads the pairing key from its Secret.
func LoadKey(ctx context.Context, c client.Reader, ns string) (ed25519.PrivateKey, error) {
	sec := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: KeyName}, sec); err != nil {
		return nil, err
	}
	seed := sec.Data[SeedKey]
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("pairing key Secret %s/%s holds no %d-byte %q", ns, KeyName, ed25519.SeedSize, SeedKey)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// LoadPublicKey reads the pairing key's public half from its ConfigMap.
func LoadPublicKey(ctx context.Context, c client.Reader, ns string) (ed25519.PublicKey, error) {
	cm := &corev1.ConfigMap{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: KeyName}, cm); err != nil {
		return nil, err
	}
	b, err := base64.StdEncoding.DecodeString(cm.Data[PublicKeyKey])
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("pairing key ConfigMap %s/%s holds no public key", ns, KeyName)
	}
	return b, nil
}
