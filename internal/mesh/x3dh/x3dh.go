// Package x3dh is the X3DH key agreement (Signal, "The X3DH Key
// Agreement Protocol", rev. 1, 2016) with the AgentMesh Wire Protocol
// 1.0 §7 parameters: curve X25519, hash SHA-256, info
// "AgentMesh_X3DH_v1", and the X25519 identity key derived from the
// agent's Ed25519 key (§4.4) instead of XEdDSA. Signed prekeys are
// signed with plain Ed25519 over their 32-byte public key.
//
// It is pure: randomness comes from the io.Reader a caller passes and
// there is no other I/O.
package x3dh

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"

	"github.com/kars-io/kars/internal/mesh/identity"
)

const info = "AgentMesh_X3DH_v1"

// KeySize is the size of every X25519 key and of the shared secret.
const KeySize = 32

// SignedPreKeyPublic is the public part of a signed prekey as a bundle
// carries it.
type SignedPreKeyPublic struct {
	ID        uint32
	PublicKey []byte // 32-byte X25519 key
	Signature []byte // Ed25519 over PublicKey by the identity key
}

// OneTimePreKeyPublic is a published one-time prekey.
type OneTimePreKeyPublic struct {
	ID        uint32
	PublicKey []byte
}

// Bundle is a responder's prekey bundle (X3DH §3.2, AgentMesh §6.1 and
// §11.3) as an initiator fetched it. IdentityKeyEd is the Ed25519 key
// that signs the prekey; the toolkit's registry ships it as
// identity_key_ed because the spec's bundle has no key to verify with.
type Bundle struct {
	IdentityKey   []byte // X25519
	IdentityKeyEd ed25519.PublicKey
	SignedPreKey  SignedPreKeyPublic
	OneTimePreKey *OneTimePreKeyPublic
}

// Errors callers can tell apart.
var (
	ErrBadSignature    = errors.New("x3dh: signed prekey signature does not verify")
	ErrIdentityBinding = errors.New("x3dh: X25519 identity key is not the Ed25519 identity key's")
	ErrUnknownPreKey   = errors.New("x3dh: prekey unknown, expired or already used")
)

// Verify checks a bundle before use (X3DH §3.3): the prekey signature
// under IdentityKeyEd, and that IdentityKey is IdentityKeyEd's X25519
// image (§4.4), so a registry cannot splice its own DH key next to a
// genuine signing key.
func (b *Bundle) Verify() error {
	if len(b.IdentityKeyEd) != ed25519.PublicKeySize {
		return fmt.Errorf("x3dh: bundle Ed25519 identity key is %d bytes, want %d", len(b.IdentityKeyEd), ed25519.PublicKeySize)
	}
	for name, k := range map[string][]byte{"identity key": b.IdentityKey, "signed prekey": b.SignedPreKey.PublicKey} {
		if len(k) != KeySize {
			return fmt.Errorf("x3dh: bundle %s is %d bytes, want %d", name, len(k), KeySize)
		}
	}
	if b.OneTimePreKey != nil && len(b.OneTimePreKey.PublicKey) != KeySize {
		return fmt.Errorf("x3dh: bundle one-time prekey is %d bytes, want %d", len(b.OneTimePreKey.PublicKey), KeySize)
	}
	x, err := identity.X25519FromEd25519(b.IdentityKeyEd)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(x.Bytes(), b.IdentityKey) != 1 {
		return ErrIdentityBinding
	}
	if !ed25519.Verify(b.IdentityKeyEd, b.SignedPreKey.PublicKey, b.SignedPreKey.Signature) {
		return ErrBadSignature
	}
	return nil
}

// Initiation is what the initiator learns from X3DH and sends in the
// first message's x3dh field (AgentMesh §9.4).
type Initiation struct {
	SharedSecret []byte // SK, 32 bytes; zero it once the ratchet holds it
	IdentityKey  []byte // initiator's X25519 identity key
	EphemeralKey []byte // EK_A public
	UsedOPK      *uint32
	// AD is IK_A ‖ IK_B (AgentMesh §7.3, X3DH §3.3).
	AD []byte
	// RemoteSignedPreKey is SPK_B, the initiator's first ratchet key.
	RemoteSignedPreKey *ecdh.PublicKey
}

// Initiate runs the initiator's side (X3DH §3.3) against a verified
// bundle.
func Initiate(rand io.Reader, self *identity.Identity, b Bundle) (*Initiation, error) {
	if err := b.Verify(); err != nil {
		return nil, err
	}
	x := ecdh.X25519()
	ikB, err := x.NewPublicKey(b.IdentityKey)
	if err != nil {
		return nil, fmt.Errorf("x3dh: bundle identity key: %w", err)
	}
	spkB, err := x.NewPublicKey(b.SignedPreKey.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("x3dh: bundle signed prekey: %w", err)
	}
	ek, err := newKey(rand)
	if err != nil {
		return nil, fmt.Errorf("x3dh: generating ephemeral key: %w", err)
	}
	// DH1 = DH(IK_A, SPK_B), DH2 = DH(EK_A, IK_B), DH3 = DH(EK_A, SPK_B),
	// DH4 = DH(EK_A, OPK_B) when the bundle has a one-time prekey.
	pairs := []dhPair{{self.X25519(), spkB}, {ek, ikB}, {ek, spkB}}
	var used *uint32
	if b.OneTimePreKey != nil {
		opk, err := x.NewPublicKey(b.OneTimePreKey.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("x3dh: bundle one-time prekey: %w", err)
		}
		pairs = append(pairs, dhPair{ek, opk})
		id := b.OneTimePreKey.ID
		used = &id
	}
	km := make([]byte, 0, KeySize*(1+len(pairs)))
	km = append(km, bytes.Repeat([]byte{0xff}, KeySize)...)
	for _, p := range pairs {
		out, err := p.priv.ECDH(p.pub)
		if err != nil {
			clear(km)
			return nil, fmt.Errorf("x3dh: DH with a low-order key: %w", err)
		}
		km = append(km, out...)
		clear(out)
	}
	sk := kdf(km)
	ikA := self.X25519().PublicKey().Bytes()
	return &Initiation{
		SharedSecret:       sk,
		IdentityKey:        ikA,
		EphemeralKey:       ek.PublicKey().Bytes(),
		UsedOPK:            used,
		AD:                 append(append([]byte{}, ikA...), b.IdentityKey...),
		RemoteSignedPreKey: spkB,
	}, nil
}

// dhPair is one of X3DH's Diffie-Hellman computations.
type dhPair struct {
	priv *ecdh.PrivateKey
	pub  *ecdh.PublicKey
}

// kdf is X3DH §2.2 KDF with the AgentMesh §5.2 parameters: HKDF-SHA256
// with a zero salt of hash length, IKM = F ‖ KM where F is 32 0xFF
// bytes, and info "AgentMesh_X3DH_v1". km already starts with F and is
// zeroed here.
func kdf(km []byte) []byte {
	sk, _ := hkdf.Key(sha256.New, km, make([]byte, sha256.Size), info, KeySize) // never fails for 32 bytes
	clear(km)
	return sk
}
