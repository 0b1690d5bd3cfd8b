package ratchet

import (
	"crypto/ecdh"
	"io"
)

// newKey draws an X25519 private key from rand. crypto/ecdh's
// GenerateKey ignores a caller's reader (Go 1.26 reads the system
// generator unless GODEBUG=cryptocustomrand=1); reading the 32 bytes
// here keeps the reader a caller passes in charge, which is what makes
// the published test vectors reproducible.
func newKey(rand io.Reader) (*ecdh.PrivateKey, error) {
	var b [32]byte
	defer clear(b[:])
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return nil, err
	}
	return ecdh.X25519().NewPrivateKey(b[:])
}
