package card

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
)

// RFC 8037 Appendix A.3 gives the thumbprint of its Ed25519 example key.
func TestThumbprintRFC8037(t *testing.T) {
	j := JWK{Kty: "OKP", Crv: "Ed25519", X: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
	got, err := j.Thumbprint()
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.RawURLEncoding.DecodeString("kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k")
	if want := ThumbprintPrefix + hex.EncodeToString(raw); got != want {
		t.Fatalf("thumbprint %s, want %s", got, want)
	}
}

func TestJWKRejectsMalformedKeys(t *testing.T) {
	good := "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
	for _, j := range []JWK{
		{Kty: "OKP", Crv: "Ed25519", X: good + "="},
		{Kty: "OKP", Crv: "Ed25519", X: good[:20] + "\n" + good[20:]},
		{Kty: "OKP", Crv: "Ed25519", X: good[:40]},
		{Kty: "OKP", Crv: "X25519", X: good},
		{Kty: "RSA", Crv: "", X: good},
		{Kty: "EC", Crv: "P-256", X: good, Y: good}, // not on the curve
	} {
		if _, err := j.PublicKey(); err == nil {
			t.Errorf("%+v accepted", j)
		}
	}
}

func testSpec() Spec {
	return Spec{Name: "research-bot", Description: "kars sandbox", Version: "1.2.3", URL: "https://gw.example/a2a/ns/research-bot",
		Skills: []Skill{{Name: "search.web", Description: "Web search"}, {Name: "summarize.text"}}}
}

func TestSignBothVerifies(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	s, err := SignBoth(testSpec(), key, "https://gw.example/a2a/ns/research-bot/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := KeyThumbprint(key.Public())
	if s.Thumbprint != want {
		t.Fatalf("thumbprint %s, want %s", s.Thumbprint, want)
	}
	for name, raw := range map[string][]byte{"v1": s.V1, "v0.3": s.V03} {
		v, err := VerifyCard(raw, FromJWK)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if v.Thumbprint != want || v.Name != "research-bot" || v.Header.Kid != want || v.Header.Alg != "EdDSA" {
			t.Fatalf("%s: verified %+v", name, v)
		}
	}
	var card map[string]any
	json.Unmarshal(s.V1, &card)
	if ifs := card["supportedInterfaces"].([]any); len(ifs) != 2 {
		t.Fatalf("interfaces %v", ifs)
	}
	if c, _ := Canonical(s.V1); strings.Contains(string(c), "capabilities") {
		t.Fatalf("capabilities without streaming should be empty and left out of the canonical form: %s", c)
	}
	var v03 map[string]any
	json.Unmarshal(s.V03, &v03)
	if v03["protocolVersion"] != "0.3.0" || v03["url"] != testSpec().URL {
		t.Fatalf("0.3 card %s", s.V03)
	}
	var set JWKS
	if err := json.Unmarshal(s.JWKS, &set); err != nil || len(set.Keys) != 1 || set.Keys[0].Kid != want {
		t.Fatalf("jwks %s", s.JWKS)
	}
}

func TestVerifyCardRefusals(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	s, _ := SignBoth(testSpec(), key, "")
	tamper := func(f func(map[string]any)) []byte {
		var m map[string]any
		json.Unmarshal(s.V1, &m)
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	otherSig := func() []byte {
		raw, _ := json.Marshal(V1(testSpec()))
		b, _ := SignJSON(raw, other, Header{})
		var m map[string]any
		json.Unmarshal(b, &m)
		sigs := m["signatures"]
		return tamper(func(m map[string]any) {
			// the other key's signature with this key's jwk swapped in
			sig := sigs.([]any)[0].(map[string]any)
			ph, _ := base64.RawURLEncoding.DecodeString(sig["protected"].(string))
			var h map[string]any
			json.Unmarshal(ph, &h)
			j, _ := JWKFor(key.Public())
			h["jwk"] = j
			nb, _ := json.Marshal(h)
			sig["protected"] = base64.RawURLEncoding.EncodeToString(nb)
			m["signatures"] = []any{sig}
		})
	}
	for name, raw := range map[string][]byte{
		"unsigned":          tamper(func(m map[string]any) { delete(m, "signatures") }),
		"renamed":           tamper(func(m map[string]any) { m["name"] = "evil-bot" }),
		"skill added":       tamper(func(m map[string]any) { m["skills"] = append(m["skills"].([]any), map[string]any{"id": "x"}) }),
		"signature swapped": otherSig(),
		"not json":          []byte(`{"name":`),
		"duplicate member":  []byte(strings.Replace(string(s.V1), `{`, `{"name":"a",`, 1)),
	} {
		if v, err := VerifyCard(raw, FromJWK); err == nil {
			t.Errorf("%s: verified %+v", name, v)
		}
	}
	// Adding an empty member does not change the canonical form, as the
	// SDKs' protobuf round trip drops it too.
	if _, err := VerifyCard(tamper(func(m map[string]any) { m["iconUrl"] = "" }), FromJWK); err != nil {
		t.Errorf("empty member: %v", err)
	}
}

func TestES256AndCrit(t *testing.T) {
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	payload := []byte(`{"name":"x"}`)
	sig, err := SignES256(ek, payload, Header{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifySignature(sig, payload, &ek.PublicKey); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifySignature(sig, []byte(`{"name":"y"}`), &ek.PublicKey); err == nil {
		t.Fatal("other payload verified")
	}
	// alg confusion: an EdDSA key cannot verify an ES256 signature.
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := VerifySignature(sig, payload, pub); err == nil {
		t.Fatal("verified with a key of another type")
	}
	crit, _ := json.Marshal(map[string]any{"alg": "ES256", "crit": []string{"exp"}})
	sig.Protected = base64.RawURLEncoding.EncodeToString(crit)
	if _, err := ParseProtected(sig.Protected); err == nil {
		t.Fatal("crit accepted")
	}
	none, _ := json.Marshal(map[string]any{"alg": "none"})
	if _, err := ParseProtected(base64.RawURLEncoding.EncodeToString(none)); err == nil {
		t.Fatal("alg none accepted")
	}
}

func TestCanonicalIsIdempotentAndOrderFree(t *testing.T) {
	a := []byte(`{"b":[{"y":2,"x":1}],"a":"","signatures":[{"protected":"x"}],"c":{"d":null}}`)
	b := []byte(`{"c":{},"b":[{"x":1,"y":2}]}`)
	ca, err := Canonical(a)
	if err != nil {
		t.Fatal(err)
	}
	cb, _ := Canonical(b)
	if string(ca) != string(cb) || string(ca) != `{"b":[{"x":1,"y":2}]}` {
		t.Fatalf("%s vs %s", ca, cb)
	}
	again, _ := Canonical(ca)
	if string(again) != string(ca) {
		t.Fatal("not idempotent")
	}
	_ = sha256.Sum256
}
