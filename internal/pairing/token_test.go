package pairing

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
)

func testPayload(now time.Time) Payload {
	return Payload{Name: "alice-laptop", Sandbox: "kars-planner/planner", Issuer: "did:mesh:00112233445566778899aabbccddeeff",
		Registry: "http://127.0.0.1:18080", Relay: "ws://127.0.0.1:18080/ws", Slots: 3, Exp: now.Add(90 * 24 * time.Hour).Unix(),
		Capabilities: []string{"offload", "handoff"}, TokenBudget: 100000}
}

func TestMintVerify(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	now := time.Now()
	tok, err := Mint(rand.Reader, key, testPayload(now))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, Prefix) {
		t.Fatalf("token %q", tok)
	}
	p, err := Verify(tok, pub, now)
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "alice-laptop" || p.Slots != 3 || p.KeyID != KeyID(pub) || len(p.Nonce) != 22 || p.TokenBudget != 100000 {
		t.Fatalf("payload %+v", p)
	}
	other, _ := Mint(rand.Reader, key, testPayload(now))
	if other == tok || Hash(other) == Hash(tok) {
		t.Fatal("two tokens for the same pairing are identical: the nonce must differ")
	}
	if h := Hash(tok); !strings.HasPrefix(h, "sha256:") || len(h) != 71 || len(HashLabel(h)) != 40 {
		t.Fatalf("hash %q", h)
	}
	// Another key's signature, an expired token, every single-byte
	// change: refused.
	_, key2, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := Verify(tok, key2.Public().(ed25519.PublicKey), now); !errors.Is(err, ErrSignature) {
		t.Fatalf("another key: %v", err)
	}
	if _, err := Verify(tok, pub, time.Unix(p.Exp, 0)); !errors.Is(err, ErrExpired) {
		t.Fatalf("at expiry: %v", err)
	}
	for i := len(Prefix); i < len(tok); i++ {
		b := []byte(tok)
		b[i] ^= 0x01
		if _, err := Verify(string(b), pub, now); err == nil {
			t.Fatalf("a token changed at byte %d verified", i)
		}
	}
	// A payload that is valid JSON but not canonical is refused even
	// when signed, so one token has one spelling.
	body := strings.TrimPrefix(tok[:strings.IndexByte(tok, '.')], Prefix)
	raw, _ := base64.RawURLEncoding.DecodeString(body)
	spaced := append([]byte("{ "), raw[1:]...)
	sig := ed25519.Sign(key, append([]byte(signingContext), spaced...))
	forged := Prefix + base64.RawURLEncoding.EncodeToString(spaced) + "." + base64.RawURLEncoding.EncodeToString(sig)
	if _, err := Verify(forged, pub, now); !errors.Is(err, ErrMalformed) {
		t.Fatalf("non-canonical payload: %v", err)
	}
}

func TestMintRefusesBadPayloads(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now()
	for name, mut := range map[string]func(*Payload){
		"no name":         func(p *Payload) { p.Name = "" },
		"no expiry":       func(p *Payload) { p.Exp = 0 },
		"zero slots":      func(p *Payload) { p.Slots = 0 },
		"bad capability":  func(p *Payload) { p.Capabilities = []string{"teleport"} },
		"no capabilities": func(p *Payload) { p.Capabilities = nil },
		"no relay":        func(p *Payload) { p.Relay = "" },
	} {
		p := testPayload(now)
		mut(&p)
		if _, err := Mint(rand.Reader, key, p); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestRedemptionProof(t *testing.T) {
	id, _ := identity.New(rand.Reader)
	now := time.Now()
	r := NewRedemption("azc_pair_v1_x.y", id, now)
	pub, err := r.Check(now.Add(time.Minute))
	if err != nil || !pub.Equal(id.PublicKey()) {
		t.Fatalf("%v", err)
	}
	if _, err := r.Check(now.Add(10 * time.Minute)); !errors.Is(err, ErrProof) {
		t.Fatalf("stale: %v", err)
	}
	other, _ := identity.New(rand.Reader)
	for name, mut := range map[string]func(*Redemption){
		"another token":    func(r *Redemption) { r.Token = "azc_pair_v1_z.y" },
		"another DID":      func(r *Redemption) { r.DID = other.DID() },
		"another key":      func(r *Redemption) { r.PublicKey = NewRedemption(r.Token, other, now).PublicKey },
		"another time":     func(r *Redemption) { r.Timestamp = now.Add(time.Second).UTC().Format(time.RFC3339Nano) },
		"signature of DID": func(r *Redemption) { r.Signature = NewRedemption(r.Token, other, now).Signature },
	} {
		c := r
		mut(&c)
		if _, err := c.Check(now); !errors.Is(err, ErrProof) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzParse: a token comes from outside (an operator's paste, a plugin).
// Whatever it holds, Parse never panics, and what it accepts is a valid,
// canonical payload that re-mints to the same shape.
func FuzzParse(f *testing.F) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	tok, _ := Mint(rand.Reader, key, testPayload(time.Now()))
	for _, s := range []string{tok, Prefix, Prefix + "e30.", Prefix + "." + strings.Repeat("A", 86), "azc_pair_v2_x.y", tok + "x", tok[:len(tok)-3]} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := Parse(s)
		if err != nil {
			return
		}
		if p.V != 1 || p.Name == "" || p.Slots < 1 || p.Exp <= 0 || len(p.Capabilities) == 0 {
			t.Fatalf("accepted %q as %+v", s, p)
		}
	})
}

// FuzzRedemptionCheck: a redemption is untrusted input to kars-mesh.
func FuzzRedemptionCheck(f *testing.F) {
	id, _ := identity.New(rand.Reader)
	now := time.Unix(1_800_000_000, 0)
	r := NewRedemption("azc_pair_v1_x.y", id, now)
	f.Add(r.Token, r.DID, r.PublicKey, r.Timestamp, r.Signature)
	f.Add("", "did:mesh:x", "", "", "")
	f.Fuzz(func(t *testing.T, tok, did, pub, ts, sig string) {
		c := Redemption{Token: tok, DID: did, PublicKey: pub, Timestamp: ts, Signature: sig}
		k, err := c.Check(now)
		if err != nil {
			return
		}
		if identity.CheckDID(did, k) != nil {
			t.Fatalf("accepted a redemption whose DID does not name its key: %+v", c)
		}
	})
}
