// Package a2atest holds what the A2A tests of several packages share: TLS
// identities (gateway, router, callers) with self-signed certificates,
// callers' signed AgentCards, and a local agent that speaks the runtime
// contract's chat endpoint and counts what reaches it.
//
// Test code only; nothing in a binary imports it.
package a2atest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/a2a/card"
)

// Identity is a key with a self-signed certificate.
type Identity struct {
	Key     crypto.Signer
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
	TLS     tls.Certificate
}

// NewIdentity makes an Ed25519 identity whose certificate names dnsNames
// (and 127.0.0.1).
func NewIdentity(t testing.TB, cn string, dnsNames ...string) *Identity {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return newIdentity(t, key, cn, dnsNames)
}

// NewECIdentity makes a P-256 identity.
func NewECIdentity(t testing.TB, cn string) *Identity {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return newIdentity(t, key, cn, nil)
}

func newIdentity(t testing.TB, key crypto.Signer, cn string, dnsNames []string) *Identity {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, IsCA: true,
		DNSNames:    dnsNames,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	id := &Identity{Key: key, Cert: cert,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})}
	id.TLS, err = tls.X509KeyPair(id.CertPEM, id.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// Pool returns a certificate pool holding only id's certificate.
func (id *Identity) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(id.Cert)
	return p
}

// Thumbprint is the RFC 7638 thumbprint of id's key.
func (id *Identity) Thumbprint(t testing.TB) string {
	tp, err := card.KeyThumbprint(id.Key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return tp
}

// WriteFiles writes id's certificate and key as PEM files in dir and
// returns their paths.
func (id *Identity) WriteFiles(t testing.TB, dir, name string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, id.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, id.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// CallerCard returns a caller's AgentCard named name, signed with id's key
// (Ed25519 or P-256) and carrying the key in its protected header.
func CallerCard(t testing.TB, id *Identity, name string) []byte {
	t.Helper()
	raw, _ := json.Marshal(map[string]any{
		"name": name, "description": "a foreign agent", "version": "1.0.0",
		"supportedInterfaces": []any{map[string]any{"url": "https://partner.example/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}},
		"capabilities":        map[string]any{}, "defaultInputModes": []string{"text/plain"}, "defaultOutputModes": []string{"text/plain"},
		"skills": []any{map[string]any{"id": "plan", "name": "plan", "description": "plans", "tags": []string{"x"}}},
	})
	payload, err := card.Canonical(raw)
	if err != nil {
		t.Fatal(err)
	}
	var sig card.Signature
	switch k := id.Key.(type) {
	case ed25519.PrivateKey:
		sig, err = card.Sign(k, payload, card.Header{})
	case *ecdsa.PrivateKey:
		sig, err = card.SignES256(k, payload, card.Header{})
	}
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(raw, &m)
	m["signatures"] = []card.Signature{sig}
	out, _ := json.Marshal(m)
	return out
}

// CardHeader is a card as the Kars-A2A-Caller-Card header carries it.
func CardHeader(raw []byte) string { return base64.RawURLEncoding.EncodeToString(raw) }

// Agent is a local stand-in for a sandbox's agent: it serves the runtime
// contract's POST /v1/chat, replies "echo: <message>", and counts turns.
type Agent struct {
	*httptest.Server
	turns atomic.Int64
	// Delay, when set, holds each turn that long (or until the caller
	// leaves).
	Delay atomic.Int64
	mu    sync.Mutex
	last  struct{ Session, Message string }
}

// NewAgent starts an Agent.
func NewAgent(t testing.TB) *Agent {
	a := &Agent{}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/chat" {
			http.Error(w, `{"error":{"message":"not found","status":404}}`, http.StatusNotFound)
			return
		}
		var req struct{ Session, Message string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, `{"error":{"message":"bad json","status":400}}`, http.StatusBadRequest)
			return
		}
		a.turns.Add(1)
		a.mu.Lock()
		a.last.Session, a.last.Message = req.Session, req.Message
		a.mu.Unlock()
		if d := time.Duration(a.Delay.Load()); d > 0 {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"session": req.Session, "reply": "echo: " + req.Message})
	}))
	t.Cleanup(a.Close)
	return a
}

// Turns is how many turns reached the agent.
func (a *Agent) Turns() int64 { return a.turns.Load() }

// Last is the last turn's session and message.
func (a *Agent) Last() (session, message string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last.Session, a.last.Message
}

// Headers returns a RoundTripper that sets h on every request before next
// sends it: what a caller (its card) or the gateway (the caller's
// identity) adds to each call.
func Headers(next http.RoundTripper, h map[string]string) http.RoundTripper {
	return headers{next, h}
}

type headers struct {
	next http.RoundTripper
	h    map[string]string
}

func (t headers) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range t.h {
		if v != "" {
			r.Header.Set(k, v)
		}
	}
	return t.next.RoundTrip(r)
}
