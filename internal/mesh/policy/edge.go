package policy

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"time"

	"github.com/kars-io/kars/internal/mesh/wire"
)

// A TrustGraph edge's signature (api/v1alpha1 TrustEdge) is Ed25519, by
// the key its keyID names, over
//
//	"kars-trust-edge-v1\n" ‖ JCS({"domain", "expiresAt", "from", "score", "to"})
//
// where JCS is RFC 8785, domain is the graph's spec.trustDomain (so an
// edge cannot be replayed into another graph), expiresAt is RFC 3339 UTC
// to the second and absent when the edge does not expire, and score is
// an integer. The signature is base64url without padding (86
// characters).
const edgeContext = "kars-trust-edge-v1\n"

type edgeBody struct {
	Domain    string `json:"domain"`
	ExpiresAt string `json:"expiresAt,omitempty"`
	From      string `json:"from"`
	Score     int    `json:"score"`
	To        string `json:"to"`
}

// EdgeSigningBytes returns the bytes an edge's signature covers.
func EdgeSigningBytes(domain, from, to string, score int, expiresAt *time.Time) ([]byte, error) {
	b := edgeBody{Domain: domain, From: from, Score: score, To: to}
	if expiresAt != nil {
		b.ExpiresAt = expiresAt.UTC().Format(time.RFC3339)
	}
	raw, err := json.Marshal(b)
	if err != nil {
		return nil, err
	}
	canon, err := wire.SigningBytes(raw)
	if err != nil {
		return nil, err
	}
	return append([]byte(edgeContext), canon...), nil
}

// SignEdge signs an edge with key and returns the base64url signature.
func SignEdge(key ed25519.PrivateKey, domain, from, to string, score int, expiresAt *time.Time) (string, error) {
	msg, err := EdgeSigningBytes(domain, from, to, score, expiresAt)
	if err != nil {
		return "", err
	}
	return wire.B64(ed25519.Sign(key, msg)), nil
}

// ErrEdgeSignature reports an edge whose signature does not verify.
var ErrEdgeSignature = errors.New("trust edge signature does not verify")

// VerifyEdge checks an edge's signature under pub.
func VerifyEdge(pub ed25519.PublicKey, sig, domain, from, to string, score int, expiresAt *time.Time) error {
	s, err := wire.DecodeB64(sig)
	if err != nil || len(s) != ed25519.SignatureSize || len(pub) != ed25519.PublicKeySize {
		return ErrEdgeSignature
	}
	msg, err := EdgeSigningBytes(domain, from, to, score, expiresAt)
	if err != nil || !ed25519.Verify(pub, msg, s) {
		return ErrEdgeSignature
	}
	return nil
}
