package session

import (
	"crypto/hkdf"
	"crypto/sha256"
)

// hkdfSK is the X3DH KDF written out from §5.2 of the wire spec, apart
// from the x3dh package's, so the vectors check one against the other.
func hkdfSK(ikm []byte) []byte {
	k, _ := hkdf.Key(sha256.New, ikm, make([]byte, 32), "AgentMesh_X3DH_v1", 32)
	return k
}
