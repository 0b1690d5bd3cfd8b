package policy

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/mesh/wire"
)

var update = flag.Bool("update", false, "rewrite testdata/trust-edge-v1.json")

// edgeVector is the published test vector of a trust edge signature
// (testdata/trust-edge-v1.json): a key from a fixed seed, two edges, the
// exact bytes signed and the signatures, so another implementation can
// sign and verify edges kars accepts.
type edgeVector struct {
	Seed      string `json:"seed_hex_of"`
	PublicKey string `json:"public_key"`
	Edges     []struct {
		Domain       string     `json:"domain"`
		From         string     `json:"from"`
		To           string     `json:"to"`
		Score        int        `json:"score"`
		ExpiresAt    *time.Time `json:"expiresAt,omitempty"`
		SigningBytes string     `json:"signing_bytes"`
		Signature    string     `json:"signature"`
	} `json:"edges"`
}

func vectorKey() ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("kars trust edge test vectors v1"))
	return ed25519.NewKeyFromSeed(seed[:])
}

func TestEdgeVectors(t *testing.T) {
	key := vectorKey()
	exp := time.Date(2027, 1, 31, 23, 59, 59, 0, time.UTC)
	v := edgeVector{Seed: `SHA-256("kars trust edge test vectors v1")`, PublicKey: wire.B64(key.Public().(ed25519.PublicKey))}
	for _, e := range []struct {
		d, f, to string
		s        int
		exp      *time.Time
	}{
		{"contoso.com", "kars-planner/planner", "kars-worker/worker", 700, &exp},
		{"contoso.com", "did:mesh:00112233445566778899aabbccddeeff", "did:mesh:ffeeddccbbaa99887766554433221100", 500, nil},
	} {
		msg, err := EdgeSigningBytes(e.d, e.f, e.to, e.s, e.exp)
		if err != nil {
			t.Fatal(err)
		}
		sig, _ := SignEdge(key, e.d, e.f, e.to, e.s, e.exp)
		v.Edges = append(v.Edges, struct {
			Domain       string     `json:"domain"`
			From         string     `json:"from"`
			To           string     `json:"to"`
			Score        int        `json:"score"`
			ExpiresAt    *time.Time `json:"expiresAt,omitempty"`
			SigningBytes string     `json:"signing_bytes"`
			Signature    string     `json:"signature"`
		}{e.d, e.f, e.to, e.s, e.exp, string(msg), sig})
	}
	got, _ := json.MarshalIndent(v, "", "  ")
	got = append(got, '\n')
	const path = "testdata/trust-edge-v1.json"
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if string(got) != string(want) {
		t.Fatalf("%s differs from what this build signs:\n%s", path, got)
	}
	var pub []byte
	pub, _ = wire.DecodeB64(v.PublicKey)
	for _, e := range v.Edges {
		if err := VerifyEdge(pub, e.Signature, e.Domain, e.From, e.To, e.Score, e.ExpiresAt); err != nil {
			t.Fatalf("vector %s → %s: %v", e.From, e.To, err)
		}
		// Every field is bound: another domain, score or expiry fails.
		later := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		for _, bad := range []error{
			VerifyEdge(pub, e.Signature, "fabrikam.com", e.From, e.To, e.Score, e.ExpiresAt),
			VerifyEdge(pub, e.Signature, e.Domain, e.To, e.From, e.Score, e.ExpiresAt),
			VerifyEdge(pub, e.Signature, e.Domain, e.From, e.To, e.Score+1, e.ExpiresAt),
			VerifyEdge(pub, e.Signature, e.Domain, e.From, e.To, e.Score, &later),
		} {
			if !errors.Is(bad, ErrEdgeSignature) {
				t.Fatalf("a changed edge verified: %v", bad)
			}
		}
	}
}
