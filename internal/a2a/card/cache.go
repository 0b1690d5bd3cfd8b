package card

import (
	"crypto/sha256"
	"sync"
)

// CachedVerifier verifies cards whose keys are in their protected headers
// (FromJWK) and remembers the ones that verified, by the SHA-256 of their
// exact bytes: a caller sends the same card with every call, and checking
// its signature again (canonicalisation and a signature check, ~0.3 ms)
// would be most of the front edge's cost. Failures are not remembered.
// The zero value is ready to use; it is safe for concurrent use.
type CachedVerifier struct {
	mu   sync.Mutex
	seen map[[sha256.Size]byte]Verified
}

// cachedCards bounds the cache; past it, the cache starts over.
const cachedCards = 4096

// Verify is VerifyCard(raw, FromJWK), remembered.
func (c *CachedVerifier) Verify(raw []byte) (Verified, error) {
	sum := sha256.Sum256(raw)
	c.mu.Lock()
	v, ok := c.seen[sum]
	c.mu.Unlock()
	if ok {
		return v, nil
	}
	v, err := VerifyCard(raw, FromJWK)
	if err != nil {
		return v, err
	}
	c.mu.Lock()
	if c.seen == nil || len(c.seen) >= cachedCards {
		c.seen = map[[sha256.Size]byte]Verified{}
	}
	c.seen[sum] = v
	c.mu.Unlock()
	return v, nil
}
