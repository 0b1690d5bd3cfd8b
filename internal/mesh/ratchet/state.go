package ratchet

import (
	"crypto/ecdh"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// stateJSON is the persisted form (AgentMesh §8.5), with the field names
// the toolkit's Python RatchetState.to_dict writes so a state can move
// between implementations. The spec's n_send/n_recv/pn spellings are
// accepted on load.
type stateJSON struct {
	DHSelfPrivate  string            `json:"dh_self_private"`
	DHSelfPublic   string            `json:"dh_self_public"`
	DHRemotePublic *string           `json:"dh_remote_public"`
	RootKey        string            `json:"root_key"`
	ChainKeySend   *string           `json:"chain_key_send"`
	ChainKeyRecv   *string           `json:"chain_key_recv"`
	SendN          uint32            `json:"send_message_number"`
	RecvN          uint32            `json:"recv_message_number"`
	PrevN          uint32            `json:"previous_send_chain_length"`
	Skipped        map[string]string `json:"skipped_keys"`
	// Spec §8.5 spellings, read only.
	NSend *uint32 `json:"n_send,omitempty"`
	NRecv *uint32 `json:"n_recv,omitempty"`
	PN    *uint32 `json:"pn,omitempty"`
}

// MarshalJSON writes the session state, secrets included: store it
// where only the session's owner can read it.
func (s *Session) MarshalJSON() ([]byte, error) {
	if s.c.dhs == nil {
		return nil, ErrClosed
	}
	hx := func(b []byte) *string { v := hex.EncodeToString(b); return &v }
	j := stateJSON{
		DHSelfPrivate: hex.EncodeToString(s.c.dhs.Bytes()),
		DHSelfPublic:  hex.EncodeToString(s.c.dhs.PublicKey().Bytes()),
		RootKey:       hex.EncodeToString(s.c.rk[:]),
		SendN:         s.c.ns,
		RecvN:         s.c.nr,
		PrevN:         s.c.pn,
		Skipped:       make(map[string]string, len(s.skipped)),
	}
	if s.c.hasR {
		j.DHRemotePublic = hx(s.c.dhr[:])
	}
	if s.c.hasS {
		j.ChainKeySend = hx(s.c.cks[:])
	}
	if s.c.hasC {
		j.ChainKeyRecv = hx(s.c.ckr[:])
	}
	for _, k := range s.order {
		mk := s.skipped[k]
		j.Skipped[hex.EncodeToString(k.dh[:])+":"+strconv.FormatUint(uint64(k.n), 10)] = hex.EncodeToString(mk[:])
	}
	return json.Marshal(j)
}

// Restore rebuilds a session from MarshalJSON's output (or the Python
// implementation's to_dict), drawing future randomness from rand.
func Restore(rand io.Reader, data []byte) (*Session, error) {
	var j stateJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("ratchet: parsing state: %w", err)
	}
	s := &Session{rand: rand, skipped: map[skippedKey][32]byte{}}
	priv, err := hex.DecodeString(j.DHSelfPrivate)
	if err != nil {
		return nil, fmt.Errorf("ratchet: state dh_self_private: %w", err)
	}
	dhs, err := ecdh.X25519().NewPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("ratchet: state dh_self_private: %w", err)
	}
	s.c.setDHS(dhs)
	clear(priv)
	fixed := func(name, v string, dst *[32]byte) error {
		b, err := hex.DecodeString(v)
		if err != nil || len(b) != 32 {
			return fmt.Errorf("ratchet: state %s is not 32 hex-encoded bytes", name)
		}
		copy(dst[:], b)
		clear(b)
		return nil
	}
	if err := fixed("root_key", j.RootKey, &s.c.rk); err != nil {
		return nil, err
	}
	if j.DHRemotePublic != nil {
		if err := fixed("dh_remote_public", *j.DHRemotePublic, &s.c.dhr); err != nil {
			return nil, err
		}
		s.c.hasR = true
	}
	if j.ChainKeySend != nil {
		if err := fixed("chain_key_send", *j.ChainKeySend, &s.c.cks); err != nil {
			return nil, err
		}
		s.c.hasS = true
	}
	if j.ChainKeyRecv != nil {
		if err := fixed("chain_key_recv", *j.ChainKeyRecv, &s.c.ckr); err != nil {
			return nil, err
		}
		s.c.hasC = true
	}
	s.c.ns, s.c.nr, s.c.pn = j.SendN, j.RecvN, j.PrevN
	if j.NSend != nil {
		s.c.ns = *j.NSend
	}
	if j.NRecv != nil {
		s.c.nr = *j.NRecv
	}
	if j.PN != nil {
		s.c.pn = *j.PN
	}
	keys := make([]string, 0, len(j.Skipped))
	for k := range j.Skipped {
		keys = append(keys, k)
	}
	sort.Strings(keys) // JSON objects are unordered; pick a stable eviction order
	for _, k := range keys {
		dhHex, nStr, ok := strings.Cut(k, ":")
		n, err := strconv.ParseUint(nStr, 10, 32)
		if !ok || err != nil {
			return nil, fmt.Errorf("ratchet: state skipped key %q is not <dh hex>:<n>", k)
		}
		var sk skippedKey
		var mk [32]byte
		if err := fixed("skipped key dh", dhHex, &sk.dh); err != nil {
			return nil, err
		}
		if err := fixed("skipped message key", j.Skipped[k], &mk); err != nil {
			return nil, err
		}
		sk.n = uint32(n)
		s.addSkipped(sk, mk)
	}
	return s, nil
}
