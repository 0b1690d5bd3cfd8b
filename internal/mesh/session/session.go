// Package session joins X3DH and the Double Ratchet into AgentMesh
// message frames (Wire Protocol 1.0 §7–§9): an initiator opens a session
// from a peer's bundle and its first messages carry the x3dh field; a
// responder accepts a session from such a frame. It is pure: no I/O,
// randomness from the io.Reader given.
package session

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/ratchet"
	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/mesh/x3dh"
)

// Session is an encrypted conversation with one peer. Not safe for
// concurrent use.
type Session struct {
	self, peer string // DIDs
	ad         []byte // IK_initiator ‖ IK_responder (§7.3)
	peerIK     []byte
	r          *ratchet.Session
	// init is the x3dh field an initiator repeats on every message until
	// the peer answers (X3DH §3.3: the responder may receive any of
	// them first if earlier ones are lost).
	init *wire.X3DHInit
}

// ErrNotInitial reports a frame without x3dh data offered to Accept.
var ErrNotInitial = errors.New("session: frame does not start a session (no x3dh field)")

// Initiate opens a session to peerDID from its fetched bundle.
func Initiate(rand io.Reader, self *identity.Identity, peerDID string, b x3dh.Bundle) (*Session, error) {
	if err := identity.CheckDID(peerDID, b.IdentityKeyEd); err != nil {
		return nil, fmt.Errorf("session: bundle for %s: %w", peerDID, err)
	}
	in, err := x3dh.Initiate(rand, self, b)
	if err != nil {
		return nil, err
	}
	defer clear(in.SharedSecret)
	r, err := ratchet.InitSender(rand, in.SharedSecret, in.RemoteSignedPreKey)
	if err != nil {
		return nil, err
	}
	return &Session{
		self: self.DID(), peer: peerDID, ad: in.AD, peerIK: b.IdentityKey, r: r,
		init: &wire.X3DHInit{IdentityKey: wire.B64(in.IdentityKey), EphemeralKey: wire.B64(in.EphemeralKey), UsedOPKID: in.UsedOPK, IdentityKeyEd: wire.B64(self.PublicKey())},
	}, nil
}

// Accept completes the responder's side from a first message frame and
// returns the session and the message's plaintext. peerKey is the
// sender's Ed25519 key as the registry holds it for f.From, or nil to
// take it from the frame's identity_key_ed; either way f.From must name
// it, and the initiator's X25519 identity key must be its image (§4.4),
// which is what authenticates the sender. Nothing in keys changes
// unless the message decrypts.
func Accept(rand io.Reader, keys *x3dh.Keys, f *wire.Frame, peerKey []byte) (*Session, []byte, error) {
	if f.X3DH == nil {
		return nil, nil, ErrNotInitial
	}
	if peerKey == nil {
		k, err := wire.DecodeB64(f.X3DH.IdentityKeyEd)
		if err != nil || len(k) != 32 {
			return nil, nil, fmt.Errorf("session: %s's key is unknown and the frame carries no identity_key_ed", f.From)
		}
		peerKey = k
	}
	if err := identity.CheckDID(f.From, peerKey); err != nil {
		return nil, nil, fmt.Errorf("session: sender %s: %w", f.From, err)
	}
	ik, ek, err := f.X3DH.Keys()
	if err != nil {
		return nil, nil, err
	}
	want, err := identity.X25519FromEd25519(peerKey)
	if err != nil {
		return nil, nil, err
	}
	if subtle.ConstantTimeCompare(want.Bytes(), ik) != 1 {
		return nil, nil, fmt.Errorf("session: %s's x3dh identity key is not its registered key's: %w", f.From, x3dh.ErrIdentityBinding)
	}
	m, err := f.RatchetMessage()
	if err != nil {
		return nil, nil, err
	}
	cands, err := keys.Respond(ik, ek, f.X3DH.UsedOPKID)
	if err != nil {
		return nil, nil, err
	}
	defer x3dh.ZeroCandidates(cands)
	for _, c := range cands {
		r, err := ratchet.InitReceiver(rand, c.SharedSecret, c.SignedPreKey)
		if err != nil {
			return nil, nil, err
		}
		pt, err := r.Decrypt(m, c.AD)
		if err != nil {
			r.Zero()
			continue
		}
		if err := keys.Accept(c, ek, f.X3DH.UsedOPKID); err != nil {
			r.Zero()
			return nil, nil, err
		}
		return &Session{self: f.To, peer: f.From, ad: c.AD, peerIK: ik, r: r}, pt, nil
	}
	return nil, nil, ratchet.ErrAuth
}

// Seal encrypts plaintext into a message frame with the given id.
func (s *Session) Seal(plaintext []byte, id string, now time.Time) (*wire.Frame, error) {
	m, err := s.r.Encrypt(plaintext, s.ad)
	if err != nil {
		return nil, err
	}
	f := &wire.Frame{V: wire.Version, Type: wire.TypeMessage, From: s.self, To: s.peer, ID: id, TS: now.UTC().Format(time.RFC3339Nano)}
	f.SetRatchetMessage(m)
	if s.init != nil {
		i := *s.init
		f.X3DH = &i
	}
	return f, nil
}

// Open decrypts a message frame from the peer. On error the session is
// unchanged.
func (s *Session) Open(f *wire.Frame) ([]byte, error) {
	if f.Type != wire.TypeMessage || f.From != s.peer {
		return nil, fmt.Errorf("session: frame is a %s from %s, want a message from %s", f.Type, f.From, s.peer)
	}
	m, err := f.RatchetMessage()
	if err != nil {
		return nil, err
	}
	pt, err := s.r.Decrypt(m, s.ad)
	if err != nil {
		return nil, err
	}
	s.init = nil // the peer has the session; stop repeating x3dh
	return pt, nil
}

// Peer returns the peer's DID.
func (s *Session) Peer() string { return s.peer }

// Close zeroes the session's secrets.
func (s *Session) Close() { s.r.Zero() }

type sessionJSON struct {
	Self    string          `json:"self"`
	Peer    string          `json:"peer"`
	AD      []byte          `json:"ad"`
	PeerIK  []byte          `json:"peer_identity_key"`
	Ratchet json.RawMessage `json:"ratchet"`
	Init    *wire.X3DHInit  `json:"x3dh,omitempty"`
}

// MarshalJSON persists the session, secrets included.
func (s *Session) MarshalJSON() ([]byte, error) {
	r, err := s.r.MarshalJSON()
	if err != nil {
		return nil, err
	}
	return json.Marshal(sessionJSON{Self: s.self, Peer: s.peer, AD: s.ad, PeerIK: s.peerIK, Ratchet: r, Init: s.init})
}

// Restore rebuilds a session written by MarshalJSON.
func Restore(rand io.Reader, data []byte) (*Session, error) {
	var j sessionJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("session: parsing state: %w", err)
	}
	r, err := ratchet.Restore(rand, j.Ratchet)
	if err != nil {
		return nil, err
	}
	return &Session{self: j.Self, peer: j.Peer, ad: j.AD, peerIK: j.PeerIK, r: r, init: j.Init}, nil
}
