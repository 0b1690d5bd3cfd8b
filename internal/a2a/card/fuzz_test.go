package card

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzCanonicalize: never panics; accepted input canonicalises to JSON
// that means the same (equal after decoding) and is a fixed point.
func FuzzCanonicalize(f *testing.F) {
	for _, s := range []string{
		`{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001]}`,
		`{"b":1,"a":[true,null,"\u20ac\ud83d\ude00"],"\u00e9":{}}`, `-0`, `"\u001f"`, `[1e-7,123456789012345678901234567890]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Canonicalize(b)
		if err != nil {
			return
		}
		var x, y any
		if err := json.Unmarshal(b, &x); err != nil {
			t.Fatalf("accepted %q that encoding/json refuses: %v", b, err)
		}
		if err := json.Unmarshal(c, &y); err != nil {
			t.Fatalf("canonical form %q is not JSON: %v", c, err)
		}
		if !reflect.DeepEqual(x, y) {
			t.Fatalf("canonical form changed the value:\n%q\n%q", b, c)
		}
		again, err := Canonicalize(c)
		if err != nil || !bytes.Equal(again, c) {
			t.Fatalf("not a fixed point: %q -> %q (%v)", c, again, err)
		}
	})
}

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
