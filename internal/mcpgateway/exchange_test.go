package mcpgateway

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/mcpgateway/mcpauthtest"
	"github.com/kars-io/kars/internal/routerconfig"
)

const sandboxSubject = "system:serviceaccount:team-a:kars-sandbox-bot"

// exchangeSetup is an authorization server, an MCP server it protects, a
// subject token for the sandbox, and a gateway toward the server whose
// agent-facing side is recorded.
type exchangeSetup struct {
	as      *mcpauthtest.AuthServer
	up      *mcpauthtest.MCPServer
	subject string
	g       *Gateway
	rec     *recorder
	wire    *mcpauthtest.Wire
	agent   *httptest.Server
}

func newExchangeSetup(t *testing.T, mutate func(*routerconfig.MCPAuth)) *exchangeSetup {
	t.Helper()
	iss := mcpauthtest.NewIssuer("https://kubernetes.default.svc")
	as := mcpauthtest.StartAuthServer(iss)
	t.Cleanup(as.Close)
	up := mcpauthtest.StartMCPServer(as)
	t.Cleanup(up.Close)
	subjectFile := filepath.Join(t.TempDir(), "token")
	subject := iss.Mint(sandboxSubject, as.URL, time.Hour)
	os.WriteFile(subjectFile, []byte(subject), 0o600)
	a := &routerconfig.MCPAuth{Mode: routerconfig.MCPAuthOAuthTokenExchange, SubjectTokenFile: subjectFile,
		Scopes: []string{"tools"}, Audience: "protected-mcp"}
	if mutate != nil {
		mutate(a)
	}
	roots := mcpauthtest.Roots(as.Server, up.Server)
	base := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	pool := NewPool(base, &http.Client{Transport: base.Clone(), Timeout: 10 * time.Second})
	t.Cleanup(pool.Close)
	rec := newRecorder(t, governance.Rule{Name: "tools", Effect: governance.EffectAllow, Actions: []string{"mcp:protected.*"}})
	g := New([]routerconfig.MCPServer{{Name: "protected", URL: up.Endpoint, Tools: []string{"*"}, Auth: a}}, pool, rec, nil)
	w := &mcpauthtest.Wire{}
	agent := httptest.NewServer(w.Wrap(g))
	t.Cleanup(agent.Close)
	return &exchangeSetup{as: as, up: up, subject: subject, g: g, rec: rec, wire: w, agent: agent}
}

// noTokens fails when the agent-facing traffic or the audit entries hold
// the subject token or any access token the authorization server issued.
func (s *exchangeSetup) noTokens(t *testing.T) {
	t.Helper()
	seen := s.wire.String()
	audit := ""
	for _, e := range s.rec.entries() {
		audit += e.Action + " " + e.Decision + " " + e.Rule + " " + e.Payload + "\n"
	}
	secrets := []string{s.subject}
	for tok := range s.as.Issued() {
		secrets = append(secrets, tok)
	}
	for _, sec := range secrets {
		if strings.Contains(seen, sec) || strings.Contains(audit, sec) {
			t.Fatalf("a token reached the agent or the audit entries: %.20s…", sec)
		}
		// Not even a part long enough to be useful.
		if strings.Contains(seen, sec[len(sec)-16:]) {
			t.Fatal("part of a token reached the agent")
		}
	}
	if len(seen) == 0 {
		t.Fatal("nothing recorded on the agent side")
	}
}

// The gateway exchanges the sandbox's workload identity token for an
// access token bound to the MCP server (RFC 8693 with an RFC 8707
// resource), discovering the token endpoint from the server's 401 (RFC
// 9728 → RFC 8414); it caches the token, exchanges again once when the
// server stops accepting it, and the agent never sees either token.
func TestOAuthTokenExchange(t *testing.T) {
	s := newExchangeSetup(t, nil)
	cs := connect(t, s.agent.URL+routerconfig.MCPPath("protected"), "")
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "whoami", Arguments: map[string]any{}})
	if err != nil || text(res) != "acting for "+sandboxSubject {
		t.Fatalf("whoami through token exchange: %v %+v", err, res)
	}
	for i := range 3 {
		res, err = cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "hi"}})
		if err != nil || text(res) != "Echo: hi" {
			t.Fatalf("call %d: %v %+v", i, err, res)
		}
	}
	if n := s.as.Exchanges.Load(); n != 1 {
		t.Fatalf("%d exchanges for four calls, want 1 (cached)", n)
	}
	ex := s.as.Seen()[0]
	want := map[string]string{
		"grant_type":           "urn:ietf:params:oauth:grant-type:token-exchange",
		"subject_token":        s.subject,
		"subject_token_type":   "urn:ietf:params:oauth:token-type:jwt",
		"requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
		"resource":             s.up.Endpoint,
		"audience":             "protected-mcp",
		"scope":                "tools",
	}
	for k, v := range want {
		if got := ex.Form[k]; len(got) != 1 || got[0] != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if ex.ContentType != "application/x-www-form-urlencoded" || ex.Authorization != "" {
		t.Errorf("token request: Content-Type %q, Authorization %q", ex.ContentType, ex.Authorization)
	}
	// The server stops accepting the token: one new exchange, and the
	// call goes through.
	s.as.RevokeAll()
	res, err = cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "again"}})
	if err != nil || text(res) != "Echo: again" {
		t.Fatalf("call after revocation: %v %+v", err, res)
	}
	if n := s.as.Exchanges.Load(); n != 2 {
		t.Fatalf("%d exchanges after a revocation, want 2", n)
	}
	for _, a := range s.up.Authorizations() {
		if a != "" && !strings.HasPrefix(a, "Bearer at-") {
			t.Fatalf("the MCP server saw Authorization %q", a)
		}
	}
	if names := toolNames(t, cs); strings.Join(names, ",") != "echo,whoami" {
		t.Fatalf("tools/list %v", names)
	}
	s.noTokens(t)
}

// A configured token endpoint is used as is, and client authentication is
// HTTP Basic when a client secret is configured.
func TestOAuthTokenExchangeConfiguredEndpointAndClient(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("s3cret"), 0o600)
	s := newExchangeSetup(t, func(a *routerconfig.MCPAuth) {
		a.ClientID, a.ClientSecretFile = "kars-router", secret
	})
	// Point at the token endpoint now that it is known.
	srv := s.g.servers["protected"]
	srv.up.http.Transport.(*authTransport).disc.tokenURL = s.as.URL + "/token"
	cs := connect(t, s.agent.URL+routerconfig.MCPPath("protected"), "")
	if res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "x"}}); err != nil || text(res) != "Echo: x" {
		t.Fatalf("%v %+v", err, res)
	}
	seen := s.as.Seen()
	if len(seen) != 1 || !strings.HasPrefix(seen[0].Authorization, "Basic ") || seen[0].Form["client_secret"] != nil {
		t.Fatalf("token requests %+v", seen)
	}
	// No request went to the server's metadata: the first MCP request
	// already carried a token.
	if a := s.up.Authorizations(); len(a) == 0 || a[0] == "" {
		t.Fatalf("first MCP request without a token: %q", a)
	}
}

// Hostile or failing authorization servers: the call fails closed (the
// tool does not run), the admin status says why without any token, and
// the agent learns only that the router holds no credential.
func TestOAuthTokenExchangeFailures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		respond func(s *exchangeSetup) func(http.ResponseWriter, *http.Request, string)
		subject func(s *exchangeSetup) string // replaces the subject token file's content
		status  string                        // in the admin status
	}{
		{name: "invalid_grant echoing the subject token", status: "invalid_grant",
			respond: func(s *exchangeSetup) func(http.ResponseWriter, *http.Request, string) {
				return func(w http.ResponseWriter, r *http.Request, _ string) {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusBadRequest)
					io.WriteString(w, `{"error":"invalid_grant","error_description":"bad token `+r.PostForm.Get("subject_token")+`"}`)
				}
			}},
		{name: "not JSON", status: "not a JSON token response",
			respond: func(*exchangeSetup) func(http.ResponseWriter, *http.Request, string) {
				return func(w http.ResponseWriter, _ *http.Request, _ string) { io.WriteString(w, "<html>login</html>") }
			}},
		{name: "server error", status: "HTTP 502",
			respond: func(*exchangeSetup) func(http.ResponseWriter, *http.Request, string) {
				return func(w http.ResponseWriter, _ *http.Request, _ string) {
					http.Error(w, "bad gateway", http.StatusBadGateway)
				}
			}},
		{name: "not Bearer", status: `token_type "N_A"`,
			respond: func(*exchangeSetup) func(http.ResponseWriter, *http.Request, string) {
				return func(w http.ResponseWriter, _ *http.Request, body string) {
					io.WriteString(w, strings.Replace(body, `"Bearer"`, `"N_A"`, 1))
				}
			}},
		{name: "a refresh token", status: "is not an access token",
			respond: func(*exchangeSetup) func(http.ResponseWriter, *http.Request, string) {
				return func(w http.ResponseWriter, _ *http.Request, body string) {
					io.WriteString(w, strings.Replace(body, "token-type:access_token", "token-type:refresh_token", 1))
				}
			}},
		{name: "header injection in the token", status: "not a valid Bearer token",
			respond: func(*exchangeSetup) func(http.ResponseWriter, *http.Request, string) {
				return func(w http.ResponseWriter, _ *http.Request, body string) {
					io.WriteString(w, strings.Replace(body, `"at-`, `"x\r\nX-Evil: 1\r\n`, 1))
				}
			}},
		{name: "redirect", status: "HTTP 307",
			respond: func(s *exchangeSetup) func(http.ResponseWriter, *http.Request, string) {
				return func(w http.ResponseWriter, r *http.Request, _ string) {
					http.Redirect(w, r, s.up.URL+"/collect", http.StatusTemporaryRedirect)
				}
			}},
		{name: "huge", status: "exceeds",
			respond: func(*exchangeSetup) func(http.ResponseWriter, *http.Request, string) {
				return func(w http.ResponseWriter, _ *http.Request, _ string) {
					io.WriteString(w, `{"access_token":"`+strings.Repeat("a", 1<<20)+`","token_type":"Bearer"}`)
				}
			}},
		{name: "no subject token", status: "no workload identity token is projected here",
			subject: func(s *exchangeSetup) string { return "" }},
		{name: "expired subject token", status: "invalid_grant: the subject token has expired",
			subject: func(s *exchangeSetup) string {
				return s.as.Issuer.Mint(sandboxSubject, s.as.URL, -time.Minute)
			}},
		{name: "subject token for another audience", status: "invalid_grant: audience",
			subject: func(s *exchangeSetup) string {
				return s.as.Issuer.Mint(sandboxSubject, "https://elsewhere", time.Hour)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newExchangeSetup(t, nil)
			if tc.respond != nil {
				s.as.Respond = tc.respond(s)
			}
			if tc.subject != nil {
				s.subject = tc.subject(s)
				a := s.g.servers["protected"].cfg.Auth
				if s.subject == "" {
					os.Remove(a.SubjectTokenFile)
					s.subject = "no-subject-token-at-all"
				} else {
					os.WriteFile(a.SubjectTokenFile, []byte(s.subject), 0o600)
				}
			}
			st := s.g.Status(context.Background())
			if len(st) != 1 || !strings.Contains(st[0].Error, tc.status) || !strings.Contains(st[0].Error, "OAuth token exchange") || st[0].Reason != ReasonCredential {
				t.Fatalf("status: %+v, want an error with %q", st, tc.status)
			}
			if strings.Contains(st[0].Error, s.subject) || strings.Contains(st[0].Error, s.subject[len(s.subject)-16:]) {
				t.Fatalf("the status holds the subject token: %s", st[0].Error)
			}
			cs := connect(t, s.agent.URL+routerconfig.MCPPath("protected"), "")
			_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "x"}})
			if err == nil || !strings.Contains(err.Error(), "holds no credential for the MCP server protected") {
				t.Fatalf("call: %v, want the no-credential error", err)
			}
			if strings.Contains(s.wire.String(), tc.status) {
				t.Fatalf("the agent saw the authorization server's answer")
			}
			if s.up.Calls.Load() != 0 {
				t.Fatal("a tool ran without a token")
			}
			s.noTokens(t)
		})
	}
}

// A server that never accepts the token (issued for another resource) is
// asked once more with a fresh token per request, not in a loop.
func TestOAuthTokenExchangeRetriesOnce(t *testing.T) {
	s := newExchangeSetup(t, func(a *routerconfig.MCPAuth) { a.Resource = "https://other.example/mcp" })
	st := s.g.Status(context.Background())
	if len(st) != 1 || st[0].Error == "" {
		t.Fatalf("status %+v", st)
	}
	if n := s.as.Exchanges.Load(); n < 1 || n > 2 {
		t.Fatalf("%d exchanges for one listing, want 1 or 2", n)
	}
	if s.up.Calls.Load() != 0 {
		t.Fatal("a tool ran")
	}
}

// With no scopes configured the router asks for what the server names
// (MCP authorization, "Scope Selection Strategy"): the scope of its
// challenge. A token that lacks a scope the server then asks for (403
// with the scope in its challenge) is exchanged once more for it.
func TestOAuthTokenExchangeScopeFromTheServer(t *testing.T) {
	s := newExchangeSetup(t, func(a *routerconfig.MCPAuth) { a.Scopes = nil })
	cs := connect(t, s.agent.URL+routerconfig.MCPPath("protected"), "")
	if res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "x"}}); err != nil || text(res) != "Echo: x" {
		t.Fatalf("%v %+v", err, res)
	}
	if seen := s.as.Seen(); len(seen) != 1 || seen[0].Form["scope"][0] != "tools" {
		t.Fatalf("token requests %+v, want one for scope tools", seen)
	}

	// Step-up: the first token is issued without the scope (the server's
	// first answer named none), so the server answers 403 naming it.
	s = newExchangeSetup(t, func(a *routerconfig.MCPAuth) { a.Scopes = nil })
	tr := s.g.servers["protected"].up.http.Transport.(*authTransport)
	tr.disc.tokenURL = s.as.URL + "/token" // no metadata fetch, no challenge yet
	cs = connect(t, s.agent.URL+routerconfig.MCPPath("protected"), "")
	if res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "y"}}); err != nil || text(res) != "Echo: y" {
		t.Fatalf("%v %+v", err, res)
	}
	seen := s.as.Seen()
	if len(seen) < 2 || seen[0].Form["scope"] != nil || seen[len(seen)-1].Form["scope"][0] != "tools" {
		t.Fatalf("token requests %+v, want one without scope, then one for tools", seen)
	}
	if len(seen) > 2 {
		t.Fatalf("%d token requests, want 2", len(seen))
	}
}
