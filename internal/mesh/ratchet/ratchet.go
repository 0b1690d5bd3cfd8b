// Package ratchet is the Double Ratchet (Signal, "The Double Ratchet
// Algorithm", rev. 4, 2025) with the AgentMesh Wire Protocol 1.0 §8
// parameters: X25519 for the DH ratchet, HKDF-SHA256 with info
// "AgentMesh_Ratchet_v1" as KDF_RK, HMAC-SHA256 with 0x01/0x02 as
// KDF_CK, and ChaCha20-Poly1305 with a random 12-byte nonce prepended
// to the ciphertext, AAD = AD ‖ header.
//
// It is pure: randomness comes from the io.Reader a session is given,
// and it performs no other I/O. Decrypt is transactional (§3.5): a
// message that fails to authenticate leaves the session unchanged, so
// tampered, replayed or forged messages cannot desynchronise it.
package ratchet

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/chacha20poly1305"
)

// MaxSkip bounds both how far ahead of the receiving chain one message
// may jump and how many skipped message keys a session keeps in total
// (AgentMesh §8.4; Double Ratchet §3.2 MAX_SKIP). When the store is
// full the oldest key is forgotten.
const MaxSkip = 100

// NonceSize is the random nonce prepended to each ciphertext.
const NonceSize = chacha20poly1305.NonceSize

const (
	infoRatchet = "AgentMesh_Ratchet_v1"
	keyLen      = 32
)

// Errors a caller can tell apart. Every decryption failure leaves the
// session exactly as it was.
var (
	// ErrAuth: the ciphertext, header or associated data was altered,
	// or the message was not made by the peer.
	ErrAuth = errors.New("ratchet: message failed authentication")
	// ErrReplay: the message's key was already used or discarded.
	ErrReplay = errors.New("ratchet: message key already used (replay or too old)")
	// ErrTooManySkipped: the header asks to skip more than MaxSkip keys.
	ErrTooManySkipped = errors.New("ratchet: message skips too many keys")
	// ErrClosed: the session was zeroed.
	ErrClosed = errors.New("ratchet: session closed")
	// ErrNoSendChain: a receiver cannot send before its first message.
	ErrNoSendChain = errors.New("ratchet: no sending chain yet (receive a message first)")
)

type skippedKey struct {
	dh [32]byte
	n  uint32
}

// chains is the part of the state a decryption rewrites; Decrypt works
// on a copy and commits it only once the message authenticates.
type chains struct {
	dhs  *ecdh.PrivateKey
	pub  [32]byte // dhs's public key, as headers carry it
	dhr  [32]byte
	hasR bool
	rk   [32]byte
	cks  [32]byte
	hasS bool
	ckr  [32]byte
	hasC bool
	ns   uint32
	nr   uint32
	pn   uint32
}

func (c *chains) setDHS(k *ecdh.PrivateKey) {
	c.dhs = k
	copy(c.pub[:], k.PublicKey().Bytes())
}

// Session is one side of a Double Ratchet conversation. It is not safe
// for concurrent use.
type Session struct {
	rand    io.Reader
	c       chains
	skipped map[skippedKey][32]byte
	order   []skippedKey // insertion order, oldest first, for eviction
}

// InitSender starts the session of the party that sent the first X3DH
// message (Double Ratchet §3.3 RatchetInitAlice): sk is the X3DH shared
// secret, remote the responder's signed prekey.
func InitSender(rand io.Reader, sk []byte, remote *ecdh.PublicKey) (*Session, error) {
	if len(sk) != keyLen {
		return nil, fmt.Errorf("ratchet: shared secret is %d bytes, want %d", len(sk), keyLen)
	}
	dhs, err := newKey(rand)
	if err != nil {
		return nil, fmt.Errorf("ratchet: generating ratchet key: %w", err)
	}
	s := &Session{rand: rand, skipped: map[skippedKey][32]byte{}}
	copy(s.c.dhr[:], remote.Bytes())
	s.c.hasR = true
	s.c.setDHS(dhs)
	out, err := dhs.ECDH(remote)
	if err != nil {
		return nil, fmt.Errorf("ratchet: DH with remote key: %w", err)
	}
	var rk [32]byte
	copy(rk[:], sk)
	s.c.rk, s.c.cks = kdfRK(rk, out)
	s.c.hasS = true
	clear(out)
	return s, nil
}

// InitReceiver starts the responder's session (Double Ratchet §3.3
// RatchetInitBob): sk is the X3DH shared secret, spk the signed prekey
// pair the initiator used.
func InitReceiver(rand io.Reader, sk []byte, spk *ecdh.PrivateKey) (*Session, error) {
	if len(sk) != keyLen {
		return nil, fmt.Errorf("ratchet: shared secret is %d bytes, want %d", len(sk), keyLen)
	}
	s := &Session{rand: rand, skipped: map[skippedKey][32]byte{}}
	s.c.setDHS(spk)
	copy(s.c.rk[:], sk)
	return s, nil
}

// Encrypt seals plaintext under the next sending message key (Double
// Ratchet §3.4 RatchetEncrypt). ad is the session's associated data
// (AgentMesh §7.3: IK_A ‖ IK_B).
func (s *Session) Encrypt(plaintext, ad []byte) (Message, error) {
	if s.c.dhs == nil {
		return Message{}, ErrClosed
	}
	if !s.c.hasS {
		return Message{}, ErrNoSendChain
	}
	var mk [32]byte
	mk, s.c.cks = kdfCK(s.c.cks)
	defer clear(mk[:])
	h := Header{DH: s.c.pub, PN: s.c.pn, N: s.c.ns}
	s.c.ns++

	out := make([]byte, NonceSize, NonceSize+len(plaintext)+chacha20poly1305.Overhead)
	if _, err := io.ReadFull(s.rand, out); err != nil {
		return Message{}, fmt.Errorf("ratchet: reading nonce: %w", err)
	}
	aead, _ := chacha20poly1305.New(mk[:]) // a 32-byte key never fails
	out = aead.Seal(out, out[:NonceSize], plaintext, aad(ad, h))
	return Message{Header: h, Ciphertext: out}, nil
}

// Decrypt opens m (Double Ratchet §3.5 RatchetDecrypt). On any error the
// session is unchanged.
func (s *Session) Decrypt(m Message, ad []byte) ([]byte, error) {
	if s.c.dhs == nil {
		return nil, ErrClosed
	}
	if len(m.Ciphertext) < NonceSize+chacha20poly1305.Overhead {
		return nil, ErrAuth
	}
	h := m.Header
	sk := skippedKey{dh: h.DH, n: h.N}
	if mk, ok := s.skipped[sk]; ok {
		pt, err := open(mk, m.Ciphertext, aad(ad, h))
		if err != nil {
			return nil, err
		}
		s.dropSkipped(sk)
		return pt, nil
	}

	c := s.c // work on a copy; commit on success
	var fresh skips
	newChain := !c.hasR || subtle.ConstantTimeCompare(h.DH[:], c.dhr[:]) != 1
	if newChain {
		if err := fresh.skip(&c, h.PN); err != nil {
			fresh.discard()
			return nil, err
		}
		if err := s.step(&c, h.DH); err != nil {
			fresh.discard()
			return nil, err
		}
	} else if h.N < c.nr {
		// The chain has moved past n and no skipped key remains for it.
		return nil, ErrReplay
	}
	if err := fresh.skip(&c, h.N); err != nil {
		fresh.discard()
		return nil, err
	}
	var mk [32]byte
	mk, c.ckr = kdfCK(c.ckr)
	c.nr++
	pt, err := open(mk, m.Ciphertext, aad(ad, h))
	clear(mk[:])
	if err != nil {
		fresh.discard()
		return nil, err
	}
	// Commit. The replaced ratchet private key is dropped with the old
	// chains value; crypto/ecdh keeps its scalar unexported, so losing
	// the reference is as far as zeroization can reach for it.
	s.c = c
	for i, k := range fresh.ids {
		s.addSkipped(k, fresh.keys[i])
	}
	return pt, nil
}

// skips collects the message keys a decryption skips over, committed
// to the session only if the message authenticates.
type skips struct {
	ids  []skippedKey
	keys [][32]byte
}

// skip advances c's receiving chain to message number until (Double
// Ratchet §3.5 SkipMessageKeys), keeping each key it passes.
func (f *skips) skip(c *chains, until uint32) error {
	if !c.hasC {
		return nil
	}
	if until > c.nr && until-c.nr > MaxSkip {
		return ErrTooManySkipped
	}
	for c.nr < until {
		var mk [32]byte
		mk, c.ckr = kdfCK(c.ckr)
		f.ids = append(f.ids, skippedKey{dh: c.dhr, n: c.nr})
		f.keys = append(f.keys, mk)
		c.nr++
	}
	return nil
}

func (f *skips) discard() {
	for i := range f.keys {
		clear(f.keys[i][:])
	}
}

// step is the DH ratchet (Double Ratchet §3.5 DHRatchet) applied to c.
func (s *Session) step(c *chains, remote [32]byte) error {
	pub, err := ecdh.X25519().NewPublicKey(remote[:])
	if err != nil {
		return ErrAuth
	}
	c.pn = c.ns
	c.ns, c.nr = 0, 0
	c.dhr, c.hasR = remote, true
	out, err := c.dhs.ECDH(pub)
	if err != nil {
		return ErrAuth // low-order point: not a key the peer could own
	}
	c.rk, c.ckr = kdfRK(c.rk, out)
	c.hasC = true
	clear(out)
	next, err := newKey(s.rand)
	if err != nil {
		return fmt.Errorf("ratchet: generating ratchet key: %w", err)
	}
	c.setDHS(next)
	out, err = next.ECDH(pub)
	if err != nil {
		return ErrAuth
	}
	c.rk, c.cks = kdfRK(c.rk, out)
	c.hasS = true
	clear(out)
	return nil
}

func (s *Session) addSkipped(k skippedKey, mk [32]byte) {
	if _, ok := s.skipped[k]; !ok {
		s.order = append(s.order, k)
	}
	s.skipped[k] = mk
	for len(s.skipped) > MaxSkip {
		oldest := s.order[0]
		s.order = s.order[1:]
		if v, ok := s.skipped[oldest]; ok {
			clear(v[:])
			delete(s.skipped, oldest)
		}
	}
}

func (s *Session) dropSkipped(k skippedKey) {
	v := s.skipped[k]
	clear(v[:])
	delete(s.skipped, k)
	for i, o := range s.order {
		if o == k {
			s.order = append(s.order[:i], s.order[i+1:]...)
			break
		}
	}
}

// Skipped reports how many skipped message keys the session holds.
func (s *Session) Skipped() int { return len(s.skipped) }

// CanSend reports whether the session has a sending chain: a responder
// has none until it has decrypted the initiator's first message.
func (s *Session) CanSend() bool { return s.c.hasS }

// Zero overwrites the session's secrets; the session is unusable after.
func (s *Session) Zero() {
	clear(s.c.rk[:])
	clear(s.c.cks[:])
	clear(s.c.ckr[:])
	for k, v := range s.skipped {
		clear(v[:])
		delete(s.skipped, k)
	}
	s.order = nil
	s.c = chains{}
}

// kdfRK is KDF_RK (§5.2): HKDF-SHA256 with the root key as salt, the DH
// output as input key material and "AgentMesh_Ratchet_v1" as info,
// giving 64 bytes split into the next root key and a chain key.
func kdfRK(rk [32]byte, dhOut []byte) (root, chain [32]byte) {
	okm, _ := hkdf.Key(sha256.New, dhOut, rk[:], infoRatchet, 64) // 64 ≤ 255·32 never fails
	copy(root[:], okm[:32])
	copy(chain[:], okm[32:])
	clear(okm)
	return root, chain
}

// kdfCK is KDF_CK (§5.2): message key HMAC-SHA256(ck, 0x01), next chain
// key HMAC-SHA256(ck, 0x02). The HMAC (RFC 2104) is spelled out over
// stack arrays because crypto/hmac allocates five objects per key, a
// third of a message's cost; TestKDFCKIsHMAC holds it to crypto/hmac.
func kdfCK(ck [32]byte) (mk, next [32]byte) {
	var in [sha256.BlockSize + 1]byte
	var out [sha256.BlockSize + sha256.Size]byte
	for i := range sha256.BlockSize {
		k := byte(0)
		if i < len(ck) {
			k = ck[i]
		}
		in[i] = k ^ 0x36
		out[i] = k ^ 0x5c
	}
	in[sha256.BlockSize] = 0x01
	inner := sha256.Sum256(in[:])
	copy(out[sha256.BlockSize:], inner[:])
	mk = sha256.Sum256(out[:])
	in[sha256.BlockSize] = 0x02
	inner = sha256.Sum256(in[:])
	copy(out[sha256.BlockSize:], inner[:])
	next = sha256.Sum256(out[:])
	clear(in[:])
	clear(out[:])
	clear(inner[:])
	return mk, next
}

func aad(ad []byte, h Header) []byte {
	b := make([]byte, len(ad)+HeaderSize)
	copy(b, ad)
	h.put(b[len(ad):])
	return b
}

func open(mk [32]byte, ct, aad []byte) ([]byte, error) {
	aead, _ := chacha20poly1305.New(mk[:])
	pt, err := aead.Open(nil, ct[:NonceSize], ct[NonceSize:], aad)
	if err != nil {
		return nil, ErrAuth
	}
	return pt, nil
}
