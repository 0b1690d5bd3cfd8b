package ratchet

import (
	"encoding/binary"
	"fmt"
)

// HeaderSize is the length of a serialized header: dh(32) ‖ u32be(pn) ‖
// u32be(n), the AgentMesh layout the AEAD authenticates.
const HeaderSize = 32 + 4 + 4

// Header travels with every message (Double Ratchet §2.6, §3.2): the
// sender's current ratchet public key, the length of its previous
// sending chain, and the message's number in the current chain.
type Header struct {
	DH [32]byte
	PN uint32
	N  uint32
}

// Bytes serializes h in the AgentMesh layout.
func (h Header) Bytes() []byte {
	b := make([]byte, HeaderSize)
	h.put(b)
	return b
}

func (h Header) put(b []byte) {
	copy(b, h.DH[:])
	binary.BigEndian.PutUint32(b[32:], h.PN)
	binary.BigEndian.PutUint32(b[36:], h.N)
}

// ParseHeader reads a serialized header; anything but exactly
// HeaderSize bytes is refused.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) != HeaderSize {
		return h, fmt.Errorf("ratchet: header is %d bytes, want %d", len(b), HeaderSize)
	}
	copy(h.DH[:], b)
	h.PN = binary.BigEndian.Uint32(b[32:])
	h.N = binary.BigEndian.Uint32(b[36:])
	return h, nil
}

// Message is one encrypted Double Ratchet message: the header and
// nonce(12) ‖ ChaCha20-Poly1305 ciphertext ‖ tag(16).
type Message struct {
	Header     Header
	Ciphertext []byte
}
