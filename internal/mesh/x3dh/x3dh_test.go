package x3dh

import (
	"bytes"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
)

// RFC 5869 A.1: the HKDF-SHA256 the X3DH KDF and KDF_RK are built on.
func TestRFC5869HKDF(t *testing.T) {
	h := func(s string) []byte { b, _ := hex.DecodeString(s); return b }
	ikm := bytes.Repeat([]byte{0x0b}, 22)
	salt := h("000102030405060708090a0b0c")
	info := string(h("f0f1f2f3f4f5f6f7f8f9"))
	prk, _ := hkdf.Extract(sha256.New, ikm, salt)
	if hex.EncodeToString(prk) != "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5" {
		t.Errorf("PRK %x", prk)
	}
	okm, _ := hkdf.Key(sha256.New, ikm, salt, info, 42)
	if hex.EncodeToString(okm) != "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865" {
		t.Errorf("OKM %x", okm)
	}
}

// The X3DH KDF is HKDF(salt = 0^32, IKM = 0xFF^32 ‖ KM, info) — not the
// 0xFF salt an earlier toolkit draft used.
func TestKDFLayout(t *testing.T) {
	km := bytes.Repeat([]byte{7}, 96)
	want, _ := hkdf.Key(sha256.New, append(bytes.Repeat([]byte{0xff}, 32), km...), make([]byte, 32), "AgentMesh_X3DH_v1", 32)
	in := append(bytes.Repeat([]byte{0xff}, 32), km...)
	if got := kdf(in); !bytes.Equal(got, want) {
		t.Fatal("kdf layout differs")
	}
	wrong, _ := hkdf.Key(sha256.New, km, bytes.Repeat([]byte{0xff}, 32), "AgentMesh_X3DH_v1", 32)
	if bytes.Equal(wrong, want) {
		t.Fatal("salt and prefix are indistinguishable")
	}
}

func party(t *testing.T) (*identity.Identity, *Keys) {
	t.Helper()
	id, err := identity.New(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := NewKeys(rand.Reader, id, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return id, k
}

func bundleOf(k *Keys, withOPK bool) Bundle {
	b := Bundle{IdentityKey: k.self.X25519().PublicKey().Bytes(), IdentityKeyEd: k.self.PublicKey(), SignedPreKey: k.SignedPreKey()}
	if withOPK {
		o := k.OneTimePreKeys()[0]
		b.OneTimePreKey = &o
	}
	return b
}

func TestAgreement(t *testing.T) {
	alice, _ := party(t)
	_, bob := party(t)
	for _, withOPK := range []bool{true, false} {
		in, err := Initiate(rand.Reader, alice, bundleOf(bob, withOPK))
		if err != nil {
			t.Fatal(err)
		}
		if (in.UsedOPK != nil) != withOPK {
			t.Fatalf("withOPK=%v: used %v", withOPK, in.UsedOPK)
		}
		cs, err := bob.Respond(in.IdentityKey, in.EphemeralKey, in.UsedOPK)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(cs[0].SharedSecret, in.SharedSecret) || !bytes.Equal(cs[0].AD, in.AD) {
			t.Fatalf("withOPK=%v: responder derived a different secret or AD", withOPK)
		}
		if !bob.IsCurrentSignedPreKey(cs[0]) {
			t.Error("first candidate is not the current signed prekey")
		}
		wantAD := append(alice.X25519().PublicKey().Bytes(), bob.self.X25519().PublicKey().Bytes()...)
		if !bytes.Equal(in.AD, wantAD) {
			t.Error("AD is not IK_A ‖ IK_B")
		}
		if err := bob.Accept(cs[0], in.EphemeralKey, in.UsedOPK); err != nil {
			t.Fatal(err)
		}
		// The same initiation cannot be accepted twice (OPK used, or the
		// ephemeral key remembered for a 3-DH initiation).
		if _, err := bob.Respond(in.IdentityKey, in.EphemeralKey, in.UsedOPK); !errors.Is(err, ErrUnknownPreKey) {
			t.Errorf("withOPK=%v: replayed initiation: %v", withOPK, err)
		}
	}
}

func TestOneTimePreKeySingleUse(t *testing.T) {
	alice, _ := party(t)
	carol, _ := party(t)
	_, bob := party(t)
	b := bundleOf(bob, true)
	in1, _ := Initiate(rand.Reader, alice, b)
	in2, _ := Initiate(rand.Reader, carol, b) // a registry that handed the OPK out twice
	c1, err := bob.Respond(in1.IdentityKey, in1.EphemeralKey, in1.UsedOPK)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := bob.Respond(in2.IdentityKey, in2.EphemeralKey, in2.UsedOPK)
	if err != nil {
		t.Fatal(err)
	}
	if err := bob.Accept(c1[0], in1.EphemeralKey, in1.UsedOPK); err != nil {
		t.Fatal(err)
	}
	if err := bob.Accept(c2[0], in2.EphemeralKey, in2.UsedOPK); !errors.Is(err, ErrUnknownPreKey) {
		t.Fatalf("second use of one OPK: %v", err)
	}
	if len(bob.OneTimePreKeys()) != OneTimeTarget-1 {
		t.Errorf("%d OPKs left", len(bob.OneTimePreKeys()))
	}
}

func TestBundleVerification(t *testing.T) {
	alice, _ := party(t)
	mallory, _ := party(t)
	_, bob := party(t)
	b := bundleOf(bob, false)
	sig := bytes.Clone(b.SignedPreKey.Signature)
	sig[5] ^= 1
	forged := b
	forged.SignedPreKey.Signature = sig
	if _, err := Initiate(rand.Reader, alice, forged); !errors.Is(err, ErrBadSignature) {
		t.Errorf("bad signature: %v", err)
	}
	// A registry splicing its own DH identity key next to bob's
	// signing key.
	spliced := b
	spliced.IdentityKey = mallory.X25519().PublicKey().Bytes()
	if _, err := Initiate(rand.Reader, alice, spliced); !errors.Is(err, ErrIdentityBinding) {
		t.Errorf("spliced identity key: %v", err)
	}
	swapped := b
	swapped.SignedPreKey.PublicKey = mallory.X25519().PublicKey().Bytes()
	if _, err := Initiate(rand.Reader, alice, swapped); !errors.Is(err, ErrBadSignature) {
		t.Errorf("substituted signed prekey: %v", err)
	}
	short := b
	short.IdentityKey = short.IdentityKey[:31]
	if _, err := Initiate(rand.Reader, alice, short); err == nil {
		t.Error("31-byte identity key accepted")
	}
}

func TestSignedPreKeyRotation(t *testing.T) {
	alice, _ := party(t)
	_, bob := party(t)
	t0 := time.Now()
	old := bundleOf(bob, false)
	if bob.NeedsRotation(t0) || !bob.NeedsRotation(t0.Add(RotateEvery)) {
		t.Fatal("rotation schedule")
	}
	if err := bob.RotateSignedPreKey(rand.Reader, t0.Add(RotateEvery)); err != nil {
		t.Fatal(err)
	}
	if bob.SignedPreKey().ID == old.SignedPreKey.ID {
		t.Fatal("rotation kept the id")
	}
	// An initiation against the retired prekey still completes inside
	// the retention: its candidate is second.
	in, _ := Initiate(rand.Reader, alice, old)
	cs, err := bob.Respond(in.IdentityKey, in.EphemeralKey, nil)
	if err != nil || len(cs) != 2 || !bytes.Equal(cs[1].SharedSecret, in.SharedSecret) || bob.IsCurrentSignedPreKey(cs[1]) {
		t.Fatalf("retired prekey: %v, %d candidates", err, len(cs))
	}
	// After the retention the retired prekey is gone.
	bob.Prune(t0.Add(RotateEvery + RetainRetired))
	cs, _ = bob.Respond(in.IdentityKey, in.EphemeralKey, nil)
	for _, c := range cs {
		if bytes.Equal(c.SharedSecret, in.SharedSecret) {
			t.Fatal("pruned prekey still completes an initiation")
		}
	}
}

func TestKeysRoundTrip(t *testing.T) {
	alice, _ := party(t)
	bobID, bob := party(t)
	b := bundleOf(bob, true)
	j, err := bob.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	bob2, err := RestoreKeys(bobID, j)
	if err != nil {
		t.Fatal(err)
	}
	in, _ := Initiate(rand.Reader, alice, b)
	cs, err := bob2.Respond(in.IdentityKey, in.EphemeralKey, in.UsedOPK)
	if err != nil || !bytes.Equal(cs[0].SharedSecret, in.SharedSecret) {
		t.Fatalf("restored store: %v", err)
	}
}
