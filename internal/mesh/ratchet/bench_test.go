package ratchet

import (
	"crypto/rand"
	"io"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
)

// Goal (issue 16): ratchet encrypt+decrypt of 1 KiB at ≥ 100,000
// messages/s per core, against raw ChaCha20-Poly1305 (seal+open with a
// random nonce) in the same run. Run with -cpu 1:
//
//	go test ./internal/mesh/ratchet -run '^$' -bench . -cpu 1

func msgsPerSec(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func BenchmarkBaselineChaCha20Poly1305_1KiB(b *testing.B) {
	key := make([]byte, 32)
	rand.Read(key)
	aead, _ := chacha20poly1305.New(key)
	pt := make([]byte, 1024)
	ad := make([]byte, 64+HeaderSize)
	out := make([]byte, 0, NonceSize+len(pt)+16)
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	for b.Loop() {
		nonce := out[:NonceSize]
		io.ReadFull(rand.Reader, nonce)
		ct := aead.Seal(nonce, nonce, pt, ad)
		if _, err := aead.Open(nil, ct[:NonceSize], ct[NonceSize:], ad); err != nil {
			b.Fatal(err)
		}
	}
	msgsPerSec(b)
}

// One direction: the symmetric-key ratchet per message, as a stream of
// messages between replies runs.
func BenchmarkRatchetEncryptDecrypt_1KiB(b *testing.B) {
	a, bob, _ := pair(b)
	ad := make([]byte, 64) // IK_A ‖ IK_B
	pt := make([]byte, 1024)
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	for b.Loop() {
		m, err := a.Encrypt(pt, ad)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := bob.Decrypt(m, ad); err != nil {
			b.Fatal(err)
		}
	}
	msgsPerSec(b)
}

// Strict alternation: every message is a reply, so every message costs
// a DH ratchet step (two X25519 and a key generation on the receiver).
func BenchmarkRatchetPingPong_1KiB(b *testing.B) {
	x, y, _ := pair(b)
	ad := make([]byte, 64)
	m, _ := x.Encrypt([]byte("start"), ad)
	y.Decrypt(m, ad)
	pt := make([]byte, 1024)
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	for b.Loop() {
		m, err := y.Encrypt(pt, ad)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := x.Decrypt(m, ad); err != nil {
			b.Fatal(err)
		}
		x, y = y, x
	}
	msgsPerSec(b)
}
