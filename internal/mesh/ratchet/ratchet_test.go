package ratchet

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
)

// RFC 8439 §2.8.2: the AEAD every message is sealed with.
func TestRFC8439AEAD(t *testing.T) {
	h := func(s string) []byte { b, _ := hex.DecodeString(s); return b }
	key := h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
	nonce := h("070000004041424344454647")
	ad := h("50515253c0c1c2c3c4c5c6c7")
	pt := []byte("Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.")
	want := "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116" +
		"1ae10b594f09e26a7e902ecbd0600691"
	a, _ := chacha20poly1305.New(key)
	if got := hex.EncodeToString(a.Seal(nil, nonce, pt, ad)); got != want {
		t.Fatalf("seal = %s", got)
	}
	// open() is what Decrypt uses: nonce ‖ ciphertext ‖ tag.
	var mk [32]byte
	copy(mk[:], key)
	back, err := open(mk, append(nonce, h(want)...), ad)
	if err != nil || !bytes.Equal(back, pt) {
		t.Fatalf("open: %v", err)
	}
}

// pair makes a connected sender and receiver from a random shared
// secret, as X3DH would leave them.
func pair(t testing.TB) (alice, bob *Session, ad []byte) {
	t.Helper()
	sk := make([]byte, 32)
	rand.Read(sk)
	spk, _ := ecdh.X25519().GenerateKey(rand.Reader)
	a, err := InitSender(rand.Reader, sk, spk.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	b, err := InitReceiver(rand.Reader, sk, spk)
	if err != nil {
		t.Fatal(err)
	}
	return a, b, []byte("IK_A||IK_B")
}

func enc(t testing.TB, s *Session, ad []byte, msg string) Message {
	t.Helper()
	m, err := s.Encrypt([]byte(msg), ad)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func dec(t testing.TB, s *Session, ad []byte, m Message, want string) {
	t.Helper()
	got, err := s.Decrypt(m, ad)
	if err != nil {
		t.Fatalf("decrypting %q: %v", want, err)
	}
	if string(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestConversation(t *testing.T) {
	a, b, ad := pair(t)
	if b.CanSend() {
		t.Fatal("receiver can send before its first message")
	}
	if _, err := b.Encrypt([]byte("x"), ad); !errors.Is(err, ErrNoSendChain) {
		t.Fatalf("receiver encrypt: %v", err)
	}
	for turn := range 6 {
		for i := range 3 {
			msg := fmt.Sprintf("a%d.%d", turn, i)
			dec(t, b, ad, enc(t, a, ad, msg), msg)
		}
		for i := range 2 {
			msg := fmt.Sprintf("b%d.%d", turn, i)
			dec(t, a, ad, enc(t, b, ad, msg), msg)
		}
	}
	if a.Skipped() != 0 || b.Skipped() != 0 {
		t.Errorf("in-order conversation left skipped keys: %d, %d", a.Skipped(), b.Skipped())
	}
}

func TestOutOfOrderAndLost(t *testing.T) {
	a, b, ad := pair(t)
	m := make([]Message, 5)
	for i := range m {
		m[i] = enc(t, a, ad, fmt.Sprint("m", i))
	}
	dec(t, b, ad, m[3], "m3")
	dec(t, b, ad, m[0], "m0")
	// b replies: a DH ratchet step on both sides.
	dec(t, a, ad, enc(t, b, ad, "r0"), "r0")
	// a's next chain; the old chain's m1 arrives late, m2 and m4 never.
	n0 := enc(t, a, ad, "n0")
	n1 := enc(t, a, ad, "n1")
	dec(t, b, ad, n1, "n1")
	dec(t, b, ad, m[1], "m1")
	dec(t, b, ad, n0, "n0")
	if got := b.Skipped(); got != 2 { // m2 and m4 remain
		t.Errorf("skipped = %d, want 2 (m2, m4)", got)
	}
	dec(t, b, ad, m[4], "m4")
}

// stateOf snapshots a session for before/after comparison.
func stateOf(t *testing.T, s *Session) string {
	t.Helper()
	j, err := s.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return string(j)
}

func TestReplayRefusedStateUnchanged(t *testing.T) {
	a, b, ad := pair(t)
	m0 := enc(t, a, ad, "m0")
	m1 := enc(t, a, ad, "m1")
	dec(t, b, ad, m1, "m1")
	dec(t, b, ad, m0, "m0") // from the skipped store
	before := stateOf(t, b)
	for _, m := range []Message{m0, m1} {
		if _, err := b.Decrypt(m, ad); err == nil {
			t.Fatal("replayed message decrypted")
		}
	}
	if stateOf(t, b) != before {
		t.Fatal("a refused replay changed the session")
	}
	dec(t, b, ad, enc(t, a, ad, "m2"), "m2")
}

func TestTamperingRefusedStateUnchanged(t *testing.T) {
	a, b, ad := pair(t)
	dec(t, b, ad, enc(t, a, ad, "hello"), "hello")
	dec(t, a, ad, enc(t, b, ad, "hi"), "hi")
	m := enc(t, a, ad, "transfer 10")
	cases := map[string]func(Message) (Message, []byte){
		"ciphertext bit": func(m Message) (Message, []byte) {
			c := bytes.Clone(m.Ciphertext)
			c[NonceSize+3] ^= 1
			m.Ciphertext = c
			return m, ad
		},
		"nonce bit": func(m Message) (Message, []byte) {
			c := bytes.Clone(m.Ciphertext)
			c[0] ^= 1
			m.Ciphertext = c
			return m, ad
		},
		"tag bit": func(m Message) (Message, []byte) {
			c := bytes.Clone(m.Ciphertext)
			c[len(c)-1] ^= 1
			m.Ciphertext = c
			return m, ad
		},
		"header n":  func(m Message) (Message, []byte) { m.Header.N++; return m, ad },
		"header pn": func(m Message) (Message, []byte) { m.Header.PN++; return m, ad },
		"header dh (new chain)": func(m Message) (Message, []byte) {
			k, _ := ecdh.X25519().GenerateKey(rand.Reader)
			copy(m.Header.DH[:], k.PublicKey().Bytes())
			return m, ad
		},
		"associated data": func(m Message) (Message, []byte) { return m, []byte("IK_C||IK_B") },
		"truncated":       func(m Message) (Message, []byte) { m.Ciphertext = m.Ciphertext[:20]; return m, ad },
	}
	before := stateOf(t, b)
	for name, tamper := range cases {
		tm, tad := tamper(m)
		if _, err := b.Decrypt(tm, tad); err == nil {
			t.Errorf("%s: tampered message decrypted", name)
		}
		if stateOf(t, b) != before {
			t.Fatalf("%s: refused message changed the session", name)
		}
	}
	dec(t, b, ad, m, "transfer 10")
}

func TestSkipBounds(t *testing.T) {
	a, b, ad := pair(t)
	var last Message
	for i := range MaxSkip + 2 {
		last = enc(t, a, ad, fmt.Sprint(i))
	}
	before := stateOf(t, b)
	if _, err := b.Decrypt(last, ad); !errors.Is(err, ErrTooManySkipped) {
		t.Fatalf("skipping %d: %v", MaxSkip+1, err)
	}
	if stateOf(t, b) != before {
		t.Fatal("refusal changed the session")
	}

	// Across several chains the store never exceeds MaxSkip; the oldest
	// keys go first.
	a, b, ad = pair(t)
	var first Message
	for round := range 4 {
		ms := make([]Message, 60)
		for i := range ms {
			ms[i] = enc(t, a, ad, fmt.Sprint(round, i))
		}
		if round == 0 {
			first = ms[0]
		}
		dec(t, b, ad, ms[59], fmt.Sprint(round, 59))
		if b.Skipped() > MaxSkip {
			t.Fatalf("round %d: %d skipped keys kept", round, b.Skipped())
		}
		dec(t, a, ad, enc(t, b, ad, "turn"), "turn")
	}
	if b.Skipped() != MaxSkip {
		t.Errorf("skipped = %d, want %d", b.Skipped(), MaxSkip)
	}
	if _, err := b.Decrypt(first, ad); err == nil {
		t.Error("an evicted key still decrypted")
	}
}

// A compromised message key opens its own message and nothing else: not
// earlier or later messages of its chain, nor messages of later chains.
func TestOneMessageKeyExposesNoOther(t *testing.T) {
	a, b, ad := pair(t)
	var msgs []Message
	var keys [][32]byte
	for turn := range 3 {
		for i := range 4 {
			mk, _ := kdfCK(a.c.cks) // the key Encrypt is about to use
			keys = append(keys, mk)
			msgs = append(msgs, enc(t, a, ad, fmt.Sprint(turn, i)))
		}
		dec(t, b, ad, msgs[len(msgs)-1], fmt.Sprint(turn, 3))
		dec(t, a, ad, enc(t, b, ad, "r"), "r")
	}
	for i, mk := range keys {
		for j, m := range msgs {
			_, err := open(mk, m.Ciphertext, aad(ad, m.Header))
			if (err == nil) != (i == j) {
				t.Errorf("key %d on message %d: err=%v", i, j, err)
			}
		}
	}
	// Nor is any key derivable from another: they are all distinct.
	seen := map[[32]byte]bool{}
	for _, k := range keys {
		if seen[k] {
			t.Fatal("two messages share a key")
		}
		seen[k] = true
	}
}

func TestKDFCKIsHMAC(t *testing.T) {
	for range 100 {
		var ck [32]byte
		rand.Read(ck[:])
		mk, next := kdfCK(ck)
		for i, out := range [][32]byte{mk, next} {
			m := hmac.New(sha256.New, ck[:])
			m.Write([]byte{byte(i + 1)})
			if !bytes.Equal(m.Sum(nil), out[:]) {
				t.Fatalf("KDF_CK output %d differs from crypto/hmac", i+1)
			}
		}
	}
}

func TestHeaderBytes(t *testing.T) {
	var h Header
	for i := range h.DH {
		h.DH[i] = byte(i)
	}
	h.PN, h.N = 0x01020304, 0xa0b0c0d0
	b := h.Bytes()
	if hex.EncodeToString(b[32:]) != "01020304a0b0c0d0" {
		t.Errorf("counters encoded as %x", b[32:])
	}
	back, err := ParseHeader(b)
	if err != nil || back != h {
		t.Errorf("round trip: %v %+v", err, back)
	}
	if _, err := ParseHeader(b[:39]); err == nil {
		t.Error("39-byte header parsed")
	}
}

func TestStateRoundTrip(t *testing.T) {
	a, b, ad := pair(t)
	m0 := enc(t, a, ad, "m0")
	dec(t, b, ad, enc(t, a, ad, "m1"), "m1")
	j, err := b.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	b2, err := Restore(rand.Reader, j)
	if err != nil {
		t.Fatal(err)
	}
	dec(t, b2, ad, m0, "m0")
	dec(t, a, ad, enc(t, b2, ad, "back"), "back")
	b.Zero()
	if _, err := b.Decrypt(enc(t, a, ad, "x"), ad); err == nil {
		t.Error("zeroed session decrypted")
	}
}

// FuzzDecrypt: whatever a peer or relay sends, Decrypt neither panics
// nor changes the session unless the message authenticates.
func FuzzDecrypt(f *testing.F) {
	a, b, ad := pair(f)
	m := enc(f, a, ad, "seed")
	f.Add(m.Header.Bytes(), m.Ciphertext)
	f.Add(make([]byte, HeaderSize), make([]byte, 40))
	f.Fuzz(func(t *testing.T, hdr, ct []byte) {
		h, err := ParseHeader(hdr)
		if err != nil {
			return
		}
		before, _ := b.MarshalJSON()
		if _, err := b.Decrypt(Message{Header: h, Ciphertext: ct}, ad); err == nil {
			t.Skip("authenticated (the seed itself)")
		}
		after, _ := b.MarshalJSON()
		if !bytes.Equal(before, after) {
			t.Fatal("refused message changed the session")
		}
	})
}

// FuzzParseHeader: the header parser accepts exactly 40 bytes and
// round-trips them.
func FuzzParseHeader(f *testing.F) {
	f.Add(make([]byte, HeaderSize))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if (err == nil) != (len(b) == HeaderSize) {
			t.Fatalf("len %d: err %v", len(b), err)
		}
		if err == nil && !bytes.Equal(h.Bytes(), b) {
			t.Fatal("round trip differs")
		}
	})
}
