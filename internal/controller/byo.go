package controller

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/ociimage"
)

// Condition reasons of the BYO contract check.
const (
	ReasonBYOContractInvalid  = "BYOContractInvalid"
	ReasonBYOImageUnreachable = "BYOImageUnreachable"
)

// ImageInspector reads an image's digest and labels from its registry;
// *ociimage.Checker implements it.
type ImageInspector interface {
	Inspect(ctx context.Context, ref string, keychain authn.Keychain) (ociimage.Image, error)
}

// verifyBYO checks that a BYO sandbox's image declares the contract it asks
// for and returns the digest-pinned reference to run. A non-nil block means
// no workload.
func (r *SandboxReconciler) verifyBYO(ctx context.Context, sb *karsv1.KarsSandbox) (string, *block) {
	b := sb.Spec.Runtime.BYO
	kc := &pullSecretKeychain{ctx: ctx, c: r.apiReader, ns: sb.Namespace, refs: sb.Spec.Runtime.ImagePullSecrets}
	img, err := r.images.Inspect(ctx, b.Image, kc)
	var ue *ociimage.UnreachableError
	switch {
	case errors.As(err, &ue):
		r.metrics.byo.WithLabelValues("unreachable").Inc()
		return "", &block{reason: ReasonBYOImageUnreachable, message: ue.Error(), transient: true, runtime: true, keepWorkload: true,
			retryAfter: r.registryBackoff.next(client.ObjectKeyFromObject(sb))}
	case err != nil:
		r.metrics.byo.WithLabelValues("invalid").Inc()
		return "", &block{reason: ReasonBYOContractInvalid, message: err.Error(), runtime: true}
	}
	r.registryBackoff.reset(client.ObjectKeyFromObject(sb))
	if err := ociimage.CheckContract(b.Image, img, b.ContractVersion); err != nil {
		r.metrics.byo.WithLabelValues("invalid").Inc()
		// A tag may be re-pushed with the label; look again when the
		// checker's tag cache would.
		return "", &block{reason: ReasonBYOContractInvalid, message: err.Error(), runtime: true, retryAfter: 5 * time.Minute}
	}
	r.metrics.byo.WithLabelValues("valid").Inc()
	return img.Pinned, nil
}

// pullSecretKeychain reads the sandbox's image pull secrets only when the
// registry actually asks for credentials (a cached digest needs none). It
// reads them uncached: the controller does not watch every Secret.
type pullSecretKeychain struct {
	ctx    context.Context
	c      client.Reader
	ns     string
	refs   []karsv1.LocalObjectReference
	once   sync.Once
	loaded authn.Keychain
}

func (k *pullSecretKeychain) Resolve(res authn.Resource) (authn.Authenticator, error) {
	k.once.Do(func() {
		kc := &ociimage.Keychain{}
		for _, ref := range k.refs {
			var s corev1.Secret
			// Like the kubelet, an unreadable or malformed pull secret is
			// skipped: the registry's 401 then says what is wrong, in the
			// BYOImageUnreachable message.
			if err := k.c.Get(k.ctx, client.ObjectKey{Namespace: k.ns, Name: ref.Name}, &s); err != nil {
				continue
			}
			switch s.Type {
			case corev1.SecretTypeDockerConfigJson:
				_ = kc.ParseDockerConfigJSON(s.Data[corev1.DockerConfigJsonKey])
			case corev1.SecretTypeDockercfg:
				_ = kc.ParseDockerCfg(s.Data[corev1.DockerConfigKey])
			}
		}
		k.loaded = kc
	})
	return k.loaded.Resolve(res)
}

// backoff hands out growing delays per sandbox so that a failing registry
// or router is retried, but never in a hot loop.
type backoff struct {
	base, max time.Duration
	mu        sync.Mutex
	delays    map[types.NamespacedName]time.Duration
}

func newBackoff(base, max time.Duration) *backoff {
	return &backoff{base: base, max: max, delays: map[types.NamespacedName]time.Duration{}}
}

// next returns the delay before the next attempt and doubles it.
func (b *backoff) next(id types.NamespacedName) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	d := b.delays[id]
	if d == 0 {
		d = b.base
	}
	b.delays[id] = min(2*d, b.max)
	return d
}

func (b *backoff) reset(id types.NamespacedName) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.delays, id)
}
