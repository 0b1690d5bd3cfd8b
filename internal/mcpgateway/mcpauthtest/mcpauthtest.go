// Package mcpauthtest runs, on loopback over real TLS, the two peers of an
// MCP gateway that authenticates with OAuth token exchange (RFC 8693): an
// authorization server that speaks the token endpoint's wire protocol
// (form-encoded POST, JSON token responses, RFC 6749 §5.2 errors, RFC 8414
// metadata) and trusts a workload identity issuer's signed JWTs as subject
// tokens; and an MCP server (the official Go SDK) that accepts only access
// tokens that authorization server issued for it, and says where to get
// one (RFC 9728). It is for tests.
package mcpauthtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/modelcontextprotocol/go-sdk/oauthex"
)

// Issuer signs workload identity tokens (ES256 JWTs) the way a
// Kubernetes API server signs projected ServiceAccount tokens.
type Issuer struct {
	URL string
	key *ecdsa.PrivateKey
}

// NewIssuer makes an issuer with a fresh key.
func NewIssuer(url string) *Issuer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return &Issuer{URL: url, key: k}
}

var b64 = base64.RawURLEncoding

// Mint returns a JWT for sub with audience aud, valid for ttl.
func (is *Issuer) Mint(sub, aud string, ttl time.Duration) string {
	now := time.Now()
	h, _ := json.Marshal(map[string]any{"alg": "ES256", "typ": "JWT", "kid": "k1"})
	p, _ := json.Marshal(map[string]any{"iss": is.URL, "sub": sub, "aud": []string{aud},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(ttl).Unix()})
	in := b64.EncodeToString(h) + "." + b64.EncodeToString(p)
	d := sha256.Sum256([]byte(in))
	r, s, err := ecdsa.Sign(rand.Reader, is.key, d[:])
	if err != nil {
		panic(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return in + "." + b64.EncodeToString(sig)
}

// claims are the parts of a subject token the authorization server checks.
type claims struct {
	Iss string   `json:"iss"`
	Sub string   `json:"sub"`
	Aud []string `json:"aud"`
	Exp int64    `json:"exp"`
}

// verify checks a JWT's ES256 signature, issuer, audience and expiry.
func (is *Issuer) verify(tok, aud string) (claims, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return claims{}, errors.New("not a JWT")
	}
	sig, err := b64.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return claims{}, errors.New("bad signature encoding")
	}
	d := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(&is.key.PublicKey, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return claims{}, errors.New("signature does not verify")
	}
	raw, err := b64.DecodeString(parts[1])
	if err != nil {
		return claims{}, err
	}
	var c claims
	if err := json.Unmarshal(raw, &c); err != nil {
		return claims{}, err
	}
	switch {
	case c.Iss != is.URL:
		return c, fmt.Errorf("issuer %q is not trusted", c.Iss)
	case !slices.Contains(c.Aud, aud):
		return c, fmt.Errorf("audience %v does not include %q", c.Aud, aud)
	case time.Now().Unix() >= c.Exp:
		return c, errors.New("the subject token has expired")
	}
	return c, nil
}

// Grant is what the authorization server issued one token for.
type Grant struct {
	Subject, Resource, Audience, Scope string
}

// Exchange is one token request as the server received it.
type Exchange struct {
	Form          map[string][]string
	ContentType   string
	Authorization string
}

// AuthServer is an RFC 8693 authorization server over TLS.
type AuthServer struct {
	*httptest.Server
	// Issuer signs the subject tokens it accepts; SubjectAudience is the
	// audience they must carry (its own URL unless set).
	Issuer          *Issuer
	SubjectAudience string
	// TTL is the expires_in of issued tokens.
	TTL int
	// Respond, when set, answers token requests in place of the server
	// (hostile or failing authorization servers); it gets the body the
	// server would have sent.
	Respond func(w http.ResponseWriter, r *http.Request, token string)

	Exchanges atomic.Int64
	mu        sync.Mutex
	tokens    map[string]Grant
	seen      []Exchange
}

// StartAuthServer starts an authorization server that trusts iss.
func StartAuthServer(iss *Issuer) *AuthServer {
	as := &AuthServer{Issuer: iss, TTL: 3600, tokens: map[string]Grant{}}
	mux := http.NewServeMux()
	as.Server = httptest.NewTLSServer(mux)
	mux.HandleFunc("GET /.well-known/oauth-authorization-server", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(oauthex.AuthServerMeta{
			Issuer: as.URL, AuthorizationEndpoint: as.URL + "/authorize", TokenEndpoint: as.URL + "/token",
			ResponseTypesSupported: []string{"code"}, CodeChallengeMethodsSupported: []string{"S256"},
			GrantTypesSupported:               []string{"authorization_code", "urn:ietf:params:oauth:grant-type:token-exchange"},
			TokenEndpointAuthMethodsSupported: []string{"none", "client_secret_basic"},
		})
	})
	mux.HandleFunc("/token", as.token)
	return as
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

// token is the token endpoint (RFC 8693 §2).
func (as *AuthServer) token(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		oauthError(w, http.StatusMethodNotAllowed, "invalid_request", "the token endpoint takes POST")
		return
	}
	ct := r.Header.Get("Content-Type")
	if ct != "application/x-www-form-urlencoded" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "the request must be form-encoded")
		return
	}
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "unreadable form")
		return
	}
	as.mu.Lock()
	as.seen = append(as.seen, Exchange{Form: r.PostForm, ContentType: ct, Authorization: r.Header.Get("Authorization")})
	as.mu.Unlock()
	f := r.PostForm
	for k, v := range f {
		if len(v) != 1 {
			oauthError(w, http.StatusBadRequest, "invalid_request", "parameter "+k+" repeated")
			return
		}
	}
	if f.Get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange" {
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "only token exchange")
		return
	}
	if f.Get("subject_token_type") != "urn:ietf:params:oauth:token-type:jwt" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "subject_token_type must be jwt")
		return
	}
	aud := as.SubjectAudience
	if aud == "" {
		aud = as.URL
	}
	c, err := as.Issuer.verify(f.Get("subject_token"), aud)
	if err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_grant", err.Error())
		return
	}
	if f.Get("resource") == "" {
		oauthError(w, http.StatusBadRequest, "invalid_target", "name the resource (RFC 8707)")
		return
	}
	b := make([]byte, 24)
	rand.Read(b)
	tok := "at-" + hex.EncodeToString(b)
	body := fmt.Sprintf(`{"access_token":%q,"issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":%d,"scope":%q}`,
		tok, as.TTL, f.Get("scope"))
	if as.Respond != nil {
		as.Respond(w, r, body)
		return
	}
	as.Exchanges.Add(1)
	as.mu.Lock()
	as.tokens[tok] = Grant{Subject: c.Sub, Resource: f.Get("resource"), Audience: f.Get("audience"), Scope: f.Get("scope")}
	as.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	fmt.Fprint(w, body)
}

// Seen returns the token requests received so far.
func (as *AuthServer) Seen() []Exchange {
	as.mu.Lock()
	defer as.mu.Unlock()
	return slices.Clone(as.seen)
}

// Issued returns every access token issued, with its grant.
func (as *AuthServer) Issued() map[string]Grant {
	as.mu.Lock()
	defer as.mu.Unlock()
	out := map[string]Grant{}
	for k, v := range as.tokens {
		out[k] = v
	}
	return out
}

// RevokeAll forgets every issued token.
func (as *AuthServer) RevokeAll() {
	as.mu.Lock()
	as.tokens = map[string]Grant{}
	as.mu.Unlock()
}

func (as *AuthServer) lookup(tok string) (Grant, bool) {
	as.mu.Lock()
	defer as.mu.Unlock()
	g, ok := as.tokens[tok]
	return g, ok
}

// MCPServer is an MCP server (the official Go SDK) over TLS that accepts
// only access tokens its authorization server issued for its URL with the
// scope "tools" (401 without one; 403, naming the scope, with one that
// lacks it). Its tools: echo, and whoami (answers the token's subject).
type MCPServer struct {
	*httptest.Server
	// Endpoint is the MCP endpoint's URL (and the resource identifier).
	Endpoint string
	Calls    atomic.Int64
	mu       sync.Mutex
	auth     []string
}

// StartMCPServer starts an MCP server protected by as. Its 401 names its
// protected resource metadata (RFC 9728 §5.1), which names as.
func StartMCPServer(as *AuthServer) *MCPServer {
	m := &MCPServer{}
	srv := mcp.NewServer(&mcp.Implementation{Name: "protected", Version: "1"}, nil)
	srv.AddTool(&mcp.Tool{Name: "echo", InputSchema: map[string]any{"type": "object"}}, func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		m.Calls.Add(1)
		var a struct{ Message string }
		json.Unmarshal(req.Params.Arguments, &a)
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "Echo: " + a.Message}}}, nil
	})
	srv.AddTool(&mcp.Tool{Name: "whoami", InputSchema: map[string]any{"type": "object"}}, func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		m.Calls.Add(1)
		sub := ""
		if ti := req.Extra.TokenInfo; ti != nil {
			sub = ti.UserID
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "acting for " + sub}}}, nil
	})
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{Stateless: true, JSONResponse: true})
	mux := http.NewServeMux()
	m.Server = httptest.NewTLSServer(mux)
	m.Endpoint = m.URL + "/mcp"
	metaURL := m.URL + "/.well-known/oauth-protected-resource/mcp"
	mux.Handle("/.well-known/oauth-protected-resource/mcp", auth.ProtectedResourceMetadataHandler(&oauthex.ProtectedResourceMetadata{
		Resource: m.Endpoint, AuthorizationServers: []string{as.URL}, ScopesSupported: []string{"tools"}}))
	verify := func(_ context.Context, tok string, _ *http.Request) (*auth.TokenInfo, error) {
		g, ok := as.lookup(tok)
		if !ok || g.Resource != m.Endpoint {
			return nil, auth.ErrInvalidToken
		}
		// A token without the scope "tools" is answered 403 by the
		// middleware, with the scope in its challenge.
		return &auth.TokenInfo{Scopes: strings.Fields(g.Scope), Expiration: time.Now().Add(time.Hour), UserID: g.Subject}, nil
	}
	protected := auth.RequireBearerToken(verify, &auth.RequireBearerTokenOptions{ResourceMetadataURL: metaURL, Scopes: []string{"tools"}})(h)
	mux.Handle("/mcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		m.auth = append(m.auth, r.Header.Get("Authorization"))
		m.mu.Unlock()
		protected.ServeHTTP(w, r)
	}))
	return m
}

// Authorizations returns the Authorization headers the server received.
func (m *MCPServer) Authorizations() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.auth)
}

// Roots is a pool trusting the TLS certificates of servers.
func Roots(servers ...*httptest.Server) *x509.CertPool {
	p := x509.NewCertPool()
	for _, s := range servers {
		p.AddCert(s.Certificate())
	}
	return p
}
