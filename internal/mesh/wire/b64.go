package wire

import (
	"encoding/base64"
	"errors"
	"strings"
)

// B64 encodes b as unpadded base64url, the spec's encoding for keys,
// signatures and ciphertext (AgentMesh §6.1, §9.3).
func B64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// B64Std encodes b as padded standard base64, what the toolkit's relay
// decodes in a connect frame's public_key and signature.
func B64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

var errB64 = errors.New("not base64 or base64url")

// DecodeB64 accepts base64url or standard base64, padded or not: the
// spec says base64url, the toolkit's relay sends standard base64 in
// connect frames, and its registry decodes with padding appended.
func DecodeB64(s string) ([]byte, error) {
	if strings.ContainsAny(s, "+/") {
		if strings.ContainsAny(s, "-_") {
			return nil, errB64
		}
		if strings.HasSuffix(s, "=") {
			return base64.StdEncoding.Strict().DecodeString(s)
		}
		return base64.RawStdEncoding.Strict().DecodeString(s)
	}
	if strings.HasSuffix(s, "=") {
		return base64.URLEncoding.Strict().DecodeString(s)
	}
	return base64.RawURLEncoding.Strict().DecodeString(s)
}

// decodeKey decodes a 32-byte key.
func decodeFixed(s string, n int) ([]byte, bool) {
	b, err := DecodeB64(s)
	if err != nil || len(b) != n {
		return nil, false
	}
	return b, true
}
