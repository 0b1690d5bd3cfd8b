// Package audit writes and verifies the tamper-evident audit log: an
// append-only JSONL file set whose entries form a SHA-256 hash chain, with
// periodic Ed25519-signed checkpoints.
//
// It owns the AuditSink seam (Sink) and its implementation (Writer), the
// offline verifier (Verify) behind "kars audit verify", and the line
// parsers (ParseLine, ParseCheckpoint). It is pure Go plus file I/O and must
// not import Kubernetes or network packages.
//
// # Files
//
// A log directory holds audit-YYYY-MM-DD.jsonl (one per UTC day of the entry
// timestamps; the chain runs through them in name order) and
// checkpoints.jsonl. Sequence numbers start at 1 and never restart: after a
// crash or a rotation the chain continues from the last valid entry.
//
// # Canonical bytes
//
// Each line is one JSON object with exactly these members, in this order:
//
//	{"seq":<uint>,"ts":"<YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ>","sandbox":<str>,
//	 "agent":<str>,"action":<str>,"decision":<str>,"rule":<str>,
//	 "reason":<str>,"payload_sha256":<str>,"latency_ns":<int>,
//	 "attrs":{<key>:<str>,...},"prev":"<64 hex>","hash":"<64 hex>"}
//
// with no whitespace, integers in plain decimal, the timestamp in UTC with
// exactly nine fractional digits, attrs keys sorted by byte value, and
// strings escaped as follows: '"' and '\' with a backslash; newline,
// carriage return and tab as \n, \r, \t; every other byte below 0x20, and
// 0x7f, as \u00xx with lowercase hex; everything else (valid UTF-8) as is.
// prev is the hash of the previous entry, or 64 zeros for entry 1.
//
// The canonical bytes of an entry are the line without its ,"hash":"..."
// member: the object from {"seq" up to and including the prev member's
// closing quote, followed by a closing brace. hash is the lowercase hex
// SHA-256 of those bytes. A verifier recomputes them by deleting the 74
// bytes ,"hash":"<64 hex>" before the final brace; Verify instead re-encodes
// the decoded entry and requires it to equal the stored line byte for byte,
// so that any other spelling of the same content is detected as well.
//
// A checkpoint line is
//
//	{"seq":<uint>,"hash":"<64 hex>","ts":"<timestamp>","key":"<base64>","sig":"<base64>"}
//
// and sig is the Ed25519 signature, by key, over the bytes
// "kars-audit-checkpoint-v1\n" followed by the line without its ,"sig":...
// member (closed with a brace). The key in force is announced in the chain
// itself: each time the writer opens the log it appends an entry with action
// "audit:open" whose checkpoint_key attribute carries the base64 public key.
// After a failed write or sync the writer recovers without a restart and
// appends an "audit:recover" entry, the gap marker (ActionRecover).
//
// docs/audit.md describes the same format for people operating kars.
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
