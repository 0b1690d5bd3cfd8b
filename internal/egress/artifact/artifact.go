// Package artifact publishes and fetches kars's egress lists as OCI
// artifacts (oras-go), and signs and verifies allowlists.
//
// Signatures use cosign's key-based "simple signing" format, so that
// `cosign verify --key kars-egress.pub --insecure-ignore-tlog=true
// REGISTRY/REPO@DIGEST` verifies a kars allowlist too:
//
//   - the signature lives in the same repository as the manifest tagged
//     "sha256-<hex>.sig" (cosign's signature tag for digest sha256:<hex>);
//   - that manifest is an OCI image manifest whose layers have media type
//     application/vnd.dev.cosign.simplesigning.v1+json; each layer's blob
//     is the payload {"critical":{"identity":{"docker-reference":REPO},
//     "image":{"docker-manifest-digest":DIGEST},"type":"cosign container
//     image signature"},"optional":null} and its annotation
//     dev.cosignproject.cosign/signature is the base64 ASN.1 ECDSA
//     signature of SHA-256(payload);
//   - keys are ECDSA (P-256 is what `cosign generate-key-pair` makes) in
//     PKIX PEM ("PUBLIC KEY") form.
//
// Verification (FetchVerified) fails closed, and says which way: the
// artifact is Unsigned (no signature manifest, or no simple-signing layer
// in it), the SignatureInvalid (no trusted key verifies it, the payload
// names another digest, or the content does not match its digest — a
// tampered artifact), or the fetch failed (FetchFailed). Every blob is
// fetched by digest and checked against it.
package artifact

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/retry"

	"github.com/kars-io/kars/internal/egress/allowlist"
)

// Media types and annotations of cosign's simple signing.
const (
	SimpleSigningMediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	SignatureAnnotation    = "dev.cosignproject.cosign/signature"
	simpleSigningType      = "cosign container image signature"
)

// BlocklistMediaType is the artifact type kars uses for blocklists.
const BlocklistMediaType = "application/vnd.kars.egress-blocklist.v1+text"

// Size bounds on what is fetched.
const (
	maxManifest = 4 << 20
	maxPayload  = 64 << 10
)

// Options say how to reach a registry.
type Options struct {
	// PlainHTTP talks HTTP instead of HTTPS (a local registry).
	PlainHTTP bool
	// Credential returns credentials for a registry host; nil means
	// anonymous.
	Credential auth.CredentialFunc
	// HTTPClient carries the requests; nil means one with a 60 s timeout.
	HTTPClient *http.Client
}

func (o Options) repo(registry, repository string) (*remote.Repository, error) {
	r, err := remote.NewRepository(registry + "/" + repository)
	if err != nil {
		return nil, fmt.Errorf("repository %s/%s: %w", registry, repository, err)
	}
	r.PlainHTTP = o.PlainHTTP
	hc := o.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 60 * time.Second, Transport: retry.NewTransport(&http.Transport{Proxy: nil})}
	}
	r.Client = &auth.Client{Client: hc, Credential: o.Credential, Cache: auth.NewCache()}
	return r, nil
}

// Ref locates an artifact by digest.
type Ref struct {
	Registry, Repository string
	Digest               string
	// ArtifactType expected on the manifest; empty accepts any.
	ArtifactType string
}

// String is registry/repository@digest.
func (r Ref) String() string { return r.Registry + "/" + r.Repository + "@" + r.Digest }

// Reason classifies a verification failure (the AllowlistVerified
// condition's reason).
type Reason string

// The reasons FetchVerified fails with.
const (
	ReasonUnsigned         Reason = "Unsigned"
	ReasonSignatureInvalid Reason = "SignatureInvalid"
	ReasonFetchFailed      Reason = "FetchFailed"
)

// VerifyError is a failed FetchVerified.
type VerifyError struct {
	Reason Reason
	Ref    string
	Err    error
}

func (e *VerifyError) Error() string { return fmt.Sprintf("%s: %s: %v", e.Ref, e.Reason, e.Err) }
func (e *VerifyError) Unwrap() error { return e.Err }

// ReasonOf returns err's Reason, or FetchFailed for any other error.
func ReasonOf(err error) Reason {
	var ve *VerifyError
	if errors.As(err, &ve) {
		return ve.Reason
	}
	return ReasonFetchFailed
}

// payload is cosign's simple-signing payload.
type payload struct {
	Critical struct {
		Identity struct {
			DockerReference string `json:"docker-reference"`
		} `json:"identity"`
		Image struct {
			DockerManifestDigest string `json:"docker-manifest-digest"`
		} `json:"image"`
		Type string `json:"type"`
	} `json:"critical"`
	Optional map[string]any `json:"optional"`
}

// SignatureTag is cosign's tag for the signature of digest.
func SignatureTag(d string) string { return strings.Replace(d, ":", "-", 1) + ".sig" }

// PushAllowlist publishes an allowlist document in registry/repository
// (OCI 1.1 manifest, artifactType allowlist.DocumentMediaType, one layer),
// tags it when tag is set, signs it with key, and returns its digest.
func PushAllowlist(ctx context.Context, o Options, registry, repository, tag string, doc []byte, key *ecdsa.PrivateKey) (string, error) {
	repo, err := o.repo(registry, repository)
	if err != nil {
		return "", err
	}
	layer := content.NewDescriptorFromBytes(allowlist.DocumentMediaType, doc)
	layer.Annotations = map[string]string{ocispec.AnnotationTitle: "allowlist.yaml"}
	if err := pushBlob(ctx, repo, layer, doc); err != nil {
		return "", err
	}
	desc, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, allowlist.DocumentMediaType, oras.PackManifestOptions{
		Layers: []ocispec.Descriptor{layer},
		// A fixed creation time: the same list has the same digest.
		ManifestAnnotations: map[string]string{ocispec.AnnotationCreated: "1970-01-01T00:00:00Z"},
	})
	if err != nil {
		return "", fmt.Errorf("push allowlist manifest to %s/%s: %w", registry, repository, err)
	}
	if tag != "" {
		if err := repo.Tag(ctx, desc, tag); err != nil {
			return "", fmt.Errorf("tag %s: %w", tag, err)
		}
	}
	if key != nil {
		if err := Sign(ctx, o, registry, repository, desc.Digest.String(), key); err != nil {
			return "", err
		}
	}
	return desc.Digest.String(), nil
}

// Sign writes a cosign simple-signing signature of the manifest with
// digest d in registry/repository.
func Sign(ctx context.Context, o Options, registry, repository, d string, key *ecdsa.PrivateKey) error {
	repo, err := o.repo(registry, repository)
	if err != nil {
		return err
	}
	var p payload
	p.Critical.Identity.DockerReference = registry + "/" + repository
	p.Critical.Image.DockerManifestDigest = d
	p.Critical.Type = simpleSigningType
	body, err := json.Marshal(p)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	sig, err := ecdsa.SignASN1(rand.Reader, key, sum[:])
	if err != nil {
		return err
	}
	layer := content.NewDescriptorFromBytes(SimpleSigningMediaType, body)
	layer.Annotations = map[string]string{SignatureAnnotation: base64.StdEncoding.EncodeToString(sig)}
	if err := pushBlob(ctx, repo, layer, body); err != nil {
		return err
	}
	// An image config whose rootfs lists the (uncompressed) layer, as
	// cosign's own signature images have, so image tooling reads it.
	cfg, _ := json.Marshal(map[string]any{
		"architecture": "", "os": "", "config": map[string]any{},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layer.Digest.String()}},
	})
	cfgDesc := content.NewDescriptorFromBytes(ocispec.MediaTypeImageConfig, cfg)
	if err := pushBlob(ctx, repo, cfgDesc, cfg); err != nil {
		return err
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cfgDesc, Layers: []ocispec.Descriptor{layer}}
	m.SchemaVersion = 2
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	md := content.NewDescriptorFromBytes(ocispec.MediaTypeImageManifest, raw)
	if err := repo.PushReference(ctx, md, bytes.NewReader(raw), SignatureTag(d)); err != nil {
		return fmt.Errorf("push signature %s: %w", SignatureTag(d), err)
	}
	return nil
}

func pushBlob(ctx context.Context, repo *remote.Repository, d ocispec.Descriptor, b []byte) error {
	if ok, err := repo.Exists(ctx, d); err == nil && ok {
		return nil
	}
	if err := repo.Push(ctx, d, bytes.NewReader(b)); err != nil && !errors.Is(err, errdef.ErrAlreadyExists) {
		return fmt.Errorf("push blob %s: %w", d.Digest, err)
	}
	return nil
}

// Verified is an allowlist that passed FetchVerified.
type Verified struct {
	Ref     Ref
	Doc     *allowlist.Document
	Entries []allowlist.Entry
	// KeyID is the SHA-256 of the verifying key's DER (PKIX), hex.
	KeyID string
}

// FetchVerified fetches the allowlist at ref and verifies its cosign
// signature against keys. Nothing is returned unless one key verifies a
// signature over exactly this digest and the content matches the digest.
func FetchVerified(ctx context.Context, o Options, ref Ref, keys []*ecdsa.PublicKey) (*Verified, error) {
	fail := func(r Reason, format string, args ...any) error {
		return &VerifyError{Reason: r, Ref: ref.String(), Err: fmt.Errorf(format, args...)}
	}
	dg, err := digest.Parse(ref.Digest)
	if err != nil || dg.Algorithm() != digest.SHA256 {
		return nil, fail(ReasonSignatureInvalid, "digest %q is not a sha256 digest", ref.Digest)
	}
	if len(keys) == 0 {
		return nil, fail(ReasonSignatureInvalid, "no trusted signer keys are configured (SignerPolicy), so no signature can be trusted")
	}
	repo, err := o.repo(ref.Registry, ref.Repository)
	if err != nil {
		return nil, fail(ReasonFetchFailed, "%v", err)
	}
	// The signature first: an unsigned artifact is refused without
	// reading it.
	sigDesc, sigRC, err := repo.FetchReference(ctx, SignatureTag(ref.Digest))
	if err != nil {
		if errors.Is(err, errdef.ErrNotFound) {
			return nil, fail(ReasonUnsigned, "no signature (tag %s) in %s/%s", SignatureTag(ref.Digest), ref.Registry, ref.Repository)
		}
		return nil, fail(ReasonFetchFailed, "signature: %v", err)
	}
	sigRaw, err := readAll(sigRC, sigDesc, maxManifest)
	if err != nil {
		return nil, classify(fail, "signature manifest", err)
	}
	var sm ocispec.Manifest
	if err := json.Unmarshal(sigRaw, &sm); err != nil {
		return nil, fail(ReasonUnsigned, "signature manifest: %v", err)
	}
	keyID := ""
	signed := false
	sawLayer := false
	for _, l := range sm.Layers {
		if l.MediaType != SimpleSigningMediaType {
			continue
		}
		sawLayer = true
		b64 := l.Annotations[SignatureAnnotation]
		sig, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(sig) == 0 {
			continue
		}
		if l.Size > maxPayload {
			continue
		}
		body, err := fetchBlob(ctx, repo, l, maxPayload)
		if err != nil {
			return nil, classify(fail, "signature payload", err)
		}
		sum := sha256.Sum256(body)
		var k *ecdsa.PublicKey
		for _, cand := range keys {
			if ecdsa.VerifyASN1(cand, sum[:], sig) {
				k = cand
				break
			}
		}
		if k == nil {
			continue
		}
		var p payload
		if err := json.Unmarshal(body, &p); err != nil || p.Critical.Type != simpleSigningType {
			return nil, fail(ReasonSignatureInvalid, "signed payload is not a cosign simple-signing payload")
		}
		if p.Critical.Image.DockerManifestDigest != ref.Digest {
			return nil, fail(ReasonSignatureInvalid, "the signature is for %s, not %s", p.Critical.Image.DockerManifestDigest, ref.Digest)
		}
		if id := p.Critical.Identity.DockerReference; id != "" && id != ref.Registry+"/"+ref.Repository {
			return nil, fail(ReasonSignatureInvalid, "the signature names repository %s, not %s/%s", id, ref.Registry, ref.Repository)
		}
		keyID = KeyID(k)
		signed = true
		break
	}
	if !sawLayer {
		return nil, fail(ReasonUnsigned, "the signature manifest has no %s layer", SimpleSigningMediaType)
	}
	if !signed {
		return nil, fail(ReasonSignatureInvalid, "no trusted key verifies the signature")
	}
	// The artifact itself, by digest.
	mdesc, mrc, err := repo.FetchReference(ctx, ref.Digest)
	if err != nil {
		if errors.Is(err, errdef.ErrNotFound) {
			return nil, fail(ReasonFetchFailed, "manifest not found")
		}
		return nil, fail(ReasonFetchFailed, "manifest: %v", err)
	}
	mraw, err := readAll(mrc, mdesc, maxManifest)
	if err != nil {
		return nil, classify(fail, "manifest", err)
	}
	if digest.FromBytes(mraw) != dg {
		return nil, fail(ReasonSignatureInvalid, "the manifest does not match its digest (tampered)")
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(mraw, &m); err != nil {
		return nil, fail(ReasonSignatureInvalid, "manifest: %v", err)
	}
	at := m.ArtifactType
	if at == "" {
		at = m.Config.MediaType
	}
	if ref.ArtifactType != "" && at != ref.ArtifactType {
		return nil, fail(ReasonSignatureInvalid, "artifact type %q, want %q", at, ref.ArtifactType)
	}
	var layer *ocispec.Descriptor
	for i := range m.Layers {
		if m.Layers[i].MediaType == allowlist.DocumentMediaType {
			if layer != nil {
				return nil, fail(ReasonSignatureInvalid, "more than one allowlist layer")
			}
			layer = &m.Layers[i]
		}
	}
	if layer == nil {
		return nil, fail(ReasonSignatureInvalid, "no %s layer", allowlist.DocumentMediaType)
	}
	if layer.Size > allowlist.MaxDocumentBytes {
		return nil, fail(ReasonSignatureInvalid, "allowlist layer of %d bytes, more than %d", layer.Size, allowlist.MaxDocumentBytes)
	}
	raw, err := fetchBlob(ctx, repo, *layer, allowlist.MaxDocumentBytes)
	if err != nil {
		return nil, classify(fail, "allowlist layer", err)
	}
	doc, entries, err := allowlist.Parse(raw)
	if err != nil {
		return nil, fail(ReasonSignatureInvalid, "signed content is not a valid allowlist: %v", err)
	}
	return &Verified{Ref: ref, Doc: doc, Entries: entries, KeyID: keyID}, nil
}

// classify maps a fetch error: content that does not match its digest is
// tampering, anything else a fetch failure.
func classify(fail func(Reason, string, ...any) error, what string, err error) error {
	// oras reports a Content-Length other than the descriptor's size as
	// a plain error; it is the same tampering.
	if errors.Is(err, content.ErrMismatchedDigest) || errors.Is(err, errMismatch) || strings.Contains(err.Error(), "mismatch Content-Length") {
		return fail(ReasonSignatureInvalid, "%s does not match its digest (tampered): %v", what, err)
	}
	return fail(ReasonFetchFailed, "%s: %v", what, err)
}

var errMismatch = errors.New("content does not match its digest")

func fetchBlob(ctx context.Context, repo *remote.Repository, d ocispec.Descriptor, limit int64) ([]byte, error) {
	if d.Size > limit {
		return nil, fmt.Errorf("blob %s of %d bytes, more than %d", d.Digest, d.Size, limit)
	}
	rc, err := repo.Blobs().Fetch(ctx, d)
	if err != nil {
		return nil, err
	}
	return readAll(rc, d, limit)
}

// readAll reads rc to its end, at most limit bytes, and checks size and
// digest against d.
func readAll(rc io.ReadCloser, d ocispec.Descriptor, limit int64) ([]byte, error) {
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("more than %d bytes", limit)
	}
	if int64(len(b)) != d.Size || digest.FromBytes(b) != d.Digest {
		return nil, errMismatch
	}
	return b, nil
}

// KeyID identifies a public key: hex SHA-256 of its PKIX DER.
func KeyID(k *ecdsa.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return fmt.Sprintf("%x", sum)
}

// ParsePublicKeys reads every PKIX "PUBLIC KEY" PEM block in data (the
// format of cosign.pub); any other block, or a key that is not ECDSA, is
// an error.
func ParsePublicKeys(data []byte) ([]*ecdsa.PublicKey, error) {
	var out []*ecdsa.PublicKey
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("PEM block %q: want PUBLIC KEY", b.Type)
		}
		k, err := x509.ParsePKIXPublicKey(b.Bytes)
		if err != nil {
			return nil, err
		}
		ek, ok := k.(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("public key of type %T: want ECDSA (cosign generate-key-pair makes P-256)", k)
		}
		out = append(out, ek)
	}
	if len(out) == 0 {
		return nil, errors.New("no PUBLIC KEY PEM block")
	}
	return out, nil
}

// MarshalPublicKey returns k as a PKIX PEM block.
func MarshalPublicKey(k *ecdsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePrivateKey reads an ECDSA key from PEM ("EC PRIVATE KEY" or PKCS#8
// "PRIVATE KEY").
func ParsePrivateKey(data []byte) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM block")
	}
	switch b.Type {
	case "EC PRIVATE KEY":
		return x509.ParseECPrivateKey(b.Bytes)
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, err
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("private key of type %T: want ECDSA", k)
		}
		return ek, nil
	}
	return nil, fmt.Errorf("PEM block %q: want EC PRIVATE KEY or PRIVATE KEY (an encrypted cosign.key must be exported first)", b.Type)
}

// MarshalPrivateKey returns k as a PKCS#8 PEM block.
func MarshalPrivateKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// FetchBlob streams the first layer of the artifact at reference
// (registry/repository:tag or @digest) to w — a blocklist published with
// oras. It returns the manifest digest, used as the ETag: an unchanged
// digest is not fetched again.
func FetchBlob(ctx context.Context, o Options, reference, etag string, w io.Writer, limit int64) (string, bool, error) {
	registry, repository, refPart := SplitReference(reference)
	repo, err := o.repo(registry, repository)
	if err != nil {
		return "", false, err
	}
	mdesc, rc, err := repo.FetchReference(ctx, refPart)
	if err != nil {
		return "", false, err
	}
	if etag != "" && mdesc.Digest.String() == etag {
		rc.Close()
		return etag, true, nil
	}
	raw, err := readAll(rc, mdesc, maxManifest)
	if err != nil {
		return "", false, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return "", false, err
	}
	if len(m.Layers) == 0 {
		return "", false, errors.New("the artifact has no layers")
	}
	l := m.Layers[0]
	if l.Size > limit {
		return "", false, fmt.Errorf("layer of %d bytes, more than %d", l.Size, limit)
	}
	lrc, err := repo.Blobs().Fetch(ctx, l)
	if err != nil {
		return "", false, err
	}
	defer lrc.Close()
	vr := content.NewVerifyReader(lrc, l)
	if _, err := io.Copy(w, vr); err != nil {
		return "", false, err
	}
	if err := vr.Verify(); err != nil {
		return "", false, err
	}
	return mdesc.Digest.String(), false, nil
}

// SplitReference splits registry/repository[:tag|@digest] into its
// parts; the reference defaults to "latest".
func SplitReference(ref string) (registry, repository, reference string) {
	reference = "latest"
	if i := strings.LastIndexByte(ref, '@'); i >= 0 {
		ref, reference = ref[:i], ref[i+1:]
	} else if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		ref, reference = ref[:i], ref[i+1:]
	}
	registry, repository, _ = strings.Cut(ref, "/")
	return registry, repository, reference
}

// PushBlocklist publishes a blocklist as an artifact with one layer and
// tags it; tests and operators use it (`oras push` works as well).
func PushBlocklist(ctx context.Context, o Options, registry, repository, tag string, list []byte) (string, error) {
	repo, err := o.repo(registry, repository)
	if err != nil {
		return "", err
	}
	layer := content.NewDescriptorFromBytes("text/plain", list)
	if err := pushBlob(ctx, repo, layer, list); err != nil {
		return "", err
	}
	desc, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, BlocklistMediaType, oras.PackManifestOptions{Layers: []ocispec.Descriptor{layer}})
	if err != nil {
		return "", err
	}
	if tag != "" {
		if err := repo.Tag(ctx, desc, tag); err != nil {
			return "", err
		}
	}
	return desc.Digest.String(), nil
}
