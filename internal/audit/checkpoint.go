package audit

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Checkpoint is a signed statement of the chain head: "entry Seq has hash
// Hash". Anyone holding the public key can check that the log up to Seq is
// the one the writer produced, and a checkpoint for a sequence the log no
// longer holds proves the tail was cut.
type Checkpoint struct {
	Seq  uint64
	Hash string
	Time time.Time
	// Key is the Ed25519 public key that signed.
	Key ed25519.PublicKey
	Sig []byte
}

// checkpointDomain separates checkpoint signatures from any other use of the
// same key.
const checkpointDomain = "kars-audit-checkpoint-v1\n"

// appendCheckpointCanonical appends the signed bytes of a checkpoint:
// {"seq":N,"hash":"<hex>","ts":"<TimeLayout>","key":"<base64 public key>"}.
func appendCheckpointCanonical(dst []byte, cp *Checkpoint) []byte {
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendUint(dst, cp.Seq, 10)
	dst = append(dst, `,"hash":"`...)
	dst = append(dst, cp.Hash...)
	dst = append(dst, `","ts":"`...)
	dst = appendTime(dst, cp.Time)
	dst = append(dst, `","key":"`...)
	dst = base64.StdEncoding.AppendEncode(dst, cp.Key)
	return append(dst, `"}`...)
}

func checkpointMessage(cp *Checkpoint) []byte {
	return appendCheckpointCanonical([]byte(checkpointDomain), cp)
}

// signCheckpoint fills cp.Key and cp.Sig and returns the checkpoint's line,
// newline included.
func signCheckpoint(priv ed25519.PrivateKey, cp *Checkpoint) []byte {
	cp.Key = priv.Public().(ed25519.PublicKey)
	cp.Sig = ed25519.Sign(priv, checkpointMessage(cp))
	return checkpointLine(cp)
}

func checkpointLine(cp *Checkpoint) []byte {
	line := appendCheckpointCanonical(nil, cp)
	line = line[:len(line)-1]
	line = append(line, `,"sig":"`...)
	line = base64.StdEncoding.AppendEncode(line, cp.Sig)
	return append(line, "\"}\n"...)
}

// errBadSignature marks a checkpoint whose signature does not verify under
// the key it names.
var errBadSignature = errors.New("signature does not verify")

// ParseCheckpoint decodes one checkpoint line (without its newline), checks
// its canonical form and verifies its signature under the key it carries.
// Whether that key is the right one is for the caller to decide.
func ParseCheckpoint(line []byte) (Checkpoint, error) {
	var w struct {
		Seq  *uint64 `json:"seq"`
		Hash string  `json:"hash"`
		TS   string  `json:"ts"`
		Key  []byte  `json:"key"`
		Sig  []byte  `json:"sig"`
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil || dec.More() || w.Seq == nil {
		return Checkpoint{}, fmt.Errorf("not a valid checkpoint")
	}
	ts, err := time.Parse(TimeLayout, w.TS)
	if err != nil || !isHex64(w.Hash) || len(w.Key) != ed25519.PublicKeySize || len(w.Sig) != ed25519.SignatureSize {
		return Checkpoint{}, fmt.Errorf("not a valid checkpoint")
	}
	cp := Checkpoint{Seq: *w.Seq, Hash: w.Hash, Time: ts, Key: w.Key, Sig: w.Sig}
	if want := checkpointLine(&cp); !bytes.Equal(want[:len(want)-1], line) {
		return cp, errNotCanonical
	}
	if !ed25519.Verify(cp.Key, checkpointMessage(&cp), cp.Sig) {
		return cp, errBadSignature
	}
	return cp, nil
}

// KeyString renders a public key the way entries and checkpoints carry it.
func KeyString(pub ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(pub) }

// Why a checkpoint is considered.
const (
	cpAfterBatch = iota // only if CheckpointEvery entries accumulated
	cpOnTimer           // if CheckpointInterval passed since the last one
	cpOnClose           // if anything is unsigned
)

// checkpoint signs the durable head when it is due. The committer calls it
// after it has woken a batch's callers, so signing and syncing
// checkpoints.jsonl never delay an acknowledgement; entries that arrive
// meanwhile ride the next batch. A failed write or sync fails the log like
// a failed batch does.
func (w *Writer) checkpoint(why int) {
	head := w.Head()
	if w.cpFile == nil || head.Seq <= w.cpSeq {
		return
	}
	now := w.opts.Now()
	switch why {
	case cpAfterBatch:
		if head.Seq-w.cpSeq < w.opts.CheckpointEvery {
			return
		}
	case cpOnTimer:
		if now.Sub(w.cpTime) < w.opts.CheckpointInterval*9/10 {
			return
		}
	}
	cp := Checkpoint{Seq: head.Seq, Hash: head.Hash, Time: now}
	line := signCheckpoint(w.opts.SigningKey, &cp)
	if _, err := w.cpFile.Write(line); err != nil {
		w.fail(fmt.Errorf("audit: writing checkpoint: %w", err), 0)
		return
	}
	if err := w.syncFile(w.cpFile); err != nil {
		w.fail(fmt.Errorf("audit: syncing checkpoint: %w", err), 0)
		return
	}
	w.cpSize += int64(len(line))
	w.cpSeq, w.cpTime = cp.Seq, now
}
