package mcpgateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/modelcontextprotocol/go-sdk/oauthex"

	"github.com/kars-io/kars/internal/routerconfig"
)

// authServer is an OAuth 2.1 authorization server on loopback: RFC 8414
// metadata and a token endpoint that runs the client credentials grant
// with client_secret_basic, binding each token to the RFC 8707 resource
// it was asked for.
type authServer struct {
	url    string
	grants atomic.Int64
	mu     sync.Mutex
	tokens map[string]string // token -> resource
	ttl    int
}

func startAuthServer(t *testing.T, clientID, secret string) *authServer {
	t.Helper()
	as := &authServer{tokens: map[string]string{}, ttl: 3600}
	mux := http.NewServeMux()
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	as.url = hs.URL
	mux.HandleFunc("/.well-known/oauth-authorization-server", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(oauthex.AuthServerMeta{
			Issuer: as.url, AuthorizationEndpoint: as.url + "/authorize", TokenEndpoint: as.url + "/token",
			ResponseTypesSupported: []string{"code"}, GrantTypesSupported: []string{"authorization_code", "client_credentials"},
			TokenEndpointAuthMethodsSupported: []string{"client_secret_basic"}, CodeChallengeMethodsSupported: []string{"S256"},
		})
	})
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		id, sec, ok := r.BasicAuth()
		r.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		if !ok || id != clientID || sec != secret {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":"invalid_client"}`)
			return
		}
		if r.PostForm.Get("grant_type") != "client_credentials" {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"error":"unsupported_grant_type"}`)
			return
		}
		as.grants.Add(1)
		b := make([]byte, 16)
		rand.Read(b)
		tok := hex.EncodeToString(b)
		as.mu.Lock()
		as.tokens[tok] = r.PostForm.Get("resource")
		as.mu.Unlock()
		fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":%d,"scope":%q}`, tok, as.ttl, r.PostForm.Get("scope"))
	})
	return as
}

func (as *authServer) revokeAll() {
	as.mu.Lock()
	as.tokens = map[string]string{}
	as.mu.Unlock()
}

// protectedUpstream is an MCP server that accepts only tokens issued by as
// for its own URL, and says where to get one (RFC 9728).
func protectedUpstream(t *testing.T, as *authServer) *upstreamServer {
	var resource string
	verify := func(_ context.Context, tok string, _ *http.Request) (*auth.TokenInfo, error) {
		as.mu.Lock()
		res, ok := as.tokens[tok]
		as.mu.Unlock()
		if !ok || res != resource {
			return nil, auth.ErrInvalidToken
		}
		return &auth.TokenInfo{Scopes: []string{"tools"}, Expiration: time.Now().Add(time.Hour)}, nil
	}
	var metaURL string
	up := startUpstream(t, true, func(h http.Handler) http.Handler {
		mux := http.NewServeMux()
		mux.HandleFunc("/.well-known/oauth-protected-resource/mcp", func(w http.ResponseWriter, r *http.Request) {
			auth.ProtectedResourceMetadataHandler(&oauthex.ProtectedResourceMetadata{Resource: resource, AuthorizationServers: []string{as.url}}).ServeHTTP(w, r)
		})
		mux.Handle("/mcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			auth.RequireBearerToken(verify, &auth.RequireBearerTokenOptions{ResourceMetadataURL: metaURL, Scopes: []string{"tools"}})(h).ServeHTTP(w, r)
		}))
		return mux
	})
	resource = up.url
	metaURL = strings.TrimSuffix(up.url, "/mcp") + "/.well-known/oauth-protected-resource/mcp"
	return up
}

// The gateway discovers the authorization server from the MCP server's
// 401 (RFC 9728), runs the client credentials grant for the server's URL
// as resource (RFC 8707), and fetches a new token when the server stops
// accepting the old one. The agent never holds either credential.
func TestOAuthClientCredentials(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secretFile, []byte("client-secret\n"), 0o600)
	as := startAuthServer(t, "kars-router", "client-secret")
	up := protectedUpstream(t, as)
	rec := newRecorder(t, allowEcho)
	cs, _ := gatewayFor(t, routerconfig.MCPServer{Name: "everything", URL: up.url, Tools: []string{"echo"},
		Auth: &routerconfig.MCPAuth{Mode: routerconfig.MCPAuthOAuthClientCredentials, ClientID: "kars-router", ClientSecretFile: secretFile, Scopes: []string{"tools"}}}, rec)
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "oauth"}})
	if err != nil || text(res) != "Echo: oauth" {
		t.Fatalf("call through OAuth: %v %+v", err, res)
	}
	if as.grants.Load() != 1 {
		t.Fatalf("%d grants for one session, want 1", as.grants.Load())
	}
	// Revoked: the next call is answered 401, the gateway gets a new token
	// and sends the call again.
	as.revokeAll()
	res, err = cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "again"}})
	if err != nil || text(res) != "Echo: again" {
		t.Fatalf("call after revocation: %v %+v", err, res)
	}
	if as.grants.Load() != 2 {
		t.Fatalf("%d grants after a revocation, want 2", as.grants.Load())
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	for _, a := range up.auth {
		if a != "" && !strings.HasPrefix(a, "Bearer ") {
			t.Fatalf("unexpected Authorization %q", a)
		}
	}
}

func TestOAuthWrongSecretFailsClosed(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secretFile, []byte("wrong"), 0o600)
	as := startAuthServer(t, "kars-router", "client-secret")
	up := protectedUpstream(t, as)
	pool := NewPool(nil, nil)
	defer pool.Close()
	g := New([]routerconfig.MCPServer{{Name: "everything", URL: up.url, Tools: []string{"echo"},
		Auth: &routerconfig.MCPAuth{Mode: routerconfig.MCPAuthOAuthClientCredentials, ClientID: "kars-router", ClientSecretFile: secretFile, Scopes: []string{"tools"}}}},
		pool, newRecorder(t, allowEcho), nil)
	st := g.Status(context.Background())
	if len(st) != 1 || !strings.Contains(st[0].Error, "invalid_client") || len(st[0].Tools) != 0 {
		t.Fatalf("status with a wrong secret: %+v", st)
	}
	if up.calls.Load() != 0 {
		t.Fatal("a tool ran without a token")
	}
}

func TestResourceMetadataURL(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string
	}{
		{[]string{`Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource"`}, "https://mcp.example.com/.well-known/oauth-protected-resource"},
		{[]string{`Basic realm="x", Bearer error="invalid_token", resource_metadata="http://127.0.0.1:9/m"`}, "http://127.0.0.1:9/m"},
		{[]string{`Bearer realm="x"`}, ""},
		{[]string{`Bearer resource_metadata="/relative"`}, ""},
		{[]string{`"broken`}, ""},
		{nil, ""},
	} {
		if got := ResourceMetadataURL(tc.in); got != tc.want {
			t.Errorf("ResourceMetadataURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := wellKnownResourceMetadata("https://mcp.example.com/api/mcp?x=1"); got != "https://mcp.example.com/.well-known/oauth-protected-resource/api/mcp" {
		t.Errorf("well-known URL: %s", got)
	}
}
