package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/egress/allowlist"
	"github.com/kars-io/kars/internal/egress/artifact"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/routerconfig"
)

// ConditionAllowlistVerified is the KarsSandbox condition about its signed
// allowlist artifact (spec.networkPolicy.allowlistRef).
const ConditionAllowlistVerified = "AllowlistVerified"

// Reasons of AllowlistVerified besides artifact.Reason (Unsigned,
// SignatureInvalid, FetchFailed).
const (
	ReasonVerified = "Verified"
	// ReasonStaleLKG: the registry could not be reached, and the router
	// keeps enforcing the last list verified for this digest.
	ReasonStaleLKG = "StaleLKG"
)

// SignerPolicy is the controller's trust in allowlist signers: the public
// keys (cosign's PKIX PEM form) whose signatures it accepts, and how to
// reach registries. It is controller configuration (kars-controller
// --egress-signer-keys, --egress-insecure-registries), not a CRD: who may
// sign is an installation decision, not a tenant's.
type SignerPolicy struct {
	Keys []*ecdsa.PublicKey
	// PlainHTTP lists registry hosts reached over HTTP (a local registry).
	PlainHTTP []string
	// Options carries the HTTP client and credentials; PlainHTTP is set
	// per registry from the list above.
	Options artifact.Options
}

// keysID identifies the key set, so a verification made under other keys
// is not reused.
func (p *SignerPolicy) keysID() string {
	h := sha256.New()
	for _, k := range p.Keys {
		h.Write([]byte(artifact.KeyID(k)))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// allowlistCond is the AllowlistVerified condition one reconcile observed.
type allowlistCond struct {
	ok      bool
	reason  string
	message string
}

// egressInputs establishes a sandbox's verified allowlist and active
// approvals (render.EgressInput), caching verifications by digest and key
// set: content at a digest never changes, so a list verified once stays
// verified through a registry outage.
type egressInputs struct {
	signers *SignerPolicy
	mu      sync.Mutex
	cache   map[string]*routerconfig.EgressAllowlist // keysID + ref
}

func newEgressInputs(p *SignerPolicy) *egressInputs {
	if p == nil {
		p = &SignerPolicy{}
	}
	return &egressInputs{signers: p, cache: map[string]*routerconfig.EgressAllowlist{}}
}

// input returns what to render for sb's egress, the AllowlistVerified
// condition (nil without an allowlistRef), and when to look again (the
// next approval expiry).
func (e *egressInputs) input(ctx context.Context, c client.Reader, sb *karsv1.KarsSandbox, names render.Names, now time.Time) (render.EgressInput, *allowlistCond, time.Duration, error) {
	var in render.EgressInput
	approvals, next, err := activeApprovals(ctx, c, sb, now)
	if err != nil {
		return in, nil, 0, err
	}
	in.Approvals = approvals
	ref := sb.Spec.NetworkPolicy.AllowlistRef
	if ref == nil {
		return in, nil, next, nil
	}
	al, cond := e.allowlist(ctx, c, sb, names, ref)
	in.Allowlist = al
	return in, cond, next, nil
}

func (e *egressInputs) allowlist(ctx context.Context, c client.Reader, sb *karsv1.KarsSandbox, names render.Names, ref *karsv1.OCIArtifactReference) (*routerconfig.EgressAllowlist, *allowlistCond) {
	r := artifact.Ref{Registry: ref.Registry, Repository: ref.Repository, Digest: string(ref.Digest), ArtifactType: ref.ArtifactType}
	if r.ArtifactType == "" {
		r.ArtifactType = allowlist.DocumentMediaType
	}
	key := e.signers.keysID() + " " + r.String()
	e.mu.Lock()
	cached := e.cache[key]
	e.mu.Unlock()
	if cached != nil {
		return cached, &allowlistCond{ok: true, reason: ReasonVerified, message: fmt.Sprintf("%s verified (%d hosts)", r, len(cached.Hosts))}
	}
	o := e.signers.Options
	o.PlainHTTP = slices.Contains(e.signers.PlainHTTP, ref.Registry)
	v, err := artifact.FetchVerified(ctx, o, r, e.signers.Keys)
	if err == nil {
		al := &routerconfig.EgressAllowlist{Ref: r.String(), Digest: r.Digest}
		for _, en := range v.Entries {
			if len(en.Ports) == 0 {
				al.Hosts = append(al.Hosts, en.String())
				continue
			}
			for _, p := range en.Ports {
				al.Hosts = append(al.Hosts, allowlist.Entry{Host: en.Host, Ports: []uint16{p}}.String())
			}
		}
		e.mu.Lock()
		e.cache[key] = al
		e.mu.Unlock()
		return al, &allowlistCond{ok: true, reason: ReasonVerified, message: fmt.Sprintf("%s verified with key %s… (%d hosts)", r, v.KeyID[:12], len(al.Hosts))}
	}
	reason := artifact.ReasonOf(err)
	if reason == artifact.ReasonFetchFailed {
		// The registry is unreachable: the list the router enforces now
		// (from before a controller restart) stays, if it is this digest.
		if lkg := enforcedAllowlist(ctx, c, sb, names); lkg != nil && lkg.Digest == r.Digest {
			return lkg, &allowlistCond{reason: ReasonStaleLKG, message: "the registry could not be reached (" + err.Error() + "); the router keeps the list last verified for this digest"}
		}
	}
	// Fail closed: no allowlist reaches the router.
	return nil, &allowlistCond{reason: string(reason), message: err.Error()}
}

// enforcedAllowlist reads the allowlist in the sandbox's router ConfigMap
// as last rendered.
func enforcedAllowlist(ctx context.Context, c client.Reader, sb *karsv1.KarsSandbox, names render.Names) *routerconfig.EgressAllowlist {
	var cm corev1.ConfigMap
	if err := c.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: names.RouterConfig}, &cm); err != nil || !ownedBy(&cm, sb) {
		return nil
	}
	st, err := routerconfig.ParseEgressState([]byte(cm.Data[routerconfig.EgressStateFile]))
	if err != nil {
		return nil
	}
	return st.Allowlist
}

// approvalTTL is an approval's TTL, applying the API's default.
func approvalTTL(a *karsv1.EgressApproval) time.Duration {
	if a.Spec.TTL != nil {
		return a.Spec.TTL.Duration
	}
	return 24 * time.Hour
}

// ApprovalExpiresAt is creation time plus TTL.
func ApprovalExpiresAt(a *karsv1.EgressApproval) time.Time {
	return a.CreationTimestamp.Add(approvalTTL(a))
}

// MaxTTL is the API's ceiling on an approval's TTL (the CRD enforces it;
// the controller applies it too, for objects written before the rule).
const MaxTTL = 720 * time.Hour

// activeApprovals lists sb's unexpired approvals, oldest first, at most
// routerconfig.MaxEgressApprovals (the cap: later ones are Invalid), and
// the time until the next one expires.
func activeApprovals(ctx context.Context, c client.Reader, sb *karsv1.KarsSandbox, now time.Time) ([]routerconfig.EgressApproval, time.Duration, error) {
	var list karsv1.EgressApprovalList
	if err := c.List(ctx, &list, client.InNamespace(sb.Namespace)); err != nil {
		return nil, 0, err
	}
	items := slices.Clone(list.Items)
	sort.Slice(items, func(i, j int) bool {
		if !items[i].CreationTimestamp.Equal(&items[j].CreationTimestamp) {
			return items[i].CreationTimestamp.Before(&items[j].CreationTimestamp)
		}
		return items[i].Name < items[j].Name
	})
	var out []routerconfig.EgressApproval
	var next time.Duration
	for i := range items {
		a := &items[i]
		if a.Spec.Sandbox != sb.Name || !a.DeletionTimestamp.IsZero() || approvalTTL(a) > MaxTTL {
			continue
		}
		exp := ApprovalExpiresAt(a)
		if !now.Before(exp) {
			continue
		}
		if len(out) == routerconfig.MaxEgressApprovals {
			break
		}
		ra := routerconfig.EgressApproval{Name: a.Name, UID: string(a.UID), ExpiresAt: exp.UTC()}
		for _, h := range a.Spec.Hosts {
			ra.Hosts = append(ra.Hosts, string(h))
		}
		ra.Ports = slices.Clone(a.Spec.Ports)
		out = append(out, ra)
		if d := exp.Sub(now) + time.Second; next == 0 || d < next {
			next = d
		}
	}
	return out, next, nil
}
