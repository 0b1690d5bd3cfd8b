package wire

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
)

func ed25519Priv(id *identity.Identity) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(id.Seed())
}

// FuzzParse: frame parsing never panics, and whatever it accepts
// re-encodes to a frame it accepts again.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"v":1,"type":"heartbeat"}`,
		`{"type":"ack","id":"x"}`,
		`{"v":1,"type":"message","from":"did:mesh:00000000000000000000000000000000","to":"did:mesh:00000000000000000000000000000001","id":"m","header":{"dh":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","pn":0,"n":1},"ciphertext":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","x3dh":{"identity_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","ephemeral_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","used_opk_id":3}}`,
		`{"v":1,"type":"knock","from":"did:mesh:00000000000000000000000000000000","to":"did:agentmesh:3J98t1WpEZ73CNmQviecrnyiWrnq","id":"k","intent":{"action":"a"},"signature":"x"}`,
		`{"v":1,"type":"connect","from":"did:mesh:00000000000000000000000000000000","auth":{"timestamp":"2026-01-01T00:00:00Z","signature":"AA"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// The relay's single-pass scanner agrees with encoding/json on
		// every input: same syntax verdict, same routing fields.
		var want Routing
		jerr := json.Unmarshal(b, &want)
		got, serr := scanEnvelope(b)
		if serr != errNeedSlowPath {
			if (jerr == nil) != (serr == nil) {
				t.Fatalf("encoding/json says %v, scanner says %v", jerr, serr)
			}
			if jerr == nil && got != want {
				t.Fatalf("scanner read %+v, encoding/json %+v", got, want)
			}
		}
		r, rerr := ParseRouting(b)
		fr, err := Parse(b)
		if err != nil {
			return
		}
		// Whatever Parse accepts, the relay's envelope parser accepts
		// with the same routing fields.
		if rerr != nil || r.Type != fr.Type || r.From != fr.From || r.To != fr.To || r.ID != fr.ID {
			t.Fatalf("ParseRouting disagrees with Parse: %v %+v", rerr, r)
		}
		out, err := fr.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(out); err != nil {
			t.Fatalf("re-encoded frame refused: %v\n%s", err, out)
		}
		if fr.Type == TypeConnect {
			ConnectProof(fr)
		}
		SigningBytes(b)
	})
}

// FuzzBundle: prekey bundle parsers (upload and fetch) never panic, and
// an accepted fetched bundle has keys of the right sizes.
func FuzzBundle(f *testing.F) {
	f.Add([]byte(`{"identity_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","identity_key_ed":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","signed_pre_key":{"key_id":1,"public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},"one_time_pre_key":{"key_id":2,"public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},"one_time_pre_keys":[{"key_id":2,"public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}`))
	f.Add([]byte(`{"one_time_pre_key":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseBundleUpload(b)
		bu, err := ParseBundleResponse(b)
		if err != nil {
			return
		}
		if len(bu.IdentityKey) != 32 || len(bu.SignedPreKey.PublicKey) != 32 || len(bu.SignedPreKey.Signature) != 64 {
			t.Fatal("accepted a bundle with wrong key sizes")
		}
		bu.Verify()
	})
}

// FuzzAuthHeader: the Authorization parser never panics and never
// accepts a header whose signature does not verify.
func FuzzAuthHeader(f *testing.F) {
	f.Add("Ed25519-Timestamp did:mesh:00000000000000000000000000000000 2026-01-01T00:00:00Z " + B64(make([]byte, 64)))
	f.Add("Ed25519-Timestamp a b c")
	pub := make([]byte, 32)
	pub[0] = 9
	f.Fuzz(func(t *testing.T, h string) {
		a, err := ParseAuthHeader(h)
		if err != nil {
			return
		}
		if a.Verify(pub, a.Time) == nil {
			t.Fatal("a fuzzed header verified against a fixed key")
		}
	})
}

var _ = time.Now
