package artifact

import (
	"context"
	"crypto/ecdsa"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kars-io/kars/internal/egress/allowlist"
)

// cosignBinary finds the cosign CLI (KARS_COSIGN or PATH). CI builds it
// from the Go module proxy: go install github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5.
func cosignBinary(t *testing.T) string {
	if p := os.Getenv("KARS_COSIGN"); p != "" {
		return p
	}
	p, err := exec.LookPath("cosign")
	if err != nil {
		t.Skip("cosign is not installed (set KARS_COSIGN); the signature format is then checked by kars's own verifier only")
	}
	return p
}

func cosign(t *testing.T, bin string, env []string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestCosignInterop: `cosign verify` accepts a kars-signed allowlist, and
// kars accepts an allowlist signed by `cosign sign`, both with keys in
// cosign's PEM forms; a kars signature under another key fails cosign too.
func TestCosignInterop(t *testing.T) {
	bin := cosignBinary(t)
	ctx := context.Background()
	host, _, _ := newRegistry(t)
	o := Options{PlainHTTP: true, HTTPClient: &http.Client{}}
	dir := t.TempDir()

	// kars signs, cosign verifies.
	key := newKey(t)
	pub, _ := MarshalPublicKey(&key.PublicKey)
	pubFile := filepath.Join(dir, "kars.pub")
	os.WriteFile(pubFile, pub, 0o644)
	d, err := PushAllowlist(ctx, o, host, "policy/interop", "", doc(t, "api.github.com:443"), key)
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/policy/interop@" + d
	out, err := cosign(t, bin, nil, "verify", "--key", pubFile, "--insecure-ignore-tlog=true", "--insecure-ignore-sct=true", "--allow-http-registry=true", ref)
	if err != nil || !strings.Contains(out, d) {
		t.Fatalf("cosign verify of a kars signature: %v\n%s", err, out)
	}
	t.Logf("cosign verify:\n%s", out)
	other := newKey(t)
	otherPub, _ := MarshalPublicKey(&other.PublicKey)
	otherFile := filepath.Join(dir, "other.pub")
	os.WriteFile(otherFile, otherPub, 0o644)
	if out, err := cosign(t, bin, nil, "verify", "--key", otherFile, "--insecure-ignore-tlog=true", "--allow-http-registry=true", ref); err == nil {
		t.Errorf("cosign verified a kars signature with the wrong key:\n%s", out)
	}

	// cosign signs, kars verifies.
	env := []string{"COSIGN_PASSWORD=kars-test"}
	if out, err := cosign(t, bin, env, "generate-key-pair", "--output-key-prefix", filepath.Join(dir, "cosign")); err != nil {
		t.Fatalf("cosign generate-key-pair: %v\n%s", err, out)
	}
	d2, err := PushAllowlist(ctx, o, host, "policy/interop", "", doc(t, "signed-by-cosign.example.com"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ref2 := host + "/policy/interop@" + d2
	if out, err := cosign(t, bin, env, "sign", "--key", filepath.Join(dir, "cosign.key"), "--tlog-upload=false", "--allow-http-registry=true", "--yes", ref2); err != nil {
		t.Fatalf("cosign sign: %v\n%s", err, out)
	}
	cpub, err := os.ReadFile(filepath.Join(dir, "cosign.pub"))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := ParsePublicKeys(cpub)
	if err != nil {
		t.Fatal(err)
	}
	v, err := FetchVerified(ctx, o, Ref{Registry: host, Repository: "policy/interop", Digest: d2, ArtifactType: allowlist.DocumentMediaType}, keys)
	if err != nil {
		t.Fatalf("kars verify of a cosign signature: %v", err)
	}
	if len(v.Entries) != 1 || v.Entries[0].Host != "signed-by-cosign.example.com" {
		t.Errorf("verified %+v", v.Entries)
	}
	if _, err := FetchVerified(ctx, o, Ref{Registry: host, Repository: "policy/interop", Digest: d2}, []*ecdsa.PublicKey{&key.PublicKey}); ReasonOf(err) != ReasonSignatureInvalid {
		t.Errorf("a cosign signature under another key: %v", err)
	}
}
