package routerconfig

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// Canonical returns the canonical encoding of c: encoding/json's output for
// the struct (fixed field order, omitted empty fields) with the opaque
// governance policy compacted. The controller and the router both hash this
// encoding, so whitespace or field order in the stored file never changes
// the digest.
func Canonical(c *Config) ([]byte, error) {
	cc := *c
	if len(cc.Governance) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, cc.Governance); err != nil {
			return nil, fmt.Errorf("governance policy is not valid JSON: %w", err)
		}
		cc.Governance = buf.Bytes()
	}
	return json.Marshal(&cc)
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
