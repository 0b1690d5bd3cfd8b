package card

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// JWK is a public JSON Web Key (RFC 7517) of one of the two key types
// kars accepts for card signatures: Ed25519 (RFC 8037, "OKP") and P-256
// (RFC 7518 §6.2, "EC"). A private member ("d") is never accepted.
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y,omitempty"`
	Kid string `json:"kid,omitempty"`
	Alg string `json:"alg,omitempty"`
	Use string `json:"use,omitempty"`
}

// ThumbprintPrefix starts every thumbprint kars prints or compares.
const ThumbprintPrefix = "sha256:"

// JWKFor returns the public JWK of an Ed25519 or P-256 key.
func JWKFor(pub crypto.PublicKey) (JWK, error) {
	b64 := base64.RawURLEncoding.EncodeToString
	switch k := pub.(type) {
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return JWK{}, errors.New("jwk: Ed25519 public key of the wrong size")
		}
		return JWK{Kty: "OKP", Crv: "Ed25519", X: b64(k)}, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return JWK{}, errors.New("jwk: only P-256 EC keys are accepted")
		}
		raw, err := k.Bytes() // 0x04 || X || Y
		if err != nil {
			return JWK{}, fmt.Errorf("jwk: %w", err)
		}
		return JWK{Kty: "EC", Crv: "P-256", X: b64(raw[1:33]), Y: b64(raw[33:])}, nil
	}
	return JWK{}, fmt.Errorf("jwk: unsupported key type %T (want Ed25519 or ECDSA P-256)", pub)
}

// PublicKey returns the key the JWK describes, after checking it is a
// well-formed Ed25519 key or a point on P-256.
func (j JWK) PublicKey() (crypto.PublicKey, error) {
	dec := func(name, s string, n int) ([]byte, error) {
		b, err := decodeB64URL(s)
		if err != nil || len(b) != n {
			return nil, fmt.Errorf("jwk: %q must be %d bytes in unpadded base64url", name, n)
		}
		return b, nil
	}
	switch {
	case j.Kty == "OKP" && j.Crv == "Ed25519":
		if j.Y != "" {
			return nil, errors.New(`jwk: an OKP key has no "y"`)
		}
		x, err := dec("x", j.X, ed25519.PublicKeySize)
		if err != nil {
			return nil, err
		}
		return ed25519.PublicKey(x), nil
	case j.Kty == "EC" && j.Crv == "P-256":
		x, err := dec("x", j.X, 32)
		if err != nil {
			return nil, err
		}
		y, err := dec("y", j.Y, 32)
		if err != nil {
			return nil, err
		}
		k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return nil, fmt.Errorf("jwk: not a point on P-256: %w", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("jwk: unsupported key %s/%s (want OKP/Ed25519 or EC/P-256)", j.Kty, j.Crv)
}

// Thumbprint is the key's RFC 7638 thumbprint as kars writes it: "sha256:"
// and the hex SHA-256 of the JWK's required members in lexicographic order
// without whitespace (§3.2; RFC 8037 §2 names OKP's members crv, kty, x).
func (j JWK) Thumbprint() (string, error) {
	if _, err := j.PublicKey(); err != nil {
		return "", err
	}
	var members any
	if j.Kty == "OKP" {
		members = struct {
			Crv string `json:"crv"`
			Kty string `json:"kty"`
			X   string `json:"x"`
		}{j.Crv, j.Kty, j.X}
	} else {
		members = struct {
			Crv string `json:"crv"`
			Kty string `json:"kty"`
			X   string `json:"x"`
			Y   string `json:"y"`
		}{j.Crv, j.Kty, j.X, j.Y}
	}
	// encoding/json keeps struct field order and escapes nothing in these
	// base64url and ASCII values, so this is the RFC 7638 form.
	b, err := json.Marshal(members)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return ThumbprintPrefix + hex.EncodeToString(sum[:]), nil
}

// KeyThumbprint is the RFC 7638 thumbprint of an Ed25519 or P-256 public
// key, for example of a TLS client certificate's key.
func KeyThumbprint(pub crypto.PublicKey) (string, error) {
	j, err := JWKFor(pub)
	if err != nil {
		return "", err
	}
	return j.Thumbprint()
}

// JWKS is a JSON Web Key Set (RFC 7517 §5).
type JWKS struct {
	Keys []JWK `json:"keys"`
}

// decodeB64URL decodes unpadded base64url (RFC 7515 §2) and nothing else:
// no padding, no line breaks (which Go's decoder would skip), zero trailing
// bits — so that one value has exactly one spelling.
func decodeB64URL(s string) ([]byte, error) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return nil, fmt.Errorf("not unpadded base64url: byte %d is %q", i, c)
		}
	}
	return base64.RawURLEncoding.Strict().DecodeString(s)
}
