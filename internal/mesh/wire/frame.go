// Package wire is the AgentMesh Wire Protocol 1.0 envelope (§9–§13):
// JSON frames, prekey bundles as the registry serves them, KNOCK
// intents and conditions with their signatures, the relay's connect
// proof and the Ed25519-Timestamp authorization header.
//
// It is pure: parsers take bytes and return values or errors, signers
// take keys; there is no I/O. Every parser here reads untrusted input
// and has a fuzz target.
package wire

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/ratchet"
)

// Version is the protocol version this package speaks (§15.1).
const Version = 1

// Frame types (§9.2).
const (
	TypeConnect        = "connect"
	TypeDisconnect     = "disconnect"
	TypeKnock          = "knock"
	TypeKnockAccept    = "knock_accept"
	TypeKnockReject    = "knock_reject"
	TypeMessage        = "message"
	TypeAck            = "ack"
	TypePrekeyRequest  = "prekey_request"
	TypePrekeyResponse = "prekey_response"
	TypePrekeyUpload   = "prekey_upload"
	TypeHeartbeat      = "heartbeat"
	TypeError          = "error"
)

// CapabilityGlobal is the registry capability a kars agent registers
// with when it is published for federation (registryMode: global): its
// mesh announces it to federated meshes (internal/mesh/federation).
const CapabilityGlobal = "mesh:global"

// Limits on what a parser accepts, so a frame's size bounds the work.
const (
	MaxFrameBytes = 1 << 20
	maxIDLen      = 128
	maxDIDLen     = 64
	maxTSLen      = 64
)

// Frame is one protocol frame. Only the fields its type uses are set;
// the rest stay empty and are omitted when marshalled.
type Frame struct {
	V    int    `json:"v"`
	Type string `json:"type"`
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	ID   string `json:"id,omitempty"`
	TS   string `json:"ts,omitempty"`

	// message (§9.3, §9.4)
	Header     *MessageHeader `json:"header,omitempty"`
	Ciphertext string         `json:"ciphertext,omitempty"`
	X3DH       *X3DHInit      `json:"x3dh,omitempty"`

	// knock, knock_accept, knock_reject (§10)
	Intent     *Intent     `json:"intent,omitempty"`
	KnockID    string      `json:"knock_id,omitempty"`
	Conditions *Conditions `json:"conditions,omitempty"`
	Reason     string      `json:"reason,omitempty"`
	Signature  string      `json:"signature,omitempty"`

	// connect (§12.2 and the toolkit relay's top-level proof fields)
	Auth              *ConnectAuth `json:"auth,omitempty"`
	PublicKey         string       `json:"public_key,omitempty"`
	Timestamp         string       `json:"timestamp,omitempty"`
	Token             string       `json:"token,omitempty"`
	SupportedVersions []int        `json:"supported_versions,omitempty"`
	// Receipts asks the relay to confirm each frame it has stored
	// durably with an ack carrying Status "stored" (a kars extension;
	// without it the relay behaves as the toolkit's does).
	Receipts bool `json:"receipts,omitempty"`

	// ack and error
	Status string `json:"status,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// MessageHeader is a ratchet header in JSON (§9.3).
type MessageHeader struct {
	DH string `json:"dh"`
	PN uint32 `json:"pn"`
	N  uint32 `json:"n"`
}

// X3DHInit rides on a session's first messages (§9.4).
// IdentityKeyEd is a kars extension: the initiator's Ed25519 key, which
// its DID certifies, so a responder can authenticate the initiator
// without a registry that serves keys (the toolkit's does not).
type X3DHInit struct {
	IdentityKey   string  `json:"identity_key"`
	EphemeralKey  string  `json:"ephemeral_key"`
	UsedOPKID     *uint32 `json:"used_opk_id"`
	IdentityKeyEd string  `json:"identity_key_ed,omitempty"`
}

// ConnectAuth is the spec's connect proof (§12.2).
type ConnectAuth struct {
	Timestamp string `json:"timestamp"`
	Signature string `json:"signature"`
}

// ErrFrame wraps every reason a frame is refused.
var ErrFrame = errors.New("wire: invalid frame")

func bad(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrFrame, fmt.Sprintf(format, a...))
}

// Parse decodes and validates one frame. A missing "v" is read as 1:
// the toolkit's Python relay and registry never send it.
func Parse(b []byte) (*Frame, error) {
	if len(b) > MaxFrameBytes {
		return nil, bad("frame is %d bytes, limit %d", len(b), MaxFrameBytes)
	}
	var f Frame
	// json.Unmarshal refuses anything after the object (a Decoder's
	// More would let a stray '}' through).
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, bad("%v", err)
	}
	if f.V == 0 {
		f.V = Version
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

// Routing is the envelope a relay routes by (§12.5: sender, recipient,
// id; the rest is opaque to it).
type Routing struct {
	V    int    `json:"v"`
	Type string `json:"type"`
	From string `json:"from"`
	To   string `json:"to"`
	ID   string `json:"id"`
	// Receipts is the connect frame's opt-in (see Frame.Receipts).
	Receipts bool `json:"receipts"`
}

// ParseRouting reads only a frame's envelope, for the relay: version,
// a known type, DIDs and ids. The payload — header, ciphertext, intent —
// is the recipient's to check with Parse; decoding the ciphertext in the
// relay would cost its hot path and protect no one.
func ParseRouting(b []byte) (*Routing, error) {
	if len(b) > MaxFrameBytes {
		return nil, bad("frame is %d bytes, limit %d", len(b), MaxFrameBytes)
	}
	r, err := scanEnvelope(b)
	switch {
	case errors.Is(err, errNeedSlowPath):
		r = Routing{}
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, bad("%v", err)
		}
	case err != nil:
		return nil, bad("%v", err)
	}
	if r.V == 0 {
		r.V = Version
	}
	if err := envelope(r.V, r.Type, r.From, r.To, r.ID); err != nil {
		return nil, err
	}
	return &r, nil
}

// Routed reports whether frames of type t travel agent to agent through
// the relay.
func Routed(t string) bool {
	switch t {
	case TypeMessage, TypeKnock, TypeKnockAccept, TypeKnockReject:
		return true
	}
	return false
}

// envelope checks the fields every frame of a type needs.
func envelope(v int, typ, from, to, id string) error {
	if v != Version {
		return bad("version %d unsupported (this implementation speaks %d)", v, Version)
	}
	if len(id) > maxIDLen || len(from) > maxDIDLen || len(to) > maxDIDLen {
		return bad("id, from or to is too long")
	}
	if from != "" && !identity.ValidDID(from) {
		return bad("from %q is not a did:mesh: or did:agentmesh: DID", from)
	}
	if to != "" && !identity.ValidDID(to) {
		return bad("to %q is not a did:mesh: or did:agentmesh: DID", to)
	}
	switch {
	case Routed(typ):
		if from == "" || to == "" || id == "" {
			return bad("%s frame needs from, to and id", typ)
		}
	case typ == TypeConnect:
		if from == "" {
			return bad("connect frame needs from")
		}
	case typ == TypeAck:
		if id == "" {
			return bad("ack frame needs id")
		}
	case typ == TypeDisconnect, typ == TypeHeartbeat, typ == TypeError,
		typ == TypePrekeyRequest, typ == TypePrekeyResponse, typ == TypePrekeyUpload:
	default:
		return bad("unknown frame type %q", typ)
	}
	return nil
}

// Validate checks the fields f's type requires.
func (f *Frame) Validate() error {
	if len(f.TS) > maxTSLen {
		return bad("ts is too long")
	}
	if err := envelope(f.V, f.Type, f.From, f.To, f.ID); err != nil {
		return err
	}
	switch f.Type {
	case TypeMessage:
		if f.Header == nil || f.Ciphertext == "" {
			return bad("message frame needs header and ciphertext")
		}
		if _, err := f.RatchetMessage(); err != nil {
			return err
		}
		if f.X3DH != nil {
			if _, _, err := f.X3DH.Keys(); err != nil {
				return err
			}
		}
	case TypeKnock:
		if f.Intent == nil {
			return bad("knock frame needs intent")
		}
		if err := f.Intent.validate(); err != nil {
			return err
		}
	case TypeKnockAccept, TypeKnockReject:
		if f.KnockID == "" || len(f.KnockID) > maxIDLen {
			return bad("%s frame needs knock_id", f.Type)
		}
		if f.Conditions != nil {
			if err := f.Conditions.validate(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Marshal encodes f.
func (f *Frame) Marshal() ([]byte, error) { return json.Marshal(f) }

// RatchetMessage converts a message frame's header and ciphertext.
func (f *Frame) RatchetMessage() (ratchet.Message, error) {
	var m ratchet.Message
	if f.Header == nil {
		return m, bad("message has no header")
	}
	dh, ok := decodeFixed(f.Header.DH, 32)
	if !ok {
		return m, bad("header dh is not a base64url 32-byte key")
	}
	ct, err := DecodeB64(f.Ciphertext)
	if err != nil {
		return m, bad("ciphertext is not base64url")
	}
	if len(ct) < ratchet.NonceSize+16 {
		return m, bad("ciphertext is %d bytes, shorter than nonce and tag", len(ct))
	}
	m.Header = ratchet.Header{DH: [32]byte(dh), PN: f.Header.PN, N: f.Header.N}
	m.Ciphertext = ct
	return m, nil
}

// SetRatchetMessage fills a message frame's header and ciphertext.
func (f *Frame) SetRatchetMessage(m ratchet.Message) {
	f.Header = &MessageHeader{DH: B64(m.Header.DH[:]), PN: m.Header.PN, N: m.Header.N}
	f.Ciphertext = B64(m.Ciphertext)
}

// Keys decodes the initiator's identity and ephemeral keys.
func (x *X3DHInit) Keys() (ik, ek []byte, err error) {
	ik, ok1 := decodeFixed(x.IdentityKey, 32)
	ek, ok2 := decodeFixed(x.EphemeralKey, 32)
	if !ok1 || !ok2 {
		return nil, nil, bad("x3dh identity_key and ephemeral_key must be base64url 32-byte keys")
	}
	if x.IdentityKeyEd != "" {
		if _, ok := decodeFixed(x.IdentityKeyEd, 32); !ok {
			return nil, nil, bad("x3dh identity_key_ed must be a base64url 32-byte key")
		}
	}
	return ik, ek, nil
}
