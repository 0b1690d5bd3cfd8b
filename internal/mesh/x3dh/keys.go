package x3dh

import (
	"bytes"
	"crypto/ecdh"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
)

// Rotation policy (AgentMesh §6.2, §6.3): rotate the signed prekey every
// 7 days, keep a retired one for 14 days so sessions begun against it
// still complete, keep at least 10 one-time prekeys published and top
// up below 5.
const (
	RotateEvery      = 7 * 24 * time.Hour
	RetainRetired    = 14 * 24 * time.Hour
	OneTimeTarget    = 10
	OneTimeLowWater  = 5
	maxOneTimePreKey = 1000
	maxSeenEphemeral = 100_000
)

// signedPreKey is a signed prekey the responder holds.
type signedPreKey struct {
	id      uint32
	priv    *ecdh.PrivateKey
	sig     []byte
	created time.Time
	retired time.Time // zero while current
}

// Keys is the responder's prekey store: the current signed prekey,
// retired ones still inside their retention, and unused one-time
// prekeys. One-time prekeys are deleted when used (X3DH §3.4), and an
// initiation replayed against a signed prekey alone is refused by
// remembering its ephemeral key until that prekey expires (§4.2 notes
// replays; we close the gap). Keys is not safe for concurrent use.
type Keys struct {
	self    *identity.Identity
	spks    []*signedPreKey // current first
	opks    map[uint32]*ecdh.PrivateKey
	nextSPK uint32
	nextOPK uint32
	seen    map[[KeySize]byte]uint32 // ephemeral key → signed prekey id
}

// NewKeys makes a store with one signed prekey and OneTimeTarget
// one-time prekeys.
func NewKeys(rand io.Reader, self *identity.Identity, now time.Time) (*Keys, error) {
	k := &Keys{self: self, opks: map[uint32]*ecdh.PrivateKey{}, seen: map[[KeySize]byte]uint32{}}
	if err := k.RotateSignedPreKey(rand, now); err != nil {
		return nil, err
	}
	if _, err := k.GenerateOneTimePreKeys(rand, OneTimeTarget); err != nil {
		return nil, err
	}
	return k, nil
}

// Identity returns the store's owner.
func (k *Keys) Identity() *identity.Identity { return k.self }

// RotateSignedPreKey makes a new current signed prekey and retires the
// previous one; retired prekeys past RetainRetired are deleted.
func (k *Keys) RotateSignedPreKey(rand io.Reader, now time.Time) error {
	priv, err := newKey(rand)
	if err != nil {
		return fmt.Errorf("x3dh: generating signed prekey: %w", err)
	}
	if len(k.spks) > 0 {
		k.spks[0].retired = now
	}
	spk := &signedPreKey{id: k.nextSPK, priv: priv, sig: k.self.Sign(priv.PublicKey().Bytes()), created: now}
	k.nextSPK++
	k.spks = append([]*signedPreKey{spk}, k.spks...)
	k.Prune(now)
	return nil
}

// NeedsRotation reports whether the current signed prekey is due.
func (k *Keys) NeedsRotation(now time.Time) bool {
	return len(k.spks) == 0 || now.Sub(k.spks[0].created) >= RotateEvery
}

// Prune deletes retired signed prekeys older than RetainRetired, and the
// replay memory that went with them.
func (k *Keys) Prune(now time.Time) {
	keep := k.spks[:0]
	for _, s := range k.spks {
		if s.retired.IsZero() || now.Sub(s.retired) < RetainRetired {
			keep = append(keep, s)
			continue
		}
		for ek, id := range k.seen {
			if id == s.id {
				delete(k.seen, ek)
			}
		}
	}
	clear(k.spks[len(keep):])
	k.spks = keep
}

// GenerateOneTimePreKeys adds n one-time prekeys and returns their
// public halves for upload.
func (k *Keys) GenerateOneTimePreKeys(rand io.Reader, n int) ([]OneTimePreKeyPublic, error) {
	if len(k.opks)+n > maxOneTimePreKey {
		return nil, fmt.Errorf("x3dh: at most %d one-time prekeys may be outstanding", maxOneTimePreKey)
	}
	out := make([]OneTimePreKeyPublic, 0, n)
	for range n {
		priv, err := newKey(rand)
		if err != nil {
			return nil, fmt.Errorf("x3dh: generating one-time prekey: %w", err)
		}
		id := k.nextOPK
		k.nextOPK++
		k.opks[id] = priv
		out = append(out, OneTimePreKeyPublic{ID: id, PublicKey: priv.PublicKey().Bytes()})
	}
	return out, nil
}

// OneTimePreKeys returns the public halves of every unused one-time
// prekey, ordered by id: what a PUT …/prekeys uploads.
func (k *Keys) OneTimePreKeys() []OneTimePreKeyPublic {
	ids := make([]uint32, 0, len(k.opks))
	for id := range k.opks {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]OneTimePreKeyPublic, len(ids))
	for i, id := range ids {
		out[i] = OneTimePreKeyPublic{ID: id, PublicKey: k.opks[id].PublicKey().Bytes()}
	}
	return out
}

// SignedPreKey returns the current signed prekey's public half.
func (k *Keys) SignedPreKey() SignedPreKeyPublic {
	s := k.spks[0]
	return SignedPreKeyPublic{ID: s.id, PublicKey: s.priv.PublicKey().Bytes(), Signature: slices.Clone(s.sig)}
}

// Candidate is one way the responder can complete an initiation: the
// shared secret under one of its live signed prekeys. The first
// message's AEAD tells which is right (the wire's x3dh field does not
// name the signed prekey).
type Candidate struct {
	SharedSecret []byte
	SignedPreKey *ecdh.PrivateKey
	AD           []byte
	spkID        uint32
}

// Respond runs the responder's side (X3DH §3.4) for an initiator's
// identity key, ephemeral key and used one-time prekey id, returning a
// candidate per live signed prekey, current first. Nothing is consumed
// until Accept.
func (k *Keys) Respond(peerIK, ek []byte, usedOPK *uint32) ([]Candidate, error) {
	x := ecdh.X25519()
	ikA, err := x.NewPublicKey(peerIK)
	if err != nil {
		return nil, fmt.Errorf("x3dh: initiator identity key: %w", err)
	}
	ekA, err := x.NewPublicKey(ek)
	if err != nil {
		return nil, fmt.Errorf("x3dh: initiator ephemeral key: %w", err)
	}
	var ekKey [KeySize]byte
	copy(ekKey[:], ek)
	if _, replay := k.seen[ekKey]; replay {
		return nil, ErrUnknownPreKey
	}
	var opk *ecdh.PrivateKey
	if usedOPK != nil {
		if opk = k.opks[*usedOPK]; opk == nil {
			return nil, ErrUnknownPreKey
		}
	}
	ikB := k.self.X25519()
	ad := append(slices.Clone(peerIK), ikB.PublicKey().Bytes()...)
	var out []Candidate
	for _, s := range k.spks {
		// DH1 = DH(SPK_B, IK_A), DH2 = DH(IK_B, EK_A), DH3 = DH(SPK_B,
		// EK_A), DH4 = DH(OPK_B, EK_A): the initiator's four, mirrored.
		pairs := []dhPair{{s.priv, ikA}, {ikB, ekA}, {s.priv, ekA}}
		if opk != nil {
			pairs = append(pairs, dhPair{opk, ekA})
		}
		km := bytes.Repeat([]byte{0xff}, KeySize)
		ok := true
		for _, p := range pairs {
			o, err := p.priv.ECDH(p.pub)
			if err != nil {
				ok = false
				break
			}
			km = append(km, o...)
			clear(o)
		}
		if !ok {
			clear(km)
			return nil, fmt.Errorf("x3dh: DH with a low-order key")
		}
		out = append(out, Candidate{SharedSecret: kdf(km), SignedPreKey: s.priv, AD: ad, spkID: s.id})
	}
	if len(out) == 0 {
		return nil, ErrUnknownPreKey
	}
	return out, nil
}

// Accept records that c completed an initiation made with ephemeral key
// ek and one-time prekey usedOPK: the one-time prekey is deleted (single
// use) and the ephemeral key remembered so the same initiation cannot
// open a second session. It fails if either was consumed meanwhile.
func (k *Keys) Accept(c Candidate, ek []byte, usedOPK *uint32) error {
	var ekKey [KeySize]byte
	copy(ekKey[:], ek)
	if _, replay := k.seen[ekKey]; replay {
		return ErrUnknownPreKey
	}
	if usedOPK != nil {
		if _, ok := k.opks[*usedOPK]; !ok {
			return ErrUnknownPreKey
		}
		delete(k.opks, *usedOPK)
	}
	if len(k.seen) >= maxSeenEphemeral {
		// Forgetting an entry would reopen the replay it guards against,
		// so the bound refuses instead; rotating the signed prekey and
		// letting the retired one expire frees the memory.
		return fmt.Errorf("x3dh: %d sessions accepted under the live signed prekeys; rotate the signed prekey", maxSeenEphemeral)
	}
	k.seen[ekKey] = c.spkID
	return nil
}

// ZeroCandidates wipes candidates' shared secrets.
func ZeroCandidates(cs []Candidate) {
	for _, c := range cs {
		clear(c.SharedSecret)
	}
}

// IsCurrentSignedPreKey reports whether c used the current signed prekey
// (in constant time over the key bytes).
func (k *Keys) IsCurrentSignedPreKey(c Candidate) bool {
	return subtle.ConstantTimeCompare(c.SignedPreKey.PublicKey().Bytes(), k.spks[0].priv.PublicKey().Bytes()) == 1
}

type keysJSON struct {
	SPKs    []spkJSON         `json:"signed_pre_keys"`
	OPKs    map[uint32]string `json:"one_time_pre_keys"`
	NextSPK uint32            `json:"next_signed_pre_key_id"`
	NextOPK uint32            `json:"next_one_time_pre_key_id"`
	Seen    map[string]uint32 `json:"accepted_ephemeral_keys"`
}

type spkJSON struct {
	ID      uint32    `json:"key_id"`
	Private string    `json:"private_key"`
	Sig     string    `json:"signature"`
	Created time.Time `json:"created"`
	Retired time.Time `json:"retired,omitzero"`
}

// MarshalJSON writes the store, private keys included (not the identity
// seed, which its owner persists separately).
func (k *Keys) MarshalJSON() ([]byte, error) {
	j := keysJSON{OPKs: map[uint32]string{}, NextSPK: k.nextSPK, NextOPK: k.nextOPK, Seen: map[string]uint32{}}
	for _, s := range k.spks {
		j.SPKs = append(j.SPKs, spkJSON{ID: s.id, Private: hex.EncodeToString(s.priv.Bytes()), Sig: hex.EncodeToString(s.sig), Created: s.created, Retired: s.retired})
	}
	for id, p := range k.opks {
		j.OPKs[id] = hex.EncodeToString(p.Bytes())
	}
	for ek, id := range k.seen {
		j.Seen[hex.EncodeToString(ek[:])] = id
	}
	return json.Marshal(j)
}

// RestoreKeys rebuilds a store written by MarshalJSON for self.
func RestoreKeys(self *identity.Identity, data []byte) (*Keys, error) {
	var j keysJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("x3dh: parsing prekey store: %w", err)
	}
	k := &Keys{self: self, opks: map[uint32]*ecdh.PrivateKey{}, seen: map[[KeySize]byte]uint32{}, nextSPK: j.NextSPK, nextOPK: j.NextOPK}
	x := ecdh.X25519()
	for _, s := range j.SPKs {
		b, err := hex.DecodeString(s.Private)
		if err != nil {
			return nil, fmt.Errorf("x3dh: signed prekey %d: %w", s.ID, err)
		}
		priv, err := x.NewPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("x3dh: signed prekey %d: %w", s.ID, err)
		}
		sig, err := hex.DecodeString(s.Sig)
		if err != nil {
			return nil, fmt.Errorf("x3dh: signed prekey %d signature: %w", s.ID, err)
		}
		k.spks = append(k.spks, &signedPreKey{id: s.ID, priv: priv, sig: sig, created: s.Created, retired: s.Retired})
	}
	if len(k.spks) == 0 {
		return nil, fmt.Errorf("x3dh: prekey store has no signed prekey")
	}
	for id, h := range j.OPKs {
		b, err := hex.DecodeString(h)
		if err != nil {
			return nil, fmt.Errorf("x3dh: one-time prekey %d: %w", id, err)
		}
		priv, err := x.NewPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("x3dh: one-time prekey %d: %w", id, err)
		}
		k.opks[id] = priv
	}
	for h, id := range j.Seen {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != KeySize {
			return nil, fmt.Errorf("x3dh: accepted ephemeral key %q is not 32 hex bytes", h)
		}
		k.seen[[KeySize]byte(b)] = id
	}
	return k, nil
}
