package mcpgateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/oauthex"

	"github.com/kars-io/kars/internal/credential"
	"github.com/kars-io/kars/internal/routerconfig"
)

// authTransport presents the router's credential to an MCP server. The
// agent's own Authorization header never reaches it: the gateway builds
// every upstream request itself (the SDK client), so nothing of the
// agent's request but the tool's name and arguments is forwarded.
type authTransport struct {
	server string
	base   http.RoundTripper
	// bearer is a static token (MCPAuthBearer); oauth a cached client
	// credentials grant (MCPAuthOAuthClientCredentials). At most one is
	// set.
	bearer *credential.KeyFile
	oauth  *credential.Cache
	disc   *discovery
}

func newAuthTransport(base http.RoundTripper, s routerconfig.MCPServer, tokenClient *http.Client) http.RoundTripper {
	a := s.Auth
	if a == nil {
		return base
	}
	t := &authTransport{server: s.Name, base: base}
	switch a.Mode {
	case routerconfig.MCPAuthBearer:
		t.bearer = &credential.KeyFile{Path: a.TokenFile}
	case routerconfig.MCPAuthOAuthClientCredentials:
		t.disc = &discovery{server: s.URL, tokenURL: a.TokenURL, client: tokenClient, grant: "client_credentials"}
		t.oauth = credential.NewCache(&credential.ClientCredentials{
			ClientID: a.ClientID, Secret: credential.KeyFile{Path: a.ClientSecretFile},
			Scopes: a.Scopes, DefaultScopes: t.disc.scopes, Resource: resourceOf(s), Endpoint: t.disc.endpoint, Client: tokenClient,
		})
	case routerconfig.MCPAuthOAuthTokenExchange:
		t.disc = &discovery{server: s.URL, tokenURL: a.TokenURL, client: tokenClient, grant: credential.GrantTokenExchange}
		x := &credential.TokenExchange{
			SubjectToken: credential.KeyFile{Path: a.SubjectTokenFile}, SubjectTokenType: a.SubjectTokenType,
			Resource: resourceOf(s), Audience: a.Audience, Scopes: a.Scopes, DefaultScopes: t.disc.scopes, ClientID: a.ClientID,
			Endpoint: t.disc.endpoint, Client: tokenClient,
		}
		if a.ClientSecretFile != "" {
			x.ClientSecret = &credential.KeyFile{Path: a.ClientSecretFile}
		}
		t.oauth = credential.NewCache(x)
	}
	if t.oauth != nil {
		// Tokens for MCP servers are often short-lived (minutes); refresh
		// a minute ahead rather than five, so that a 5-minute token is
		// still cached between calls.
		t.oauth.RefreshBefore = time.Minute
	}
	return t
}

// resourceOf is the RFC 8707 resource indicator for s: the configured one,
// else the server's URL (the MCP authorization specification's canonical
// server URI).
func resourceOf(s routerconfig.MCPServer) string {
	if s.Auth.Resource != "" {
		return s.Auth.Resource
	}
	return s.URL
}

// CredentialError is a failure to obtain the credential for an MCP server.
// Its message is safe for the router's log and the admin status (no
// token, no secret); the agent is told only that the router holds no
// credential for the server.
type CredentialError struct {
	Server string
	Err    error
}

func (e *CredentialError) Error() string {
	return "no credential for MCP server " + e.Server + ": " + e.Err.Error()
}

func (e *CredentialError) Unwrap() error { return e.Err }

// RoundTrip implements http.RoundTripper.
func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.bearer != nil {
		c, err := t.bearer.Credential(req.Context())
		if err != nil {
			return nil, &CredentialError{t.server, fmt.Errorf("bearer token: %w", err)}
		}
		return t.base.RoundTrip(withBearer(req, c.Secret))
	}
	// OAuth. Until the token endpoint is known (configured, or learnt
	// from a challenge or the well-known metadata), the first request
	// goes out without a token: the server's 401 says where to get one
	// (RFC 9728 §5.1).
	if t.disc.known() {
		c, err := t.oauth.Credential(req.Context())
		if err != nil {
			return nil, &CredentialError{t.server, err}
		}
		req = withBearer(req, c.Secret)
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	challenge := resp.Header.Values("WWW-Authenticate")
	// 401: no token, or one the server no longer takes. 403 with
	// insufficient_scope: the token lacks a scope the challenge names (MCP
	// authorization, "Scope Selection Strategy"; RFC 6750 §3.1).
	if resp.StatusCode != http.StatusUnauthorized && !(resp.StatusCode == http.StatusForbidden && stepUp(challenge)) {
		return resp, nil
	}
	// The token is missing, expired early, revoked or for another
	// audience: learn from the challenge, get a new one, retry once.
	t.disc.learn(challenge)
	if req.Body != nil && req.GetBody == nil {
		return resp, nil // cannot replay the body
	}
	t.oauth.Invalidate()
	c, err := t.oauth.Credential(req.Context())
	if err != nil {
		resp.Body.Close()
		return nil, &CredentialError{t.server, err}
	}
	retry := withBearer(req, c.Secret)
	if req.GetBody != nil {
		if retry.Body, err = req.GetBody(); err != nil {
			resp.Body.Close()
			return nil, err
		}
	}
	resp.Body.Close()
	return t.base.RoundTrip(retry)
}

func withBearer(req *http.Request, token string) *http.Request {
	r := req.Clone(req.Context())
	r.Header.Set("Authorization", "Bearer "+token)
	return r
}

// discovery finds an MCP server's token endpoint as the MCP authorization
// specification (2025-06-18 and later, "Authorization Server Discovery")
// prescribes: the protected resource metadata (RFC 9728) — at the URL of
// the resource_metadata parameter of the server's 401 challenge, else at
// the well-known URL derived from the server's — names the authorization
// server, whose metadata (RFC 8414, or OpenID Connect discovery) names the
// token endpoint.
type discovery struct {
	server string
	client *http.Client
	// grant is the grant_type the router will run, which the
	// authorization server must offer.
	grant    string
	mu       sync.Mutex
	tokenURL string
	post     bool
	// metadata is the protected resource metadata URL a challenge gave.
	metadata string
	// challengeScope is the scope of the server's last challenge;
	// metaScopes the scopes_supported of its resource metadata.
	challengeScope, metaScopes []string
}

// scopes are what the router asks for when the McpServer names none, as
// the MCP authorization specification's scope selection says: the scope
// of the server's challenge, else the scopes_supported of its protected
// resource metadata, else none.
func (d *discovery) scopes() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.challengeScope) > 0 {
		return d.challengeScope
	}
	return d.metaScopes
}

// stepUp reports whether a 403's Bearer challenge asks for more scope:
// error="insufficient_scope" (RFC 6750 §3.1), or — as the Go SDK's
// middleware answers, without the error code — a scope parameter.
func stepUp(headers []string) bool {
	cs, err := oauthex.ParseWWWAuthenticate(headers)
	if err != nil {
		return false
	}
	for _, c := range cs {
		if c.Scheme == "bearer" {
			return c.Params["error"] == "insufficient_scope" || c.Params["scope"] != ""
		}
	}
	return false
}

func (d *discovery) known() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.tokenURL != "" || d.metadata != ""
}

// learn records the resource_metadata URL of a Bearer challenge.
func (d *discovery) learn(headers []string) {
	u := ResourceMetadataURL(headers)
	var scope []string
	if cs, err := oauthex.ParseWWWAuthenticate(headers); err == nil {
		for _, c := range cs {
			if c.Scheme == "bearer" {
				scope = strings.Fields(c.Params["scope"])
				break
			}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(scope) > 0 {
		d.challengeScope = scope
	}
	if u != "" {
		d.metadata = u
	} else if d.metadata == "" {
		d.metadata = wellKnownResourceMetadata(d.server)
	}
}

// ResourceMetadataURL returns the resource_metadata parameter of the first
// Bearer challenge in WWW-Authenticate header values (RFC 9728 §5.1), or ""
// when there is none or the header does not parse. The value comes from
// the MCP server, which is trusted to name its own metadata; the fetch
// still refuses anything but HTTPS or loopback.
func ResourceMetadataURL(headers []string) string {
	cs, err := oauthex.ParseWWWAuthenticate(headers)
	if err != nil {
		return ""
	}
	for _, c := range cs {
		if c.Scheme == "bearer" {
			if u := c.Params["resource_metadata"]; u != "" {
				if p, err := url.Parse(u); err == nil && p.IsAbs() && p.Host != "" {
					return u
				}
			}
		}
	}
	return ""
}

// wellKnownResourceMetadata inserts the well-known suffix between the
// server URL's host and path (RFC 9728 §3.1).
func wellKnownResourceMetadata(server string) string {
	u, err := url.Parse(server)
	if err != nil {
		return ""
	}
	u.Path = "/.well-known/oauth-protected-resource" + strings.TrimRight(u.Path, "/")
	u.RawQuery, u.Fragment = "", ""
	return u.String()
}

// endpoint resolves the token endpoint, discovering it once.
func (d *discovery) endpoint(ctx context.Context) (credential.TokenEndpoint, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tokenURL != "" {
		return credential.TokenEndpoint{URL: d.tokenURL, PostSecret: d.post}, nil
	}
	meta := d.metadata
	if meta == "" {
		meta = wellKnownResourceMetadata(d.server)
	}
	prm, err := oauthex.GetProtectedResourceMetadata(ctx, meta, d.server, d.client)
	if err != nil {
		return credential.TokenEndpoint{}, fmt.Errorf("protected resource metadata of %s: %w", d.server, err)
	}
	d.metaScopes = prm.ScopesSupported
	if len(prm.AuthorizationServers) == 0 {
		return credential.TokenEndpoint{}, fmt.Errorf("protected resource metadata at %s names no authorization server", meta)
	}
	asm, err := auth.GetAuthServerMetadata(ctx, prm.AuthorizationServers[0], d.client)
	if err != nil {
		return credential.TokenEndpoint{}, fmt.Errorf("authorization server metadata of %s: %w", prm.AuthorizationServers[0], err)
	}
	if asm == nil || asm.TokenEndpoint == "" {
		return credential.TokenEndpoint{}, errors.New("authorization server " + prm.AuthorizationServers[0] + " publishes no token endpoint")
	}
	if len(asm.GrantTypesSupported) > 0 && !slices.Contains(asm.GrantTypesSupported, d.grant) {
		return credential.TokenEndpoint{}, fmt.Errorf("authorization server %s does not offer the %s grant (it offers %v)", asm.Issuer, d.grant, asm.GrantTypesSupported)
	}
	m := asm.TokenEndpointAuthMethodsSupported
	d.tokenURL = asm.TokenEndpoint
	d.post = len(m) > 0 && !slices.Contains(m, "client_secret_basic") && slices.Contains(m, "client_secret_post")
	return credential.TokenEndpoint{URL: d.tokenURL, PostSecret: d.post}, nil
}
