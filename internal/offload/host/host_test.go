package host

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/pairing"
)

func mint(t *testing.T, p pairing.Payload) string {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	p.Name, p.Registry, p.Relay, p.Slots, p.Exp = "alice-laptop", "http://127.0.0.1:1", "ws://127.0.0.1:1/ws", 1, time.Now().Add(time.Hour).Unix()
	tok, err := pairing.Mint(rand.Reader, key, p)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// A host refuses tokens it cannot use before it creates an identity or
// contacts anyone, and Open says when the folder holds no pairing.
func TestPairRefusesUnusableTokens(t *testing.T) {
	ctx := context.Background()
	for name, c := range map[string]struct {
		tok  string
		want string
	}{
		"garbage":     {"kars-pair-not-a-token", "malformed"},
		"no issuer":   {mint(t, pairing.Payload{Capabilities: []string{"offload"}}), "names no issuer"},
		"for sandbox": {mint(t, pairing.Payload{Capabilities: []string{"offload"}, Sandbox: "kars-a/a"}), "names no issuer"},
	} {
		dir := t.TempDir()
		_, err := Pair(ctx, Options{Dir: dir}, c.tok)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
		if _, err := Open(Options{Dir: dir}); !errors.Is(err, ErrNotPaired) {
			t.Errorf("%s: Open after a refused pairing: %v", name, err)
		}
	}
}

// A redemption the registry cannot answer leaves no pairing behind.
func TestPairUnreachableRegistry(t *testing.T) {
	dir := t.TempDir()
	tok := mint(t, pairing.Payload{Capabilities: []string{"offload"}, Issuer: "did:mesh:00112233445566778899aabbccddeeff"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := Pair(ctx, Options{Dir: dir}, tok); err == nil {
		t.Fatal("paired without a registry")
	}
	if _, err := Open(Options{Dir: dir}); !errors.Is(err, ErrNotPaired) {
		t.Fatalf("Open: %v", err)
	}
}
