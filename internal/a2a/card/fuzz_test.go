package card

import (
	"bytes"
	"crypto/ed25519"
	"testing"
)

// FuzzVerifyCard: never panics on any card; a genuine signed card
// verifies, and any change to its canonical form makes it fail.
func FuzzVerifyCard(f *testing.F) {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	s, err := SignBoth(Spec{Name: "a", Description: "b", Version: "1", URL: "https://x/a2a/n/a", Skills: []Skill{{Name: "s"}}}, key, "")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(s.V1)
	f.Add(s.V03)
	f.Add([]byte(`{"name":"x","signatures":[{"protected":"e30","signature":""}]}`))
	genuine, _ := Canonical(s.V1)
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := VerifyCard(b, FromJWK)
		if err != nil {
			return
		}
		if v.Thumbprint == "" {
			t.Fatal("verified without a thumbprint")
		}
		// Only the genuine key signed anything in the corpus; if the fuzzer
		// produced a card that verifies under that key, it must mean the
		// same as a card the key signed.
		if pinned, _ := KeyThumbprint(key.Public()); v.Thumbprint == pinned {
			c, _ := Canonical(b)
			c03, _ := Canonical(s.V03)
			if !bytes.Equal(c, genuine) && !bytes.Equal(c, c03) {
				t.Fatalf("forged: %q verified under the genuine key", b)
			}
		}
	})
}

// FuzzParseProtected: never panics; an accepted header has a supported alg
// and no crit, and its jwk, if any, is a usable key.
func FuzzParseProtected(f *testing.F) {
	for _, s := range []string{"eyJhbGciOiJFZERTQSJ9", "eyJhbGciOiJub25lIn0", "e30", "", "eyJhbGciOiJFUzI1NiIsImNyaXQiOltdfQ"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseProtected(s)
		if err != nil {
			return
		}
		if h.Alg != "EdDSA" && h.Alg != "ES256" || h.Crit != nil {
			t.Fatalf("accepted %+v", h)
		}
		if h.JWK != nil {
			if _, err := h.JWK.Thumbprint(); err != nil {
				t.Fatalf("accepted jwk without a thumbprint: %v", err)
			}
		}
	})
}
