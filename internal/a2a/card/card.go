// Package card builds, signs and verifies A2A AgentCards.
//
// A card signature is a detached JWS (RFC 7515) over the card's canonical
// form (A2A 1.0, "Agent Card Signing"): the card without its "signatures" member, with empty
// values removed, serialised by the JSON Canonicalization Scheme (RFC
// 8785). The official SDKs (a2a-sdk for Python, @a2a-js/sdk) compute the
// canonical form of the card as their protobuf types read it, which drops
// members outside the A2A 1.0 schema and members at their default value;
// the cards this package builds carry neither, so the two forms agree, and
// the interop tests check it with both SDKs.
//
// Everything here is pure: no I/O, no clock. Parsers of untrusted input
// (Canonical, ParseProtected, VerifyCard, JWK.PublicKey; jcs.Canonicalize)
// have fuzz targets.
package card

import (
	"crypto"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/a2aproject/a2a-go/v2/a2a"

	"github.com/kars-io/kars/internal/jcs"
)

// MaxCardBytes bounds a card kars will parse.
const MaxCardBytes = 64 << 10

// maxSignatures bounds the signatures tried on one card.
const maxSignatures = 8

// Canonical returns the bytes a card's signatures sign: raw (a card as
// JSON) without its top-level "signatures", with null, "", [] and {}
// removed recursively (as the SDKs' protobuf round trip does), in RFC 8785
// form.
func Canonical(raw []byte) ([]byte, error) {
	if len(raw) > MaxCardBytes {
		return nil, fmt.Errorf("card: larger than %d bytes", MaxCardBytes)
	}
	v, err := jcs.DecodeStrict(raw)
	if err != nil {
		return nil, fmt.Errorf("card: %w", err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("card: not a JSON object")
	}
	delete(obj, "signatures")
	cleaned, _ := clean(obj)
	if cleaned == nil {
		cleaned = map[string]any{}
	}
	return jcs.Value(cleaned, 0)
}

// clean removes null, "", [] and {} recursively and reports whether v
// itself is kept.
func clean(v any) (any, bool) {
	switch x := v.(type) {
	case nil:
		return nil, false
	case string:
		return x, x != ""
	case []any:
		out := x[:0]
		for _, e := range x {
			if c, ok := clean(e); ok {
				out = append(out, c)
			}
		}
		return out, len(out) > 0
	case map[string]any:
		for k, e := range x {
			if c, ok := clean(e); ok {
				x[k] = c
			} else {
				delete(x, k)
			}
		}
		return x, len(x) > 0
	}
	return v, true
}

// Verified is what a verified card says about its signer.
type Verified struct {
	// Name is the card's name.
	Name string
	// Thumbprint is the RFC 7638 thumbprint of the key whose signature
	// verified ("sha256:<hex>").
	Thumbprint string
	// Header is that signature's protected header.
	Header Header
}

// KeyResolver returns the key a signature with protected header h claims
// to be made with. FromJWK takes it from the header itself.
type KeyResolver func(h Header) (crypto.PublicKey, error)

// FromJWK resolves the key from the protected header's jwk.
func FromJWK(h Header) (crypto.PublicKey, error) {
	if h.JWK == nil {
		return nil, errors.New(`card: the signature's protected header carries no "jwk"`)
	}
	return h.JWK.PublicKey()
}

// cardEnvelope reads what verification needs from a card.
type cardEnvelope struct {
	Name       string      `json:"name"`
	Signatures []Signature `json:"signatures"`
}

// VerifyCard checks raw, a card as received: it must be strict JSON of at
// most MaxCardBytes with at least one signature that verifies over
// Canonical(raw) with the key resolve returns. The first signature that
// verifies is reported. An unsigned card is an error.
func VerifyCard(raw []byte, resolve KeyResolver) (Verified, error) {
	payload, err := Canonical(raw)
	if err != nil {
		return Verified{}, err
	}
	var env cardEnvelope
	if err := json.Unmarshal(raw, &env); err != nil {
		return Verified{}, fmt.Errorf("card: %w", err)
	}
	if len(env.Signatures) == 0 {
		return Verified{}, errors.New("card: unsigned (no signatures)")
	}
	if len(env.Signatures) > maxSignatures {
		return Verified{}, fmt.Errorf("card: more than %d signatures", maxSignatures)
	}
	var errs []error
	for i, sig := range env.Signatures {
		h, err := ParseProtected(sig.Protected)
		if err != nil {
			errs = append(errs, fmt.Errorf("signature %d: %w", i, err))
			continue
		}
		pub, err := resolve(h)
		if err != nil {
			errs = append(errs, fmt.Errorf("signature %d: %w", i, err))
			continue
		}
		if _, err := VerifySignature(sig, payload, pub); err != nil {
			errs = append(errs, fmt.Errorf("signature %d: %w", i, err))
			continue
		}
		tp, err := KeyThumbprint(pub)
		if err != nil {
			errs = append(errs, fmt.Errorf("signature %d: %w", i, err))
			continue
		}
		return Verified{Name: env.Name, Thumbprint: tp, Header: h}, nil
	}
	return Verified{}, fmt.Errorf("card: no signature verifies: %w", errors.Join(errs...))
}

// SignJSON signs a card given as JSON (any "signatures" member is
// replaced) and returns the card with the one signature, as JSON.
func SignJSON(raw []byte, key ed25519.PrivateKey, hdr Header) ([]byte, error) {
	payload, err := Canonical(raw)
	if err != nil {
		return nil, err
	}
	sig, err := Sign(key, payload, hdr)
	if err != nil {
		return nil, err
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	sb, err := json.Marshal([]Signature{sig})
	if err != nil {
		return nil, err
	}
	obj["signatures"] = sb
	// encoding/json sorts map keys: the served card is stable byte for
	// byte, which keeps ETags and tests simple.
	return json.Marshal(obj)
}

// Skill is a skill a sandbox advertises.
type Skill struct {
	Name        string
	Description string
}

// Spec describes the card of one exposed sandbox.
type Spec struct {
	// Name and Description of the agent.
	Name, Description string
	// Version is the agent's version string.
	Version string
	// URL is the public JSON-RPC endpoint (the gateway's route).
	URL string
	// Skills are the advertised skills; nothing else may be invoked.
	Skills []Skill
	// Streaming says whether SendStreamingMessage is served.
	Streaming bool
}

// mtlsScheme names the security scheme kars cards declare: callers
// authenticate to the gateway with a TLS client certificate whose key
// signs their own card.
const mtlsScheme = "kars-mtls"

const mtlsDescription = "TLS client certificate whose key signs the caller's AgentCard (sent base64url-encoded in the Kars-A2A-Caller-Card header); the key's RFC 7638 thumbprint must be one of the sandbox's allowedCallers"

// V1 returns the A2A 1.0 card of spec: one JSON-RPC interface per protocol
// version served (1.0 and 0.3, both at URL, chosen by the A2A-Version
// header).
func V1(s Spec) *a2a.AgentCard {
	c := &a2a.AgentCard{
		Name:        s.Name,
		Description: s.Description,
		Version:     s.Version,
		SupportedInterfaces: []*a2a.AgentInterface{
			{URL: s.URL, ProtocolBinding: a2a.TransportProtocolJSONRPC, ProtocolVersion: "1.0"},
			{URL: s.URL, ProtocolBinding: a2a.TransportProtocolJSONRPC, ProtocolVersion: "0.3"},
		},
		Capabilities:       a2a.AgentCapabilities{Streaming: s.Streaming},
		DefaultInputModes:  []string{"text/plain"},
		DefaultOutputModes: []string{"text/plain"},
		SecuritySchemes: a2a.NamedSecuritySchemes{
			mtlsScheme: a2a.MutualTLSSecurityScheme{Description: mtlsDescription},
		},
	}
	for _, sk := range s.Skills {
		c.Skills = append(c.Skills, a2a.AgentSkill{ID: sk.Name, Name: sk.Name, Description: skillDescription(sk), Tags: []string{"kars"}})
	}
	return c
}

func skillDescription(sk Skill) string {
	if sk.Description != "" {
		return sk.Description
	}
	return sk.Name
}

// v03Card is the A2A 0.3 AgentCard layout, for
// /.well-known/agent.json.
type v03Card struct {
	Name               string                    `json:"name"`
	Description        string                    `json:"description"`
	URL                string                    `json:"url"`
	Version            string                    `json:"version"`
	ProtocolVersion    string                    `json:"protocolVersion"`
	PreferredTransport string                    `json:"preferredTransport"`
	Capabilities       map[string]bool           `json:"capabilities"`
	DefaultInputModes  []string                  `json:"defaultInputModes"`
	DefaultOutputModes []string                  `json:"defaultOutputModes"`
	Skills             []v03Skill                `json:"skills"`
	SecuritySchemes    map[string]map[string]any `json:"securitySchemes"`
}

type v03Skill struct {
	ID          string   `json:"id"`
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Tags        []string `json:"tags"`
}

// V03JSON returns the A2A 0.3 card of spec as JSON (unsigned). Its
// signature is over its own canonical form, as A2A 0.3 specifies for card signatures;
// the 1.x SDKs convert a 0.3 card to the 1.0 schema before verifying, so
// they verify the 1.0 card (agent-card.json), not this one.
func V03JSON(s Spec) ([]byte, error) {
	c := v03Card{
		Name: s.Name, Description: s.Description, URL: s.URL, Version: s.Version,
		ProtocolVersion: "0.3.0", PreferredTransport: "JSONRPC",
		Capabilities:       map[string]bool{"streaming": s.Streaming},
		DefaultInputModes:  []string{"text/plain"},
		DefaultOutputModes: []string{"text/plain"},
		// No "security" requirement list: its only entry would be the
		// scheme with an empty scope list, which canonicalisation removes,
		// and a 0.3 verifier that keeps empty values would then sign
		// different bytes.
		SecuritySchemes: map[string]map[string]any{mtlsScheme: {"type": "mutualTLS", "description": mtlsDescription}},
	}
	for _, sk := range s.Skills {
		c.Skills = append(c.Skills, v03Skill{ID: sk.Name, Name: sk.Name, Description: skillDescription(sk), Tags: []string{"kars"}})
	}
	return json.Marshal(c)
}

// Signed is a sandbox's pair of signed cards and its signing key's
// public half.
type Signed struct {
	// V1 is the A2A 1.0 card (/.well-known/agent-card.json).
	V1 []byte
	// V03 is the A2A 0.3 card (/.well-known/agent.json).
	V03 []byte
	// JWKS publishes the signing key (/.well-known/jwks.json).
	JWKS []byte
	// Thumbprint pins the signing key.
	Thumbprint string
}

// SignBoth builds and signs both cards of spec with key. jku, when set, is
// the public URL of the JWKS, named in the protected headers so that SDK
// verifiers that resolve keys by (kid, jku) find it; the key is also in
// the header's jwk, and verifiers pin it by Thumbprint either way.
func SignBoth(s Spec, key ed25519.PrivateKey, jku string) (*Signed, error) {
	j, err := JWKFor(key.Public())
	if err != nil {
		return nil, err
	}
	tp, err := j.Thumbprint()
	if err != nil {
		return nil, err
	}
	hdr := Header{Kid: tp, Jku: jku}
	v1raw, err := json.Marshal(V1(s))
	if err != nil {
		return nil, err
	}
	v1, err := SignJSON(v1raw, key, hdr)
	if err != nil {
		return nil, err
	}
	v03raw, err := V03JSON(s)
	if err != nil {
		return nil, err
	}
	v03, err := SignJSON(v03raw, key, hdr)
	if err != nil {
		return nil, err
	}
	pub := j
	pub.Kid, pub.Alg, pub.Use = tp, "EdDSA", "sig"
	jwks, err := json.Marshal(JWKS{Keys: []JWK{pub}})
	if err != nil {
		return nil, err
	}
	return &Signed{V1: v1, V03: v03, JWKS: jwks, Thumbprint: tp}, nil
}
