package wire

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/x3dh"
)

func mustID(t testing.TB) *identity.Identity {
	id, err := identity.New(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestDecodeB64(t *testing.T) {
	b := []byte{0xfb, 0xff, 0xfe, 1}
	for _, s := range []string{B64(b), B64Std(b), "-__-AQ==", "+//+AQ"} {
		got, err := DecodeB64(s)
		if err != nil || string(got) != string(b) {
			t.Errorf("%q: %x %v", s, got, err)
		}
	}
	for _, s := range []string{"-/", "a", "!!!!", "AQ=", "+_"} {
		if _, err := DecodeB64(s); err == nil {
			t.Errorf("%q decoded", s)
		}
	}
}

func TestParseFrames(t *testing.T) {
	a, b := mustID(t).DID(), mustID(t).DID()
	ok := []string{
		`{"v":1,"type":"heartbeat","from":"` + a + `","ts":"2026-04-21T19:00:00Z"}`,
		`{"type":"ack","id":"m1"}`, // the toolkit sends no v
		`{"v":1,"type":"knock","from":"` + a + `","to":"` + b + `","id":"k","intent":{"action":"delegate_task","capabilities_required":["a"],"trust_minimum":700}}`,
		`{"v":1,"type":"knock_accept","from":"` + b + `","to":"` + a + `","id":"k2","knock_id":"k","conditions":{"max_messages":100,"ttl_seconds":3600}}`,
		`{"v":1,"type":"message","from":"` + a + `","to":"` + b + `","id":"m","header":{"dh":"` + B64(make([]byte, 32)) + `","pn":0,"n":0},"ciphertext":"` + B64(make([]byte, 28)) + `"}`,
	}
	for _, s := range ok {
		if _, err := Parse([]byte(s)); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	refused := map[string]string{
		"version 2":       `{"v":2,"type":"heartbeat"}`,
		"unknown type":    `{"v":1,"type":"teleport"}`,
		"bad from":        `{"v":1,"type":"connect","from":"alice"}`,
		"message no to":   `{"v":1,"type":"message","from":"` + a + `","id":"m","header":{"dh":"","pn":0,"n":0},"ciphertext":"x"}`,
		"short dh":        `{"v":1,"type":"message","from":"` + a + `","to":"` + b + `","id":"m","header":{"dh":"AAAA","pn":0,"n":0},"ciphertext":"` + B64(make([]byte, 28)) + `"}`,
		"short ct":        `{"v":1,"type":"message","from":"` + a + `","to":"` + b + `","id":"m","header":{"dh":"` + B64(make([]byte, 32)) + `","pn":0,"n":0},"ciphertext":"AAAA"}`,
		"knock no intent": `{"v":1,"type":"knock","from":"` + a + `","to":"` + b + `","id":"k"}`,
		"trust 5000":      `{"v":1,"type":"knock","from":"` + a + `","to":"` + b + `","id":"k","intent":{"action":"x","trust_minimum":5000}}`,
		"trailing":        `{"v":1,"type":"heartbeat"} {}`,
		"stray brace":     `{"v":1,"type":"heartbeat"}}`,
		"not json":        `{"v":1,`,
		"ack no id":       `{"type":"ack"}`,
	}
	for name, s := range refused {
		if _, err := Parse([]byte(s)); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestKnockSignature(t *testing.T) {
	alice, bob := mustID(t), mustID(t)
	k := &Frame{V: 1, Type: TypeKnock, From: alice.DID(), To: bob.DID(), ID: "k1", TS: "2026-12-01T00:00:00Z",
		Intent: &Intent{Action: "review", Description: "PR <1234> & \u2028 \"quoted\"", CapabilitiesRequired: []string{"code:read"}, TrustMinimum: 500}}
	if err := SignFrame(k, ed25519Priv(alice)); err != nil {
		t.Fatal(err)
	}
	raw, _ := k.Marshal()
	if err := VerifyFrame(raw, alice.PublicKey()); err != nil {
		t.Fatal(err)
	}
	if err := VerifyFrame(raw, bob.PublicKey()); !errors.Is(err, ErrSignature) {
		t.Error("verified under another key")
	}
	// Re-pointing the knock at another agent breaks the signature.
	var m map[string]any
	json.Unmarshal(raw, &m)
	m["to"] = mustID(t).DID()
	moved, _ := json.Marshal(m)
	if err := VerifyFrame(moved, alice.PublicKey()); !errors.Is(err, ErrSignature) {
		t.Error("re-addressed knock verified")
	}
	// Reordering and re-spacing keys does not (JCS).
	var pretty strings.Builder
	enc := json.NewEncoder(&pretty)
	enc.SetIndent("", "   ")
	json.Unmarshal(raw, &m)
	enc.Encode(m)
	if err := VerifyFrame([]byte(pretty.String()), alice.PublicKey()); err != nil {
		t.Errorf("re-encoded knock: %v", err)
	}
	unsigned := *k
	unsigned.Signature = ""
	raw, _ = unsigned.Marshal()
	if err := VerifyFrame(raw, alice.PublicKey()); !errors.Is(err, ErrSignature) {
		t.Error("unsigned knock verified")
	}
}

// RFC 8785 §3.2.2 examples for the canonical form.
func TestJCS(t *testing.T) {
	got, err := SigningBytes([]byte(`{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","literals":[null,true,false]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestAuthHeader(t *testing.T) {
	id := mustID(t)
	now := time.Now()
	h := AuthHeader(id, now)
	a, err := ParseAuthHeader(h)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(id.PublicKey(), now); err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(id.PublicKey(), now.Add(Window+time.Second)); !errors.Is(err, ErrAuth) {
		t.Error("stale timestamp accepted")
	}
	if err := a.Verify(id.PublicKey(), now.Add(-Window-time.Second)); !errors.Is(err, ErrAuth) {
		t.Error("future timestamp accepted")
	}
	if err := a.Verify(mustID(t).PublicKey(), now); !errors.Is(err, ErrAuth) {
		t.Error("another key accepted")
	}
	var g ReplayGuard
	if err := g.Use(a, now); err != nil {
		t.Fatal(err)
	}
	if err := g.Use(a, now.Add(time.Second)); !errors.Is(err, ErrAuth) {
		t.Error("replayed header accepted")
	}
	for _, bad := range []string{"", "Bearer x", AuthScheme + " a b", AuthScheme + " " + id.DID() + " 2026-01-01T00:00:00 " + B64(make([]byte, 64)), strings.Replace(h, id.DID(), "did:mesh:x", 1)} {
		if _, err := ParseAuthHeader(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestConnectProofBothShapes(t *testing.T) {
	id := mustID(t)
	now := time.Now()
	f := ConnectFrame(id, now)
	raw, _ := f.Marshal()
	p, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	// The toolkit shape: top-level fields, key carried.
	spec := *p
	spec.Auth = nil
	a, pub, err := ConnectProof(&spec)
	if err != nil || pub == nil || a.Verify(pub, now) != nil {
		t.Fatalf("toolkit shape: %v", err)
	}
	// The spec shape: auth object, key looked up elsewhere.
	tk := *p
	tk.PublicKey, tk.Timestamp, tk.Signature = "", "", ""
	a, pub, err = ConnectProof(&tk)
	if err != nil || pub != nil || a.Verify(id.PublicKey(), now) != nil {
		t.Fatalf("spec shape: %v", err)
	}
}

func TestBundleRoundTrip(t *testing.T) {
	id := mustID(t)
	k, err := x3dh.NewKeys(rand.Reader, id, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	u := UploadFor(k)
	raw, _ := json.Marshal(u)
	pu, err := ParseBundleUpload(raw)
	if err != nil {
		t.Fatal(err)
	}
	resp := BundleResponse{IdentityKey: pu.IdentityKey, IdentityKeyEd: pu.IdentityKeyEd, SignedPreKey: pu.SignedPreKey, OneTimePreKey: &pu.OneTimePreKeys[0]}
	raw, _ = json.Marshal(resp)
	b, err := ParseBundleResponse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Verify(); err != nil {
		t.Fatal(err)
	}
	dup := *pu
	dup.OneTimePreKeys = append(dup.OneTimePreKeys, dup.OneTimePreKeys[0])
	raw, _ = json.Marshal(dup)
	if _, err := ParseBundleUpload(raw); err == nil {
		t.Error("duplicate one-time prekey ids accepted")
	}
	resp.IdentityKeyEd = ""
	raw, _ = json.Marshal(resp)
	if _, err := ParseBundleResponse(raw); err == nil {
		t.Error("bundle without identity_key_ed accepted")
	}
}

// The relay's scanner against encoding/json on inputs chosen to differ:
// folded keys, escapes, nesting, numbers, whitespace, broken syntax.
func TestParseRoutingMatchesEncodingJSON(t *testing.T) {
	a := "did:mesh:00000000000000000000000000000000"
	for _, s := range []string{
		`{"v":1,"type":"message","from":"` + a + `","to":"` + a + `","id":"x","header":{"dh":"a","n":[1,2,{"z":null}]},"ciphertext":"q\"\\\/\u00e9"}`,
		` { "TYPE" : "ack" , "ID":"k" } `,
		`{"typ\u0065":"ack","id":"k"}`,
		`{"type":"ack","id":"k\u0041"}`,
		`{"type":"ack","id":"k","v":1.0}`,
		`{"type":"ack","id":"k","v":-0}`,
		`{"type":"ack","id":"k","receipts":null}`,
		`{"type":"ack","id":"k","x":01}`,
		`{"type":"ack","id":"k","x":1.}`,
		`{"type":"ack","id":"k","x":"\x"}`,
		`{"type":"ack","id":"k",}`,
		`{"type":"ack","id":"k"}x`,
		`{"type":"ack","id":"k","x":[1,]}`,
		`{"type":"ack","id":"k","x":tru}`,
		`{"type":"ack","id":"k","x":"` + "\x01" + `"}`,
		"{\"type\":\"ack\",\"id\":\"k\xff\"}",
		`{"type":"ack","id":"k","receiptſ":true}`,
	} {
		var want Routing
		jerr := json.Unmarshal([]byte(s), &want)
		got, err := ParseRouting([]byte(s))
		if jerr != nil {
			if err == nil {
				t.Errorf("%s: accepted, encoding/json refused: %v", s, jerr)
			}
			continue
		}
		if want.V == 0 {
			want.V = Version
		}
		if err == nil && *got != want {
			t.Errorf("%s: got %+v, want %+v", s, *got, want)
		}
	}
}
