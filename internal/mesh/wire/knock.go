package wire

import (
	"crypto/ed25519"
	"errors"
	"unicode/utf8"
)

// Intent is what a KNOCK asks for (§10.1).
type Intent struct {
	Action               string   `json:"action"`
	Description          string   `json:"description,omitempty"`
	CapabilitiesRequired []string `json:"capabilities_required,omitempty"`
	TrustMinimum         int      `json:"trust_minimum,omitempty"`
}

// Conditions are what a knock_accept grants (§10.2).
type Conditions struct {
	MaxMessages    int      `json:"max_messages,omitempty"`
	TTLSeconds     int      `json:"ttl_seconds,omitempty"`
	AllowedActions []string `json:"allowed_actions,omitempty"`
}

const (
	maxTextLen = 4096
	maxListLen = 64
)

func (i *Intent) validate() error {
	if i.Action == "" || len(i.Action) > 256 || !utf8.ValidString(i.Action) {
		return bad("intent action must be 1–256 bytes of UTF-8")
	}
	if len(i.Description) > maxTextLen || !utf8.ValidString(i.Description) {
		return bad("intent description must be at most %d bytes of UTF-8", maxTextLen)
	}
	if len(i.CapabilitiesRequired) > maxListLen {
		return bad("intent lists more than %d capabilities", maxListLen)
	}
	if i.TrustMinimum < 0 || i.TrustMinimum > 1000 {
		return bad("intent trust_minimum %d is outside 0–1000", i.TrustMinimum)
	}
	return nil
}

func (c *Conditions) validate() error {
	if c.MaxMessages < 0 || c.TTLSeconds < 0 {
		return bad("conditions max_messages and ttl_seconds must not be negative")
	}
	if len(c.AllowedActions) > maxListLen {
		return bad("conditions list more than %d actions", maxListLen)
	}
	return nil
}

// ErrSignature reports a KNOCK-family frame whose signature is missing
// or does not verify.
var ErrSignature = errors.New("wire: frame signature does not verify")

// SignFrame sets f.Signature to an Ed25519 signature over the RFC 8785
// canonical JSON of f without its signature. §10 says the knock
// signature covers the "canonical intent"; signing the whole frame also
// binds from, to, id, ts and knock_id, so a KNOCK cannot be replayed to
// another agent or an accept re-pointed at another knock.
func SignFrame(f *Frame, priv ed25519.PrivateKey) error {
	f.Signature = ""
	raw, err := f.Marshal()
	if err != nil {
		return err
	}
	msg, err := SigningBytes(raw)
	if err != nil {
		return err
	}
	f.Signature = B64(ed25519.Sign(priv, msg))
	return nil
}

// VerifyFrame checks the signature of a frame as received (raw bytes,
// so fields this package does not know are covered too) against pub.
func VerifyFrame(raw []byte, pub ed25519.PublicKey) error {
	sigText, msg, err := splitSignature(raw)
	if err != nil {
		return err
	}
	sig, err := DecodeB64(sigText)
	if err != nil || len(sig) != ed25519.SignatureSize || len(pub) != ed25519.PublicKeySize {
		return ErrSignature
	}
	if !ed25519.Verify(pub, msg, sig) {
		return ErrSignature
	}
	return nil
}
