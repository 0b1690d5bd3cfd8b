package router

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"net/url"
	"strconv"

	"github.com/kars-io/kars/internal/audit"
)

// AuditHead is what GET /admin/v1/audit/head answers: the last durable
// entry and the key that signs the log's checkpoints. The controller copies
// it into the sandbox's status, outside anything the router's volume holds,
// so that `kars audit verify` can tell a log whose tail was cut (with its
// checkpoints) from a complete one.
type AuditHead struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	// CheckpointKey is the base64 Ed25519 public key, empty when the
	// router signs no checkpoints.
	CheckpointKey string `json:"checkpointKey,omitempty"`
}

// NewAuditHead builds the answer from the writer's head and signing key.
func NewAuditHead(head audit.Receipt, key ed25519.PrivateKey) AuditHead {
	h := AuditHead{Seq: head.Seq, Hash: head.Hash}
	if key != nil {
		h.CheckpointKey = base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
	}
	return h
}

// VerifyQuery reads the verify endpoint's parameters: key (a base64
// Ed25519 public key to pin; repeatable), anchorSeq and anchorHash (a head
// recorded outside the log, which the log must still hold). Bad values are
// errors, never ignored: a caller that asked for a check must get it.
func VerifyQuery(q url.Values) (audit.VerifyOptions, error) {
	var o audit.VerifyOptions
	for _, k := range q["key"] {
		raw, err := base64.StdEncoding.DecodeString(k)
		if err != nil || len(raw) != ed25519.PublicKeySize {
			return o, fmt.Errorf("key must be a base64 Ed25519 public key")
		}
		o.TrustedKeys = append(o.TrustedKeys, ed25519.PublicKey(raw))
	}
	seq, hash := q.Get("anchorSeq"), q.Get("anchorHash")
	if seq == "" && hash == "" {
		return o, nil
	}
	n, err := strconv.ParseUint(seq, 10, 64)
	if err != nil || n == 0 || len(hash) != 64 {
		return o, fmt.Errorf("anchorSeq must be a positive integer and anchorHash a 64-digit hex SHA-256")
	}
	o.Anchor = &audit.Receipt{Seq: n, Hash: hash}
	return o, nil
}
