package routerconfig

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
)

// Canonical returns the canonical encoding of c: encoding/json's output for
// the structs (fixed field order, omitted empty fields, sorted map keys). The
// controller and the router both hash this encoding, so whitespace or key
// order in the stored file never changes the digest.
//
// The A2A parts (the a2a section and the peers) are left out: they depend
// on the clock (the exposure window), the gateway's identity and verified
// A2AAgents, which the policy reconcilers that recompute digests do not
// see. Exposure is enforced first by the gateway, whose routing table the
// controller writes directly, and the router checks expiry itself
// (docs/a2a.md).
func Canonical(c *Config) ([]byte, error) {
	if c.A2A != nil || c.A2APeers != nil {
		cc := *c
		cc.A2A, cc.A2APeers = nil, nil
		c = &cc
	}
	return json.Marshal(c)
}

// Digest returns "sha256:<hex>" of the canonical encoding of c. It is the
// value the router reports on its admin API and the controller compares in
// the RouterEnforcing handshake.
func Digest(c *Config) (string, error) {
	b, err := Canonical(c)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}
