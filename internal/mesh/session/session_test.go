package session

import (
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/ratchet"
	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/mesh/x3dh"
)

func agents(t *testing.T) (alice, bob *identity.Identity, keys *x3dh.Keys, b x3dh.Bundle) {
	t.Helper()
	alice, _ = identity.New(rand.Reader)
	bob, _ = identity.New(rand.Reader)
	keys, err := x3dh.NewKeys(rand.Reader, bob, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	opk := keys.OneTimePreKeys()[0]
	b = x3dh.Bundle{IdentityKey: bob.X25519().PublicKey().Bytes(), IdentityKeyEd: bob.PublicKey(), SignedPreKey: keys.SignedPreKey(), OneTimePreKey: &opk}
	return
}

func roundTrip(t *testing.T, f *wire.Frame) *wire.Frame {
	t.Helper()
	j, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	p, err := wire.Parse(j)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFirstMessagesCarryX3DHUntilAnswered(t *testing.T) {
	alice, bob, keys, b := agents(t)
	sa, err := Initiate(rand.Reader, alice, bob.DID(), b)
	if err != nil {
		t.Fatal(err)
	}
	f1, _ := sa.Seal([]byte("one"), "1", time.Now())
	f2, _ := sa.Seal([]byte("two"), "2", time.Now())
	if f1.X3DH == nil || f2.X3DH == nil {
		t.Fatal("unanswered messages lack x3dh")
	}
	// The first message is lost; the second starts the session.
	sb, pt, err := Accept(rand.Reader, keys, roundTrip(t, f2), alice.PublicKey())
	if err != nil || string(pt) != "two" {
		t.Fatalf("accept: %q %v", pt, err)
	}
	if p, err := sb.Open(roundTrip(t, f1)); err != nil || string(p) != "one" {
		t.Fatalf("late first message: %q %v", p, err)
	}
	r, _ := sb.Seal([]byte("ack"), "3", time.Now())
	if r.X3DH != nil {
		t.Error("responder sent x3dh")
	}
	if p, err := sa.Open(roundTrip(t, r)); err != nil || string(p) != "ack" {
		t.Fatal(err)
	}
	f3, _ := sa.Seal([]byte("three"), "4", time.Now())
	if f3.X3DH != nil {
		t.Error("x3dh repeated after the peer answered")
	}
	// The initial frame replayed cannot open a second session.
	if _, _, err := Accept(rand.Reader, keys, roundTrip(t, f2), alice.PublicKey()); err == nil {
		t.Error("replayed initial message accepted")
	}
}

func TestAcceptRefusals(t *testing.T) {
	alice, bob, keys, b := agents(t)
	mallory, _ := identity.New(rand.Reader)
	sa, _ := Initiate(rand.Reader, alice, bob.DID(), b)
	f, _ := sa.Seal([]byte("hi"), "1", time.Now())
	f = roundTrip(t, f)
	before := len(keys.OneTimePreKeys())

	// The sender's registered key must be the one its x3dh key maps from.
	if _, _, err := Accept(rand.Reader, keys, f, mallory.PublicKey()); err == nil {
		t.Error("accepted under another agent's key")
	}
	// Tampered ciphertext: refused, and the one-time prekey survives.
	bad := *f
	ct, _ := wire.DecodeB64(f.Ciphertext)
	ct[len(ct)-1] ^= 1
	bad.Ciphertext = wire.B64(ct)
	if _, _, err := Accept(rand.Reader, keys, &bad, alice.PublicKey()); !errors.Is(err, ratchet.ErrAuth) {
		t.Errorf("tampered: %v", err)
	}
	if len(keys.OneTimePreKeys()) != before {
		t.Fatal("a refused initiation consumed a one-time prekey")
	}
	plain := *f
	plain.X3DH = nil
	if _, _, err := Accept(rand.Reader, keys, &plain, alice.PublicKey()); !errors.Is(err, ErrNotInitial) {
		t.Errorf("no x3dh: %v", err)
	}
	if _, _, err := Accept(rand.Reader, keys, f, alice.PublicKey()); err != nil {
		t.Fatalf("the genuine message after the refusals: %v", err)
	}
	// A bundle whose keys are not the DID's.
	if _, err := Initiate(rand.Reader, alice, mallory.DID(), b); err == nil {
		t.Error("initiated to a DID that does not name the bundle's key")
	}
}

func TestPersistence(t *testing.T) {
	alice, bob, keys, b := agents(t)
	sa, _ := Initiate(rand.Reader, alice, bob.DID(), b)
	f, _ := sa.Seal([]byte("hi"), "1", time.Now())
	sb, _, err := Accept(rand.Reader, keys, roundTrip(t, f), alice.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	j, _ := sb.MarshalJSON()
	sb.Close()
	sb2, err := Restore(rand.Reader, j)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := sb2.Seal([]byte("back"), "2", time.Now())
	if p, err := sa.Open(roundTrip(t, r)); err != nil || string(p) != "back" {
		t.Fatal(err)
	}
}
