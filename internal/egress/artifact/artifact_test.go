package artifact

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kars-io/kars/internal/egress/allowlist"
)

// memBlobs is the registry's blob store, open to the test so that it can
// tamper with content as an attacker with write access to storage would.
type memBlobs struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (b *memBlobs) Stat(_ context.Context, _ string, h v1.Hash) (int64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.m[h.String()]
	if !ok {
		return 0, registry.ErrNotFound
	}
	return int64(len(v)), nil
}

func (b *memBlobs) Get(_ context.Context, _ string, h v1.Hash) (io.ReadCloser, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.m[h.String()]
	if !ok {
		return nil, registry.ErrNotFound
	}
	return io.NopCloser(bytes.NewReader(v)), nil
}

func (b *memBlobs) Put(_ context.Context, _ string, h v1.Hash, rc io.ReadCloser) error {
	defer rc.Close()
	v, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.m[h.String()] = v
	b.mu.Unlock()
	return nil
}

func (b *memBlobs) tamper(digest string, f func([]byte) []byte) {
	b.mu.Lock()
	b.m[digest] = f(append([]byte(nil), b.m[digest]...))
	b.mu.Unlock()
}

// newRegistry runs go-containerregistry's registry in process; down makes
// every request fail as an outage would.
func newRegistry(t *testing.T) (host string, blobs *memBlobs, down func(bool)) {
	blobs = &memBlobs{m: map[string][]byte{}}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithBlobHandler(blobs))
	var mu sync.Mutex
	isDown := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		d := isDown
		mu.Unlock()
		if d {
			http.Error(w, "registry down", http.StatusServiceUnavailable)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), blobs, func(v bool) { mu.Lock(); isDown = v; mu.Unlock() }
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func doc(t *testing.T, hosts ...string) []byte {
	var es []allowlist.Entry
	for _, h := range hosts {
		e, err := allowlist.ParseEntry(h)
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
	d, err := allowlist.NewDocument("ns/bot", es)
	if err != nil {
		t.Fatal(err)
	}
	return d.Marshal()
}

func TestSignedAllowlistRoundTrip(t *testing.T) {
	ctx := context.Background()
	host, blobs, down := newRegistry(t)
	// No retries: the outage below should fail at once.
	o := Options{PlainHTTP: true, HTTPClient: &http.Client{}}
	key, other := newKey(t), newKey(t)
	raw := doc(t, "api.github.com:443", "*.githubusercontent.com")
	d, err := PushAllowlist(ctx, o, host, "policy/egress/bot", "v1", raw, key)
	if err != nil {
		t.Fatal(err)
	}
	// The same list always has the same digest.
	d2, err := PushAllowlist(ctx, o, host, "policy/egress/bot", "", raw, key)
	if err != nil || d2 != d {
		t.Fatalf("republished digest %s, was %s (%v)", d2, d, err)
	}
	ref := Ref{Registry: host, Repository: "policy/egress/bot", Digest: d, ArtifactType: allowlist.DocumentMediaType}

	v, err := FetchVerified(ctx, o, ref, []*ecdsa.PublicKey{&other.PublicKey, &key.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Entries) != 2 || v.KeyID != KeyID(&key.PublicKey) || v.Doc.Sandbox != "ns/bot" {
		t.Fatalf("verified %+v", v)
	}

	// A key that did not sign: SignatureInvalid.
	_, err = FetchVerified(ctx, o, ref, []*ecdsa.PublicKey{&other.PublicKey})
	if ReasonOf(err) != ReasonSignatureInvalid {
		t.Errorf("wrong key: %v", err)
	}
	// No trusted keys at all: refused.
	if _, err = FetchVerified(ctx, o, ref, nil); ReasonOf(err) != ReasonSignatureInvalid {
		t.Errorf("no keys: %v", err)
	}
	// The wrong artifact type: refused.
	bad := ref
	bad.ArtifactType = "application/vnd.other"
	if _, err = FetchVerified(ctx, o, bad, []*ecdsa.PublicKey{&key.PublicKey}); ReasonOf(err) != ReasonSignatureInvalid {
		t.Errorf("artifact type: %v", err)
	}

	// Unsigned: published without a key.
	ud, err := PushAllowlist(ctx, o, host, "policy/egress/bot", "", doc(t, "unsigned.example.com"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = FetchVerified(ctx, o, Ref{Registry: host, Repository: "policy/egress/bot", Digest: ud}, []*ecdsa.PublicKey{&key.PublicKey})
	if ReasonOf(err) != ReasonUnsigned {
		t.Errorf("unsigned: %v", err)
	}

	// A signature copied from another digest does not sign this one:
	// sign list A, then put A's signature under B's signature tag.
	bd, err := PushAllowlist(ctx, o, host, "policy/egress/bot", "", doc(t, "b.example.com"), nil)
	if err != nil {
		t.Fatal(err)
	}
	repo, _ := o.repo(host, "policy/egress/bot")
	sdesc, err := repo.Resolve(ctx, SignatureTag(d))
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Tag(ctx, sdesc, SignatureTag(bd)); err != nil {
		t.Fatal(err)
	}
	_, err = FetchVerified(ctx, o, Ref{Registry: host, Repository: "policy/egress/bot", Digest: bd}, []*ecdsa.PublicKey{&key.PublicKey})
	if ReasonOf(err) != ReasonSignatureInvalid || !strings.Contains(err.Error(), "the signature is for") {
		t.Errorf("replayed signature: %v", err)
	}

	// Tampered: the allowlist layer's bytes changed in storage.
	var layerDigest string
	for dg, b := range blobs.m {
		if bytes.Equal(b, raw) {
			layerDigest = dg
		}
	}
	blobs.tamper(layerDigest, func(b []byte) []byte { return bytes.Replace(b, []byte("api.github.com"), []byte("evilgithub.com"), 1) })
	_, err = FetchVerified(ctx, o, ref, []*ecdsa.PublicKey{&key.PublicKey})
	if ReasonOf(err) != ReasonSignatureInvalid || !strings.Contains(err.Error(), "tampered") {
		t.Errorf("tampered: %v", err)
	}
	// A replacement of another length fails the size check instead.
	blobs.tamper(layerDigest, func([]byte) []byte { return append([]byte("# hi\n"), raw...) })
	_, err = FetchVerified(ctx, o, ref, []*ecdsa.PublicKey{&key.PublicKey})
	if ReasonOf(err) != ReasonSignatureInvalid || !strings.Contains(err.Error(), "tampered") {
		t.Errorf("tampered (length): %v", err)
	}
	blobs.tamper(layerDigest, func([]byte) []byte { return raw })

	// Outage: FetchFailed.
	down(true)
	_, err = FetchVerified(ctx, o, ref, []*ecdsa.PublicKey{&key.PublicKey})
	if ReasonOf(err) != ReasonFetchFailed {
		t.Errorf("outage: %v", err)
	}
	down(false)
	if _, err = FetchVerified(ctx, o, ref, []*ecdsa.PublicKey{&key.PublicKey}); err != nil {
		t.Errorf("after the outage: %v", err)
	}
}

func TestKeysPEM(t *testing.T) {
	k := newKey(t)
	pub, err := MarshalPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	k2 := newKey(t)
	pub2, _ := MarshalPublicKey(&k2.PublicKey)
	keys, err := ParsePublicKeys(append(pub, pub2...))
	if err != nil || len(keys) != 2 || !keys[0].Equal(&k.PublicKey) {
		t.Fatalf("%v %v", keys, err)
	}
	priv, _ := MarshalPrivateKey(k)
	back, err := ParsePrivateKey(priv)
	if err != nil || !back.Equal(k) {
		t.Fatalf("private key round trip: %v", err)
	}
	for _, bad := range []string{"", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"} {
		if _, err := ParsePublicKeys([]byte(bad)); err == nil {
			t.Errorf("ParsePublicKeys(%q) accepted", bad)
		}
	}
	if _, err := ParsePrivateKey([]byte("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n")); err == nil ||
		!strings.Contains(err.Error(), "exported") {
		t.Errorf("encrypted cosign key: %v", err)
	}
}

func TestBlocklistArtifact(t *testing.T) {
	ctx := context.Background()
	host, _, _ := newRegistry(t)
	o := Options{PlainHTTP: true}
	list := []byte("ads.example.com\n")
	d, err := PushBlocklist(ctx, o, host, "lists/block", "v1", list)
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{host + "/lists/block:v1", host + "/lists/block@" + d} {
		var buf bytes.Buffer
		etag, nm, err := FetchBlob(ctx, o, ref, "", &buf, 1<<20)
		if err != nil || nm || etag != d || buf.String() != string(list) {
			t.Errorf("%s: %q %v %s %v", ref, buf.String(), nm, etag, err)
		}
		_, nm, err = FetchBlob(ctx, o, ref, d, io.Discard, 1<<20)
		if err != nil || !nm {
			t.Errorf("%s unchanged: %v %v", ref, nm, err)
		}
	}
	if _, _, err := FetchBlob(ctx, o, host+"/lists/block:v1", "", io.Discard, 4); err == nil {
		t.Error("a layer over the limit was fetched")
	}
}

func TestSplitReference(t *testing.T) {
	for in, want := range map[string]string{
		"reg:5000/a/b:v1":          "reg:5000 a/b v1",
		"reg/a@sha256:abc":         "reg a sha256:abc",
		"reg:5000/a/b":             "reg:5000 a/b latest",
		"karsacr.azurecr.io/x/y:z": "karsacr.azurecr.io x/y z",
	} {
		r, p, ref := SplitReference(in)
		if got := fmt.Sprintf("%s %s %s", r, p, ref); got != want {
			t.Errorf("SplitReference(%s) = %s, want %s", in, got, want)
		}
	}
	var ve *VerifyError
	if !errors.As(&VerifyError{Reason: ReasonUnsigned}, &ve) {
		t.Error("VerifyError")
	}
}
