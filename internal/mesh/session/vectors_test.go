package session

import (
	"bytes"
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/ratchet"
	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/mesh/x3dh"
)

// The AgentMesh spec publishes no test vectors (§17 is a placeholder),
// so we publish ours. testdata/vectors-v1.json is produced by
// TestVectors with -update from a deterministic generator: every random
// byte comes from a ChaCha20 keystream under key SHA-256(label + "/" +
// stream) with a zero nonce: stream "setup" makes both identities and
// bob's prekeys, "alice" and "bob" feed each side's session (X3DH
// ephemeral key, ratchet keys, nonces). Each party's 32-byte reads after
// setup — its ratchet private keys, in order (alice's first is the X3DH
// ephemeral key) — are recorded so another implementation can replay
// the conversation by feeding them to its key generator. Without
// -update the test regenerates the vectors and requires them to equal
// the file byte for byte, then replays the recorded frames through a
// responder built only from the recorded keys. The interop test checks
// the same file with the toolkit's Python implementation.
//
//	go test ./internal/mesh/session -run TestVectors -update
var update = flag.Bool("update", false, "rewrite testdata/vectors-v1.json")

const vectorLabel = "kars AgentMesh test vectors v1"

// Vectors is the published file's shape.
type Vectors struct {
	Comment string        `json:"comment"`
	Label   string        `json:"generator_label"`
	Alice   PartyVector   `json:"alice"`
	Bob     PartyVector   `json:"bob"`
	X3DH    X3DHVector    `json:"x3dh"`
	Frames  []FrameVector `json:"frames"`
}

// PartyVector is one agent's keys.
type PartyVector struct {
	Ed25519Seed   string `json:"ed25519_seed"`
	Ed25519Public string `json:"ed25519_public"`
	X25519Private string `json:"x25519_private"`
	X25519Public  string `json:"x25519_public"`
	DIDMesh       string `json:"did_mesh"`
	DIDAgentMesh  string `json:"did_agentmesh"`
	// RatchetKeys are the X25519 private keys the party generated after
	// setup, in order: a replay feeds them to its generator.
	RatchetKeys      []string `json:"ratchet_private_keys"`
	SignedPreKeyPriv string   `json:"signed_pre_key_private,omitempty"`
	SignedPreKeyPub  string   `json:"signed_pre_key_public,omitempty"`
	SignedPreKeySig  string   `json:"signed_pre_key_signature,omitempty"`
	OneTimePreKeyID  *uint32  `json:"one_time_pre_key_id,omitempty"`
	OneTimePreKey    string   `json:"one_time_pre_key_private,omitempty"`
	OneTimePreKeyPub string   `json:"one_time_pre_key_public,omitempty"`
}

// X3DHVector is the agreement's result.
type X3DHVector struct {
	EphemeralPublic string `json:"ephemeral_public"`
	SharedSecret    string `json:"shared_secret"`
	AD              string `json:"associated_data"`
}

// FrameVector is one message on the wire and its plaintext.
type FrameVector struct {
	Direction string          `json:"direction"`
	Plaintext string          `json:"plaintext"`
	Frame     json.RawMessage `json:"frame"`
}

type stream struct{ c *chacha20.Cipher }

func (s stream) Read(p []byte) (int, error) {
	clear(p)
	s.c.XORKeyStream(p, p)
	return len(p), nil
}

// recorder notes every 32-byte read (key generation; nonces are 12).
type recorder struct {
	r    io.Reader
	keys *[]string
}

func (r recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if len(p) == 32 {
		*r.keys = append(*r.keys, hex.EncodeToString(p))
	}
	return n, err
}

// keyFeed yields recorded keys in order: a replaying party's randomness.
func keyFeed(t *testing.T, keys []string) io.Reader {
	var b []byte
	for _, k := range keys {
		kb, err := hex.DecodeString(k)
		must(t, err)
		b = append(b, kb...)
	}
	return bytes.NewReader(b)
}

func newStream(label string) io.Reader {
	key := sha256.Sum256([]byte(label))
	c, _ := chacha20.NewUnauthenticatedCipher(key[:], make([]byte, chacha20.NonceSize))
	return stream{c}
}

func generate(t *testing.T) *Vectors {
	setup := newStream(vectorLabel + "/setup")
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	alice, err := identity.New(setup)
	if err != nil {
		t.Fatal(err)
	}
	bob, _ := identity.New(setup)
	keys, err := x3dh.NewKeys(setup, bob, now)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := keys.MarshalJSON()
	var kj struct {
		SPKs []struct {
			Private string `json:"private_key"`
		} `json:"signed_pre_keys"`
		OPKs map[uint32]string `json:"one_time_pre_keys"`
	}
	json.Unmarshal(raw, &kj)
	spk := keys.SignedPreKey()
	opk := keys.OneTimePreKeys()[0]
	b := x3dh.Bundle{IdentityKey: bob.X25519().PublicKey().Bytes(), IdentityKeyEd: bob.PublicKey(), SignedPreKey: spk, OneTimePreKey: &opk}

	var aliceKeys, bobKeys []string
	aliceRNG := recorder{newStream(vectorLabel + "/alice"), &aliceKeys}
	bobRNG := recorder{newStream(vectorLabel + "/bob"), &bobKeys}
	sa, err := Initiate(aliceRNG, alice, bob.DID(), b)
	if err != nil {
		t.Fatal(err)
	}
	v := &Vectors{
		Comment: "AgentMesh Wire Protocol 1.0 test vectors published by kars; see internal/mesh/session/vectors_test.go for the generator",
		Label:   vectorLabel,
		Alice:   party(alice),
		Bob:     party(bob),
	}
	v.Bob.SignedPreKeyPriv = kj.SPKs[0].Private
	v.Bob.SignedPreKeyPub = hex.EncodeToString(spk.PublicKey)
	v.Bob.SignedPreKeySig = hex.EncodeToString(spk.Signature)
	v.Bob.OneTimePreKeyID = &opk.ID
	v.Bob.OneTimePreKey = kj.OPKs[opk.ID]
	v.Bob.OneTimePreKeyPub = hex.EncodeToString(opk.PublicKey)
	ek, _ := wire.DecodeB64(sa.init.EphemeralKey)
	v.X3DH = X3DHVector{EphemeralPublic: hex.EncodeToString(ek), AD: hex.EncodeToString(sa.ad)}

	var sb *Session
	id := 0
	send := func(from *Session, dir, text string) {
		id++
		f, err := from.Seal([]byte(text), fmt.Sprintf("00000000-0000-4000-8000-%012d", id), now.Add(time.Duration(id)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		j, _ := f.Marshal()
		v.Frames = append(v.Frames, FrameVector{Direction: dir, Plaintext: text, Frame: j})
		// Deliver, so the conversation advances as it would live.
		pf, err := wire.Parse(j)
		if err != nil {
			t.Fatal(err)
		}
		if sb == nil {
			var pt []byte
			sb, pt, err = Accept(bobRNG, keys, pf, alice.PublicKey())
			if err != nil || string(pt) != text {
				t.Fatalf("accept: %v", err)
			}
			return
		}
		to := sb
		if from == sb {
			to = sa
		}
		if pt, err := to.Open(pf); err != nil || string(pt) != text {
			t.Fatalf("open %q: %v", text, err)
		}
	}
	send(sa, "alice->bob", "hello bob")
	send(sa, "alice->bob", "second message in alice's first chain")
	send(sb, "bob->alice", "hello alice")
	send(sa, "alice->bob", "after one DH ratchet step")
	send(sb, "bob->alice", "")
	send(sb, "bob->alice", "caf\u00e9 \u2713 \U0001F512")
	// Recover the shared secret the way the responder computes it, for
	// the file (the initiator zeroed its copy).
	cs, _ := x3dhCandidatesFor(t, v)
	v.X3DH.SharedSecret = hex.EncodeToString(cs)
	v.Alice.RatchetKeys = aliceKeys[1:] // [0] is the X3DH ephemeral key
	v.Bob.RatchetKeys = bobKeys
	return v
}

func party(id *identity.Identity) PartyVector {
	return PartyVector{
		Ed25519Seed:   hex.EncodeToString(id.Seed()),
		Ed25519Public: hex.EncodeToString(id.PublicKey()),
		X25519Private: hex.EncodeToString(id.X25519().Bytes()),
		X25519Public:  hex.EncodeToString(id.X25519().PublicKey().Bytes()),
		DIDMesh:       id.DID(),
		DIDAgentMesh:  identity.AgentMeshDID(id.PublicKey()),
		RatchetKeys:   []string{},
	}
}

// x3dhCandidatesFor recomputes SK from the recorded private keys only:
// DH1..DH4 by hand, then the KDF, independent of x3dh.Keys.
func x3dhCandidatesFor(t *testing.T, v *Vectors) ([]byte, error) {
	x := ecdh.X25519()
	h := func(s string) []byte { b, _ := hex.DecodeString(s); return b }
	priv := func(s string) *ecdh.PrivateKey { k, err := x.NewPrivateKey(h(s)); must(t, err); return k }
	pub := func(s string) *ecdh.PublicKey { k, err := x.NewPublicKey(h(s)); must(t, err); return k }
	bobIK, spk, opk := priv(v.Bob.X25519Private), priv(v.Bob.SignedPreKeyPriv), priv(v.Bob.OneTimePreKey)
	aliceIK, ek := pub(v.Alice.X25519Public), pub(v.X3DH.EphemeralPublic)
	km := bytes.Repeat([]byte{0xff}, 32)
	for _, p := range []struct {
		a *ecdh.PrivateKey
		b *ecdh.PublicKey
	}{{spk, aliceIK}, {bobIK, ek}, {spk, ek}, {opk, ek}} {
		o, err := p.a.ECDH(p.b)
		must(t, err)
		km = append(km, o...)
	}
	return hkdfSK(km), nil
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestVectors(t *testing.T) {
	v := generate(t)
	got, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	const path = "testdata/vectors-v1.json"
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("regenerated vectors differ from %s: the protocol's output changed", path)
	}

	// Replay the file through a responder rebuilt from its keys alone.
	var fv Vectors
	must(t, json.Unmarshal(want, &fv))
	h := func(s string) []byte { b, _ := hex.DecodeString(s); return b }
	alice, _ := identity.FromSeed(h(fv.Alice.Ed25519Seed))
	bob, _ := identity.FromSeed(h(fv.Bob.Ed25519Seed))
	if hex.EncodeToString(alice.X25519().Bytes()) != fv.Alice.X25519Private || alice.DID() != fv.Alice.DIDMesh {
		t.Fatal("identity derivation differs from the file")
	}
	keys := keysFromVector(t, bob, fv)
	// Alice is rebuilt from SK and bob's signed prekey, her ratchet keys
	// fed from the file; bob from his prekeys and his ratchet keys.
	spkPub, err := ecdh.X25519().NewPublicKey(h(fv.Bob.SignedPreKeyPub))
	must(t, err)
	ra, err := ratchet.InitSender(keyFeed(t, fv.Alice.RatchetKeys), h(fv.X3DH.SharedSecret), spkPub)
	must(t, err)
	sa := &Session{self: alice.DID(), peer: bob.DID(), ad: h(fv.X3DH.AD), r: ra}
	bobFeed := keyFeed(t, fv.Bob.RatchetKeys)
	var sb *Session
	for i, fr := range fv.Frames {
		f, err := wire.Parse(fr.Frame)
		must(t, err)
		var pt []byte
		switch {
		case fr.Direction == "bob->alice":
			pt, err = sa.Open(f)
		case sb == nil:
			sb, pt, err = Accept(bobFeed, keys, f, alice.PublicKey())
		default:
			pt, err = sb.Open(f)
		}
		if err != nil || string(pt) != fr.Plaintext {
			t.Fatalf("frame %d (%s): %q, %v", i, fr.Direction, pt, err)
		}
		if i == 0 && hex.EncodeToString(sb.ad) != fv.X3DH.AD {
			t.Fatal("AD differs")
		}
	}
}

// keysFromVector builds bob's prekey store holding exactly the recorded
// signed and one-time prekeys.
func keysFromVector(t *testing.T, bob *identity.Identity, v Vectors) *x3dh.Keys {
	j, _ := json.Marshal(map[string]any{
		"signed_pre_keys":          []map[string]any{{"key_id": 0, "private_key": v.Bob.SignedPreKeyPriv, "signature": v.Bob.SignedPreKeySig, "created": "2026-12-01T12:00:00Z"}},
		"one_time_pre_keys":        map[string]string{fmt.Sprint(*v.Bob.OneTimePreKeyID): v.Bob.OneTimePreKey},
		"next_signed_pre_key_id":   1,
		"next_one_time_pre_key_id": *v.Bob.OneTimePreKeyID + 1,
	})
	k, err := x3dh.RestoreKeys(bob, j)
	must(t, err)
	return k
}
