package peer

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kars-io/kars/internal/a2a/a2atest"
	"github.com/kars-io/kars/internal/a2a/card"
)

// partner serves a 1.0 card signed by signer, with the key either in the
// signature's jwk or only in the JWKS its jku names, over TLS on loopback.
func partner(t *testing.T, signer *a2atest.Identity, inHeader bool) (*httptest.Server, *x509.CertPool) {
	t.Helper()
	mux := http.NewServeMux()
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	raw, _ := json.Marshal(map[string]any{
		"name": "partner", "description": "d", "version": "1",
		"supportedInterfaces": []any{
			map[string]any{"url": srv.URL + "/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
			map[string]any{"url": srv.URL + "/a2a03", "protocolBinding": "JSONRPC", "protocolVersion": "0.3"},
		},
		"skills": []any{map[string]any{"id": "plan", "name": "plan", "description": "p", "tags": []string{"x"}}},
	})
	payload, _ := card.Canonical(raw)
	key := signer.Key.(ed25519.PrivateKey)
	var sig card.Signature
	if inHeader {
		sig, _ = card.Sign(key, payload, card.Header{})
	} else {
		ph, _ := json.Marshal(card.Header{Alg: "EdDSA", Kid: "k1", Jku: srv.URL + "/jwks.json"})
		protected := base64.RawURLEncoding.EncodeToString(ph)
		s := ed25519.Sign(key, []byte(protected+"."+base64.RawURLEncoding.EncodeToString(payload)))
		sig = card.Signature{Protected: protected, Signature: base64.RawURLEncoding.EncodeToString(s)}
	}
	var m map[string]any
	json.Unmarshal(raw, &m)
	m["signatures"] = []card.Signature{sig}
	signed, _ := json.Marshal(m)
	jwk, _ := card.JWKFor(key.Public())
	jwk.Kid = "k1"
	mux.HandleFunc("/.well-known/agent-card.json", func(w http.ResponseWriter, _ *http.Request) { w.Write(signed) })
	mux.HandleFunc("/jwks.json", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(card.JWKS{Keys: []card.JWK{jwk}})
	})
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/.well-known/agent-card.json", http.StatusFound)
	})
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return srv, pool
}

func TestFetchVerifies(t *testing.T) {
	signer := a2atest.NewIdentity(t, "partner")
	for _, inHeader := range []bool{true, false} {
		srv, pool := partner(t, signer, inHeader)
		f := &Fetcher{AllowPrivate: true, RootCAs: pool}
		v, err := f.Fetch(context.Background(), srv.URL+"/.well-known/agent-card.json", signer.Thumbprint(t), "1.0")
		if err != nil {
			t.Fatalf("jwk in header %v: %v", inHeader, err)
		}
		if v.Endpoint != srv.URL+"/a2a" || v.Name != "partner" || len(v.Skills) != 1 || !strings.HasPrefix(v.CardDigest, "sha256:") {
			t.Fatalf("%+v", v)
		}
		if v, err := f.Fetch(context.Background(), srv.URL+"/.well-known/agent-card.json", signer.Thumbprint(t), "0.3"); err != nil || v.Endpoint != srv.URL+"/a2a03" {
			t.Fatalf("0.3: %+v %v", v, err)
		}
	}
}

func TestFetchRefuses(t *testing.T) {
	signer := a2atest.NewIdentity(t, "partner")
	other := a2atest.NewIdentity(t, "other")
	srv, pool := partner(t, signer, true)
	ctx := context.Background()
	url := srv.URL + "/.well-known/agent-card.json"
	allow := &Fetcher{AllowPrivate: true, RootCAs: pool}
	if _, err := allow.Fetch(ctx, url, other.Thumbprint(t), "1.0"); err == nil || !strings.Contains(err.Error(), "not by the pinned") {
		t.Errorf("another pinned key: %v", err)
	}
	if _, err := allow.Fetch(ctx, srv.URL+"/moved", signer.Thumbprint(t), "1.0"); err == nil || !strings.Contains(err.Error(), "redirects") {
		t.Errorf("redirect: %v", err)
	}
	if _, err := allow.Fetch(ctx, strings.Replace(url, "https", "http", 1), signer.Thumbprint(t), "1.0"); err == nil {
		t.Error("http URL fetched")
	}
	if _, err := allow.Fetch(ctx, url, signer.Thumbprint(t), "2.0"); err == nil {
		t.Error("a version the card does not serve")
	}
	// The default fetcher does not connect to loopback (nor any
	// non-public address): a registration cannot make the controller
	// probe the cluster.
	strict := &Fetcher{RootCAs: pool}
	if _, err := strict.Fetch(ctx, url, signer.Thumbprint(t), "1.0"); !errors.Is(err, ErrNotPublic) {
		t.Errorf("loopback fetched by the default fetcher: %v", err)
	}
}
