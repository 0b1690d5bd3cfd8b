// Package ociimage reads the configuration of container images from their
// registry, so that the controller can check a BYO image's runtime contract
// label (org.kars.runtime.contract=v1) before it runs anything.
//
// Results are cached by digest: an image's configuration can never change
// under the same digest, so a verified digest is never fetched again. Tags
// can move, so a tag's digest is re-resolved (one HEAD request) after
// TagTTL; the controller then runs the image pinned to the digest it
// verified, never the tag.
//
// This package talks only to registries; it must not import Kubernetes
// client packages.
package ociimage

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// ContractLabel is the image label that declares the kars runtime contract
// version an image implements.
const ContractLabel = "org.kars.runtime.contract"

// Image is what the registry says about one image.
type Image struct {
	// Pinned is the reference by digest: registry/repository@sha256:….
	Pinned string
	// Digest of the manifest the reference resolved to.
	Digest string
	// Labels of the image configuration (for a multi-platform index, of
	// the linux/amd64 image).
	Labels map[string]string
}

// UnreachableError reports that the registry could not be asked or would
// not answer: the image may be fine, so the caller should retry later.
type UnreachableError struct {
	Ref string
	// Status is the registry's HTTP status, 0 for transport failures.
	Status int
	Err    error
}

func (e *UnreachableError) Error() string {
	switch e.Status {
	case 0:
		return fmt.Sprintf("cannot reach the registry of %s: %v", e.Ref, e.Err)
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Sprintf("registry refused access to %s (HTTP %d): check runtime.imagePullSecrets: %v", e.Ref, e.Status, e.Err)
	case http.StatusNotFound:
		return fmt.Sprintf("image %s not found in its registry: %v", e.Ref, e.Err)
	}
	return fmt.Sprintf("registry error for %s (HTTP %d): %v", e.Ref, e.Status, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// ContractError reports an image that does not declare the wanted runtime
// contract.
type ContractError struct {
	Ref  string
	Want string
	// Got is the label's value, "" when the label is absent.
	Got string
}

func (e *ContractError) Error() string {
	if e.Got == "" {
		return fmt.Sprintf("image %s has no label %s; BYO images must declare %s=%s", e.Ref, ContractLabel, ContractLabel, e.Want)
	}
	return fmt.Sprintf("image %s declares %s=%s, the sandbox asks for contract %s", e.Ref, ContractLabel, e.Got, e.Want)
}

// Checker inspects images and caches what it learned. The zero value is
// ready to use; it is safe for concurrent use.
type Checker struct {
	// Transport carries registry requests; nil means the library's default
	// (proxy from the environment, TLS verified).
	Transport http.RoundTripper
	// TagTTL is how long a tag's resolved digest is reused; zero means five
	// minutes.
	TagTTL time.Duration
	// Timeout bounds one inspection; zero means 20 seconds.
	Timeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu       sync.Mutex
	byDigest map[string]Image    // pinned reference → image
	byTag    map[string]tagEntry // tag reference → pinned reference
}

type tagEntry struct {
	pinned  string
	expires time.Time
}

// maxCached bounds each cache; past it the cache is dropped and refilled,
// which costs only registry requests.
const maxCached = 4096

// Inspect resolves ref and returns its digest and labels, reading the
// registry only for what the cache does not know. keychain supplies
// credentials (nil means anonymous).
func (c *Checker) Inspect(ctx context.Context, ref string, keychain authn.Keychain) (Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return Image{}, fmt.Errorf("image reference %q: %w", ref, err)
	}
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 20 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if keychain == nil {
		keychain = authn.NewMultiKeychain()
	}
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(keychain),
		// No retries inside a reconcile: the controller backs off between
		// attempts instead of holding a worker.
		remote.WithRetryBackoff(remote.Backoff{Steps: 1}),
	}
	if c.Transport != nil {
		opts = append(opts, remote.WithTransport(c.Transport))
	}

	pinned, ok := c.cachedTag(r)
	if !ok {
		d, ok := r.(name.Digest)
		if !ok {
			desc, err := remote.Head(r, opts...)
			if err != nil {
				return Image{}, classify(ref, err)
			}
			d = r.Context().Digest(desc.Digest.String())
			c.storeTag(r, d.String())
		}
		pinned = d.String()
	}
	if img, ok := c.cachedDigest(pinned); ok {
		return img, nil
	}
	d, err := name.NewDigest(pinned)
	if err != nil {
		return Image{}, err
	}
	img, err := remote.Image(d, opts...)
	if err != nil {
		return Image{}, classify(ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return Image{}, classify(ref, err)
	}
	out := Image{Pinned: pinned, Digest: d.DigestStr(), Labels: cf.Config.Labels}
	c.storeDigest(out)
	return out, nil
}

// CheckContract returns a *ContractError unless img declares version want.
func CheckContract(ref string, img Image, want string) error {
	if got := img.Labels[ContractLabel]; got != want {
		return &ContractError{Ref: ref, Want: want, Got: got}
	}
	return nil
}

func classify(ref string, err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	var te *transport.Error
	if errors.As(err, &te) {
		return &UnreachableError{Ref: ref, Status: te.StatusCode, Err: err}
	}
	return &UnreachableError{Ref: ref, Err: err}
}

func (c *Checker) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Checker) cachedTag(r name.Reference) (string, bool) {
	if _, ok := r.(name.Tag); !ok {
		return "", false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byTag[r.String()]
	if !ok || !c.now().Before(e.expires) {
		return "", false
	}
	return e.pinned, true
}

func (c *Checker) storeTag(r name.Reference, pinned string) {
	ttl := c.TagTTL
	if ttl == 0 {
		ttl = 5 * time.Minute
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byTag == nil || len(c.byTag) >= maxCached {
		c.byTag = map[string]tagEntry{}
	}
	c.byTag[r.String()] = tagEntry{pinned: pinned, expires: c.now().Add(ttl)}
}

func (c *Checker) cachedDigest(pinned string) (Image, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	img, ok := c.byDigest[pinned]
	return img, ok
}

func (c *Checker) storeDigest(img Image) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byDigest == nil || len(c.byDigest) >= maxCached {
		c.byDigest = map[string]Image{}
	}
	c.byDigest[img.Pinned] = img
}
