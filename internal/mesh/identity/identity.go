// Package identity owns an AgentMesh agent's long-term identity: its
// Ed25519 signing key, the X25519 key derived from it for X3DH, and the
// DID that names it (AgentMesh Wire Protocol 1.0 §4).
//
// It is pure: no I/O beyond reading randomness from the io.Reader a
// caller passes. It must not import anything under internal/ outside
// internal/mesh.
package identity

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"filippo.io/edwards25519"
)

// DID prefixes. The wire spec (§4.1) names agents did:agentmesh:<base58
// fingerprint>; the toolkit's Python registry and relay (5.0.0) derive
// and check did:mesh:<hex>. §4.2 keeps both valid; we accept both and
// mint did:mesh: by default because the shipping relay refuses anything
// else in its connect proof.
const (
	PrefixMesh      = "did:mesh:"
	PrefixAgentMesh = "did:agentmesh:"
)

// Identity is an agent's long-term key pair. The zero value is not
// usable; build one with New or FromSeed.
type Identity struct {
	priv ed25519.PrivateKey
	x    *ecdh.PrivateKey
}

// New draws a fresh Ed25519 identity from rand.
func New(rand io.Reader) (*Identity, error) {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := io.ReadFull(rand, seed); err != nil {
		return nil, fmt.Errorf("identity: reading randomness: %w", err)
	}
	defer clear(seed)
	return FromSeed(seed)
}

// FromSeed rebuilds an identity from its 32-byte Ed25519 seed.
func FromSeed(seed []byte) (*Identity, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("identity: seed is %d bytes, want %d", len(seed), ed25519.SeedSize)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	// §4.4: the X25519 identity key is the Ed25519 key under the RFC 7748
	// §4.1 birational map. For the private half that is the clamped
	// SHA-512(seed)[:32] scalar RFC 8032 §5.1.5 already uses, which is
	// what libsodium's crypto_sign_ed25519_sk_to_curve25519 returns.
	h := sha512.Sum512(seed)
	defer clear(h[:])
	scalar := h[:32]
	scalar[0] &= 248
	scalar[31] &= 127
	scalar[31] |= 64
	x, err := ecdh.X25519().NewPrivateKey(scalar)
	if err != nil {
		return nil, fmt.Errorf("identity: deriving X25519 key: %w", err)
	}
	return &Identity{priv: priv, x: x}, nil
}

// Seed returns the 32-byte Ed25519 seed, the one secret to persist.
func (id *Identity) Seed() []byte { return id.priv.Seed() }

// PublicKey returns the Ed25519 public key.
func (id *Identity) PublicKey() ed25519.PublicKey {
	return id.priv.Public().(ed25519.PublicKey)
}

// X25519 returns the X25519 identity key pair used in X3DH (IK).
func (id *Identity) X25519() *ecdh.PrivateKey { return id.x }

// Sign signs msg with the Ed25519 key (RFC 8032 §5.1.6).
func (id *Identity) Sign(msg []byte) []byte { return ed25519.Sign(id.priv, msg) }

// DID returns the identity's did:mesh: name.
func (id *Identity) DID() string { return MeshDID(id.PublicKey()) }

// MeshDID is the toolkit implementation's DID: "did:mesh:" followed by
// the first 32 hex digits of SHA-256(public key).
func MeshDID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return PrefixMesh + hex.EncodeToString(sum[:])[:32]
}

// AgentMeshDID is the wire spec's DID (§4.1): "did:agentmesh:" followed
// by base58btc(SHA-256(public key)[0:20]).
func AgentMeshDID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return PrefixAgentMesh + base58(sum[:20])
}

// ErrDIDMismatch reports a DID that does not name the presented key.
var ErrDIDMismatch = errors.New("identity: DID does not match public key")

// CheckDID verifies that did names pub under either DID form. DIDs are
// public, so a plain comparison leaks nothing secret.
func CheckDID(did string, pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("identity: public key is %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	switch {
	case strings.HasPrefix(did, PrefixMesh):
		if did == MeshDID(pub) {
			return nil
		}
	case strings.HasPrefix(did, PrefixAgentMesh):
		if did == AgentMeshDID(pub) {
			return nil
		}
	default:
		return fmt.Errorf("identity: %q is neither a did:mesh: nor a did:agentmesh: DID", did)
	}
	return ErrDIDMismatch
}

// ValidDID reports whether did has one of the two shapes (without a key
// to check it against): a bound on what a server accepts as a name.
func ValidDID(did string) bool {
	switch {
	case strings.HasPrefix(did, PrefixMesh):
		rest := did[len(PrefixMesh):]
		if len(rest) != 32 {
			return false
		}
		_, err := hex.DecodeString(rest)
		return err == nil && strings.ToLower(rest) == rest
	case strings.HasPrefix(did, PrefixAgentMesh):
		rest := did[len(PrefixAgentMesh):]
		if len(rest) < 20 || len(rest) > 30 {
			return false
		}
		for i := 0; i < len(rest); i++ {
			if strings.IndexByte(base58Alphabet, rest[i]) < 0 {
				return false
			}
		}
		return true
	}
	return false
}

// X25519FromEd25519 maps an Ed25519 public key to its X25519 public key
// (RFC 7748 §4.1: u = (1+y)/(1-y)). It refuses encodings that are not a
// point on the curve, so a peer cannot pair a signing key with an
// unrelated DH key.
func X25519FromEd25519(pub ed25519.PublicKey) (*ecdh.PublicKey, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("identity: Ed25519 key is %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	p, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		return nil, fmt.Errorf("identity: Ed25519 key is not a curve point: %w", err)
	}
	// A small-order point maps to a key every DH with which is
	// predictable; libsodium refuses these too.
	if new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1 {
		return nil, fmt.Errorf("identity: Ed25519 key is a small-order point")
	}
	x, err := ecdh.X25519().NewPublicKey(p.BytesMontgomery())
	if err != nil {
		return nil, fmt.Errorf("identity: mapping Ed25519 key to X25519: %w", err)
	}
	return x, nil
}

const base58Alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

// base58 encodes b in the Bitcoin alphabet (leading zero bytes become
// '1'), as §4.1 specifies for did:agentmesh: fingerprints.
func base58(b []byte) string {
	zeros := 0
	for zeros < len(b) && b[zeros] == 0 {
		zeros++
	}
	// Each byte needs log(256)/log(58) ≈ 1.37 base-58 digits.
	digits := make([]byte, 0, len(b)*138/100+1)
	for _, c := range b[zeros:] {
		carry := int(c)
		for i := range digits {
			carry += int(digits[i]) << 8
			digits[i] = byte(carry % 58)
			carry /= 58
		}
		for carry > 0 {
			digits = append(digits, byte(carry%58))
			carry /= 58
		}
	}
	out := make([]byte, zeros+len(digits))
	for i := range zeros {
		out[i] = '1'
	}
	for i, d := range digits {
		out[len(out)-1-i] = base58Alphabet[d]
	}
	return string(out)
}
