package identity

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// RFC 8032 §7.1 TEST 1 and TEST 2: the Ed25519 our identities sign with.
func TestRFC8032Ed25519(t *testing.T) {
	for _, tc := range []struct{ seed, pub, msg, sig string }{
		{"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
			"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
			"e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"},
		{"4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
			"3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
			"92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"},
	} {
		id, err := FromSeed(unhex(t, tc.seed))
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(id.PublicKey()); got != tc.pub {
			t.Errorf("public key %s, want %s", got, tc.pub)
		}
		if got := hex.EncodeToString(id.Sign(unhex(t, tc.msg))); got != tc.sig {
			t.Errorf("signature %s, want %s", got, tc.sig)
		}
	}
}

// RFC 7748 §5.2 (first vector) and §6.1: the X25519 function X3DH and
// the ratchet use.
func TestRFC7748X25519(t *testing.T) {
	x := ecdh.X25519()
	priv, _ := x.NewPrivateKey(unhex(t, "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"))
	pub, _ := x.NewPublicKey(unhex(t, "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"))
	out, err := priv.ECDH(pub)
	if err != nil || hex.EncodeToString(out) != "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552" {
		t.Errorf("§5.2: got %x, %v", out, err)
	}
	a, _ := x.NewPrivateKey(unhex(t, "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
	b, _ := x.NewPrivateKey(unhex(t, "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
	if got := hex.EncodeToString(a.PublicKey().Bytes()); got != "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a" {
		t.Errorf("§6.1 Alice public %s", got)
	}
	if got := hex.EncodeToString(b.PublicKey().Bytes()); got != "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f" {
		t.Errorf("§6.1 Bob public %s", got)
	}
	k1, _ := a.ECDH(b.PublicKey())
	k2, _ := b.ECDH(a.PublicKey())
	if !bytes.Equal(k1, k2) || hex.EncodeToString(k1) != "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742" {
		t.Errorf("§6.1 shared secret %x / %x", k1, k2)
	}
}

// The two halves of the §4.4 conversion must agree: the X25519 public
// key of the derived private scalar is the birational image of the
// Ed25519 public key. (The interop test checks them against libsodium.)
func TestEd25519ToX25519Agree(t *testing.T) {
	for range 200 {
		id, err := New(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		mapped, err := X25519FromEd25519(id.PublicKey())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(mapped.Bytes(), id.X25519().PublicKey().Bytes()) {
			t.Fatalf("seed %x: mapped %x, derived %x", id.Seed(), mapped.Bytes(), id.X25519().PublicKey().Bytes())
		}
	}
	// y = 2 has no x on the curve; y = 1 is the identity (small order).
	notPoint := make([]byte, 32)
	notPoint[0] = 2
	identityPoint := make([]byte, 32)
	identityPoint[0] = 1
	for _, k := range [][]byte{notPoint, identityPoint} {
		if _, err := X25519FromEd25519(k); err == nil {
			t.Errorf("%x was mapped", k)
		}
	}
}

func TestDIDs(t *testing.T) {
	id, _ := FromSeed(unhex(t, "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
	mesh, am := id.DID(), AgentMeshDID(id.PublicKey())
	if !strings.HasPrefix(mesh, PrefixMesh) || len(mesh) != len(PrefixMesh)+32 {
		t.Errorf("did:mesh %q", mesh)
	}
	for _, d := range []string{mesh, am} {
		if !ValidDID(d) {
			t.Errorf("%q not valid", d)
		}
		if err := CheckDID(d, id.PublicKey()); err != nil {
			t.Errorf("%q: %v", d, err)
		}
	}
	other, _ := New(rand.Reader)
	for _, d := range []string{mesh, am} {
		if err := CheckDID(d, other.PublicKey()); err == nil {
			t.Errorf("%q accepted for another key", d)
		}
	}
	for _, d := range []string{"", "did:mesh:", "did:mesh:ABCDEF0123456789abcdef0123456789", "did:web:x", "did:agentmesh:0OIl000000000000000000"} {
		if ValidDID(d) {
			t.Errorf("%q valid", d)
		}
	}
}

// base58 against the reference encoder examples (Bitcoin alphabet).
func TestBase58(t *testing.T) {
	for in, want := range map[string]string{
		"":                     "",
		"00":                   "1",
		"0000":                 "11",
		"61":                   "2g",
		"626262":               "a3gV",
		"636363":               "aPEr",
		"00000000000000000000": "1111111111",
		"516b6fcd0f":           "ABnLTmg",
		"572e4794":             "3EFU7m",
	} {
		if got := base58(unhex(t, in)); got != want {
			t.Errorf("base58(%s) = %q, want %q", in, got, want)
		}
	}
}
