// Package pairing owns kars's one-time pairing tokens (docs/mesh.md,
// "Pairing"): their format, signature and hash, and the proof a redeemer
// presents. It is pure: no I/O, randomness from the io.Reader given; the
// API-server side of redemption is in redeem.go.
//
// A token is
//
//	azc_pair_v1_<base64url(payload)>.<base64url(Ed25519 signature)>
//
// where payload is the RFC 8785 (JCS) canonical JSON of Payload and the
// signature, by the cluster's pairing key, covers "kars-pair-v1\n"
// followed by the payload bytes. Only "sha256:" + hex(SHA-256(token)) is
// stored (KarsPairing spec.tokenHash), so a leaked KarsPairing cannot be
// redeemed; the nonce makes every token unique.
package pairing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/strictjson"
)

// Prefix starts every token.
const Prefix = "azc_pair_v1_"

// signingContext separates pairing signatures from every other use of
// the key.
const signingContext = "kars-pair-v1\n"

// MaxTokenLen bounds a token a parser accepts.
const MaxTokenLen = 4096

// Payload is what a token carries.
type Payload struct {
	V int `json:"v"`
	// Name is the pairing's (and so the peer's) name.
	Name string `json:"name"`
	// Nonce is 16 random bytes, base64url: it makes the token unique.
	Nonce string `json:"nonce"`
	// KeyID names the pairing key (KeyID of its public half).
	KeyID string `json:"kid"`
	// Sandbox is the issuing sandbox ("namespace/name") and Issuer its
	// router's mesh DID, when the pairing is with a sandbox.
	Sandbox string `json:"sandbox,omitempty"`
	Issuer  string `json:"issuer,omitempty"`
	// Registry and Relay are where the redeemer finds the issuer.
	Registry string `json:"registry"`
	Relay    string `json:"relay"`
	// Slots bounds concurrent offload sandboxes.
	Slots int `json:"slots"`
	// Exp is when the token (and the pairing) expires, Unix seconds.
	Exp int64 `json:"exp"`
	// Capabilities granted (offload, handoff).
	Capabilities []string `json:"capabilities"`
	// TokenBudget bounds inference tokens spent for the peer (0: none
	// beyond the sandbox's own budget).
	TokenBudget int64 `json:"token_budget,omitempty"`
}

// Errors a parser or verifier returns.
var (
	ErrMalformed = errors.New("pairing: malformed token")
	ErrSignature = errors.New("pairing: token signature does not verify")
	ErrExpired   = errors.New("pairing: token expired")
)

// KeyID names an Ed25519 public key: the first 16 hex digits of its
// SHA-256.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// Hash is the value stored in KarsPairing spec.tokenHash.
func Hash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// HashLabel is the label value that finds a KarsPairing by its token
// hash (a label holds at most 63 characters; 40 hex digits are 160 bits,
// and the full hash in the spec is compared after the lookup).
func HashLabel(hash string) string {
	return strings.TrimPrefix(hash, "sha256:")[:40]
}

// LabelTokenHash is the label carrying HashLabel.
const LabelTokenHash = "kars.io/token-hash"

// Mint fills p's version, nonce and key id and returns the signed token.
func Mint(rand io.Reader, key ed25519.PrivateKey, p Payload) (string, error) {
	var nonce [16]byte
	if _, err := io.ReadFull(rand, nonce[:]); err != nil {
		return "", err
	}
	p.V, p.Nonce, p.KeyID = 1, wire.B64(nonce[:]), KeyID(key.Public().(ed25519.PublicKey))
	if err := p.validate(); err != nil {
		return "", err
	}
	raw, err := json.Marshal(p)
	if err != nil {
		return "", err
	}
	canon, err := wire.SigningBytes(raw)
	if err != nil {
		return "", err
	}
	sig := ed25519.Sign(key, append([]byte(signingContext), canon...))
	return Prefix + wire.B64(canon) + "." + wire.B64(sig), nil
}

func (p *Payload) validate() error {
	switch {
	case p.V != 1:
		return fmt.Errorf("%w: version %d", ErrMalformed, p.V)
	case p.Name == "" || len(p.Name) > 128:
		return fmt.Errorf("%w: name must be 1 to 128 characters", ErrMalformed)
	case len(p.Nonce) != 22:
		return fmt.Errorf("%w: nonce", ErrMalformed)
	case p.Registry == "" || p.Relay == "":
		return fmt.Errorf("%w: registry and relay are required", ErrMalformed)
	case p.Slots < 1 || p.Slots > 100:
		return fmt.Errorf("%w: slots must be 1 to 100", ErrMalformed)
	case p.Exp <= 0:
		return fmt.Errorf("%w: an expiry is required", ErrMalformed)
	case len(p.Capabilities) == 0 || len(p.Capabilities) > 2:
		return fmt.Errorf("%w: one or two capabilities", ErrMalformed)
	case p.TokenBudget < 0:
		return fmt.Errorf("%w: negative token budget", ErrMalformed)
	}
	for _, c := range p.Capabilities {
		if c != "offload" && c != "handoff" {
			return fmt.Errorf("%w: capability %q is not offload or handoff", ErrMalformed, c)
		}
	}
	return nil
}

// Parse decodes a token without checking its signature: what a redeemer
// does with a token it received over a secure channel, to learn where to
// redeem it. The payload must be in canonical form, so one token has one
// spelling.
func Parse(token string) (*Payload, error) {
	p, _, _, err := split(token)
	return p, err
}

func split(token string) (*Payload, []byte, []byte, error) {
	token = strings.TrimSpace(token)
	if len(token) > MaxTokenLen {
		return nil, nil, nil, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxTokenLen)
	}
	rest, ok := strings.CutPrefix(token, Prefix)
	if !ok {
		return nil, nil, nil, fmt.Errorf("%w: it does not start with %s", ErrMalformed, Prefix)
	}
	body, sigText, ok := strings.Cut(rest, ".")
	if !ok {
		return nil, nil, nil, fmt.Errorf("%w: no signature", ErrMalformed)
	}
	raw, err1 := base64.RawURLEncoding.Strict().DecodeString(body)
	sig, err2 := base64.RawURLEncoding.Strict().DecodeString(sigText)
	if err1 != nil || err2 != nil || len(sig) != ed25519.SignatureSize {
		return nil, nil, nil, fmt.Errorf("%w: bad base64url", ErrMalformed)
	}
	if err := strictjson.Validate(raw); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	canon, err := wire.SigningBytes(raw)
	if err != nil || !bytes.Equal(canon, raw) {
		return nil, nil, nil, fmt.Errorf("%w: the payload is not in canonical form", ErrMalformed)
	}
	var p Payload
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := p.validate(); err != nil {
		return nil, nil, nil, err
	}
	return &p, raw, sig, nil
}

// Verify parses token and checks its signature under pub and its expiry
// against now.
func Verify(token string, pub ed25519.PublicKey, now time.Time) (*Payload, error) {
	p, raw, sig, err := split(token)
	if err != nil {
		return nil, err
	}
	if p.KeyID != KeyID(pub) || !ed25519.Verify(pub, append([]byte(signingContext), raw...), sig) {
		return nil, ErrSignature
	}
	if !now.Before(time.Unix(p.Exp, 0)) {
		return nil, ErrExpired
	}
	return p, nil
}

// ExpiresAt is the payload's expiry as a time.
func (p *Payload) ExpiresAt() time.Time { return time.Unix(p.Exp, 0).UTC() }
