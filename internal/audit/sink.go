// Package audit writes and verifies the tamper-evident audit log: an
// append-only JSONL file set whose entries form a SHA-256 hash chain, with
// periodic Ed25519-signed checkpoints.
//
// It owns the AuditSink seam (Sink). It is pure Go plus file I/O and must not
// import Kubernetes or network packages.
package audit

import (
	"context"
	"time"
)

// Record is what a caller asks to be audited. The log adds the sequence
// number, the timestamp and the chain hashes.
type Record struct {
	Sandbox  string
	Agent    string
	Action   string
	Decision string
	Rule     string
	Reason   string
	// PayloadSHA256 is the lowercase hex SHA-256 of the request payload. The
	// payload itself (a prompt, a message) is never written to the log.
	PayloadSHA256 string
	Latency       time.Duration
	// Attrs carries extra facts about the call (model, tokens, caller
	// thumbprint, ...). They are part of the hashed entry.
	Attrs map[string]string
}

// Receipt acknowledges a durably written entry.
type Receipt struct {
	Seq  uint64
	Hash string
}

// Sink is the AuditSink seam. Append returns only once the entry is on
// stable storage (or the error that prevented it); callers treat an error as
// a reason to fail the audited action closed.
type Sink interface {
	Append(ctx context.Context, r Record) (Receipt, error)
}
