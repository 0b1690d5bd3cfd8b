package card

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"

	"github.com/kars-io/kars/internal/strictjson"
)

// Signature is one detached JWS in the flattened JSON serialisation that
// A2A uses for card signatures (RFC 7515 §7.2.2 without
// the payload): the payload is the canonical card, carried by the card
// itself.
type Signature struct {
	// Protected is the base64url of the JWS Protected Header.
	Protected string `json:"protected"`
	// Signature is the base64url of the signature.
	Signature string `json:"signature"`
	// Header holds unprotected header parameters; kars ignores them when
	// verifying (they are not signed).
	Header map[string]any `json:"header,omitempty"`
}

// Header is the JWS Protected Header of a card signature.
type Header struct {
	// Alg is EdDSA (Ed25519, RFC 8037) or ES256 (RFC 7518 §3.4).
	Alg string `json:"alg"`
	// Typ is "JOSE" as A2A recommends.
	Typ string `json:"typ,omitempty"`
	// Kid names the key; kars uses the key's thumbprint.
	Kid string `json:"kid,omitempty"`
	// Jku is a JWK Set URL where the key is published.
	Jku string `json:"jku,omitempty"`
	// JWK is the signing key itself (RFC 7515 §4.1.3). kars signs with it
	// set, so a card verifies on its own and is then pinned by the key's
	// thumbprint.
	JWK *JWK `json:"jwk,omitempty"`
	// Crit lists extensions the verifier must understand; kars
	// understands none, so a signature with crit never verifies
	// (RFC 7515 §4.1.11).
	Crit []string `json:"crit,omitempty"`
}

// MaxProtectedBytes bounds a protected header: it is attacker-supplied and
// parsed before anything is known to be genuine.
const MaxProtectedBytes = 4 << 10

// Sign signs payload with an Ed25519 key, putting hdr (with alg EdDSA and
// the key as jwk) in the protected header.
func Sign(key ed25519.PrivateKey, payload []byte, hdr Header) (Signature, error) {
	protected, err := protect(hdr, "EdDSA", key.Public())
	if err != nil {
		return Signature{}, err
	}
	sig := ed25519.Sign(key, signingInput(protected, payload))
	return Signature{Protected: protected, Signature: base64.RawURLEncoding.EncodeToString(sig)}, nil
}

// SignES256 signs payload with a P-256 key (ES256), for tests and callers
// that hold EC keys.
func SignES256(key *ecdsa.PrivateKey, payload []byte, hdr Header) (Signature, error) {
	protected, err := protect(hdr, "ES256", &key.PublicKey)
	if err != nil {
		return Signature{}, err
	}
	sum := sha256.Sum256(signingInput(protected, payload))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		return Signature{}, err
	}
	raw := make([]byte, 64) // R || S, each 32 bytes big-endian (RFC 7518 §3.4)
	r.FillBytes(raw[:32])
	s.FillBytes(raw[32:])
	return Signature{Protected: protected, Signature: base64.RawURLEncoding.EncodeToString(raw)}, nil
}

// protect completes hdr (alg, the key as jwk, typ JOSE by default) and
// returns it base64url-encoded.
func protect(hdr Header, alg string, pub crypto.PublicKey) (string, error) {
	j, err := JWKFor(pub)
	if err != nil {
		return "", err
	}
	hdr.Alg, hdr.JWK = alg, &j
	if hdr.Typ == "" {
		hdr.Typ = "JOSE"
	}
	ph, err := json.Marshal(hdr)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(ph), nil
}

// signingInput is ASCII(BASE64URL(protected) || '.' || BASE64URL(payload))
// (RFC 7515 §5.1 step 5).
func signingInput(protected string, payload []byte) []byte {
	out := make([]byte, 0, len(protected)+1+base64.RawURLEncoding.EncodedLen(len(payload)))
	out = append(out, protected...)
	out = append(out, '.')
	return base64.RawURLEncoding.AppendEncode(out, payload)
}

// ParseProtected decodes and checks a signature's protected header: strict
// JSON, a supported alg, no crit, and a jwk (when present) that is a
// well-formed public key matching the alg.
func ParseProtected(protected string) (Header, error) {
	var h Header
	if len(protected) > base64.RawURLEncoding.EncodedLen(MaxProtectedBytes) {
		return h, errors.New("jws: protected header too large")
	}
	raw, err := decodeB64URL(protected)
	if err != nil {
		return h, fmt.Errorf("jws: protected header: %w", err)
	}
	if err := strictjson.Validate(raw); err != nil {
		return h, fmt.Errorf("jws: protected header: %w", err)
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return h, fmt.Errorf("jws: protected header: %w", err)
	}
	if h.Crit != nil {
		return h, errors.New(`jws: the protected header names "crit" extensions, which kars does not understand`)
	}
	switch h.Alg {
	case "EdDSA", "ES256":
	default:
		return h, fmt.Errorf("jws: alg %q is not accepted (want EdDSA or ES256)", h.Alg)
	}
	if h.JWK != nil {
		pub, err := h.JWK.PublicKey()
		if err != nil {
			return h, err
		}
		if !algFits(h.Alg, pub) {
			return h, fmt.Errorf("jws: alg %s does not fit the jwk's key type %s", h.Alg, h.JWK.Kty)
		}
	}
	return h, nil
}

func algFits(alg string, pub crypto.PublicKey) bool {
	switch pub.(type) {
	case ed25519.PublicKey:
		return alg == "EdDSA"
	case *ecdsa.PublicKey:
		return alg == "ES256"
	}
	return false
}

// ErrBadSignature is returned when a signature does not verify.
var ErrBadSignature = errors.New("jws: signature does not verify")

// VerifySignature checks sig over payload with pub, which must fit the
// protected header's alg. It returns the parsed header.
func VerifySignature(sig Signature, payload []byte, pub crypto.PublicKey) (Header, error) {
	h, err := ParseProtected(sig.Protected)
	if err != nil {
		return h, err
	}
	if !algFits(h.Alg, pub) {
		return h, fmt.Errorf("jws: alg %s does not fit the verification key %T", h.Alg, pub)
	}
	raw, err := decodeB64URL(sig.Signature)
	if err != nil {
		return h, fmt.Errorf("jws: signature: %w", err)
	}
	in := signingInput(sig.Protected, payload)
	switch k := pub.(type) {
	case ed25519.PublicKey:
		if len(raw) != ed25519.SignatureSize || !ed25519.Verify(k, in, raw) {
			return h, ErrBadSignature
		}
	case *ecdsa.PublicKey:
		if len(raw) != 64 {
			return h, ErrBadSignature
		}
		sum := sha256.Sum256(in)
		r, s := new(big.Int).SetBytes(raw[:32]), new(big.Int).SetBytes(raw[32:])
		if !ecdsa.Verify(k, sum[:], r, s) {
			return h, ErrBadSignature
		}
	}
	return h, nil
}
