package credential

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// TokenEndpoint is where a client credentials grant is sent and how the
// client authenticates there.
type TokenEndpoint struct {
	URL string
	// PostSecret sends the client secret in the form body
	// (client_secret_post) instead of HTTP Basic (client_secret_basic,
	// RFC 6749 §2.3.1, the method OAuth 2.1 servers must support).
	PostSecret bool
}

// ClientCredentials is the OAuth 2.1 client credentials grant (RFC 6749
// §4.4): the router, as a confidential client, trades its client id and
// secret for an access token. The secret is read from a mounted file on
// every grant, so a rotated Secret takes effect at the next refresh. Wrap
// it in a Cache.
type ClientCredentials struct {
	ClientID string
	// Secret is the file holding the client secret.
	Secret KeyFile
	Scopes []string
	// DefaultScopes, when Scopes is empty, gives the scopes to request
	// (the MCP gateway's: what the server's challenge or metadata names).
	DefaultScopes func() []string
	// Resource is the RFC 8707 resource indicator binding the token to
	// the server it is for; empty sends none.
	Resource string
	// Endpoint resolves the token endpoint; it may discover it (the MCP
	// gateway reads the server's protected resource metadata).
	Endpoint func(ctx context.Context) (TokenEndpoint, error)
	// Client carries the grant; nil means a client with a 30 s timeout.
	Client *http.Client
}

// DefaultOAuthLifetime is assumed for an access token whose response
// carries no expires_in (RFC 6749 §5.1 only recommends it): short enough
// that a revoked token is not used for long.
const DefaultOAuthLifetime = 10 * time.Minute

// Fetch implements Fetcher.
func (c *ClientCredentials) Fetch(ctx context.Context) (Credential, error) {
	ep, err := c.Endpoint(ctx)
	if err != nil {
		return Credential{}, fmt.Errorf("OAuth token endpoint: %w", err)
	}
	secret, err := c.Secret.Credential(ctx)
	if err != nil {
		return Credential{}, fmt.Errorf("OAuth client secret: %w", err)
	}
	form := url.Values{"grant_type": {"client_credentials"}}
	if sc := scopes(c.Scopes, c.DefaultScopes); len(sc) > 0 {
		form.Set("scope", strings.Join(sc, " "))
	}
	if c.Resource != "" {
		form.Set("resource", c.Resource)
	}
	if ep.PostSecret {
		form.Set("client_id", c.ClientID)
		form.Set("client_secret", secret.Secret)
	}
	var basic *[2]string
	if !ep.PostSecret {
		basic = &[2]string{c.ClientID, secret.Secret}
	}
	return postTokenRequest(ctx, c.Client, ep.URL, form, basic, "OAuth client credentials grant", secret.Secret)
}

// scopes is the configured scopes, else the default ones.
func scopes(configured []string, def func() []string) []string {
	if len(configured) == 0 && def != nil {
		return def()
	}
	return configured
}

// postTokenRequest sends a token request (RFC 6749 §3.2: a form-encoded
// POST) and reads the answer. basic, when set, is the client's id and
// secret for HTTP Basic authentication (RFC 6749 §2.3.1). secrets are
// values the request carried (client secret, subject token) that must not
// reappear in an error message even if the server echoes them.
func postTokenRequest(ctx context.Context, client *http.Client, endpoint string, form url.Values, basic *[2]string, what string, secrets ...string) (Credential, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return Credential{}, fmt.Errorf("%s: token endpoint %q: %w", what, endpoint, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if basic != nil {
		// RFC 6749 §2.3.1: both parts form-urlencoded before Basic.
		req.SetBasicAuth(url.QueryEscape(basic[0]), url.QueryEscape(basic[1]))
	}
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	// A token endpoint that redirects is misconfigured or hostile: the
	// form holds the client secret or the subject token, and a redirect
	// must not carry it elsewhere (Go re-sends a 307/308 body).
	c := *client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	sent := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return Credential{}, fmt.Errorf("%s: %s", what, redact(err.Error(), secrets))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse+1))
	if err != nil {
		return Credential{}, fmt.Errorf("%s: read response: %w", what, err)
	}
	if len(body) > maxTokenResponse {
		return Credential{}, fmt.Errorf("%s: the response exceeds %d bytes", what, maxTokenResponse)
	}
	tok, err := ParseTokenResponse(resp.StatusCode, body, sent)
	if err != nil {
		return Credential{}, fmt.Errorf("%s: %s", what, redact(err.Error(), secrets))
	}
	return tok, nil
}

// maxTokenResponse bounds a token endpoint's answer.
const maxTokenResponse = 64 << 10

// ParseTokenResponse reads a token endpoint's answer: a successful
// response (RFC 6749 §5.1, with RFC 8693 §2.2.1's issued_token_type) or an
// error response (§5.2). Only access tokens of type Bearer are accepted:
// the router presents them as such (RFC 6750). Error messages quote only
// the server's error code and a bounded, printable description, and never
// the body itself (it may hold a token).
func ParseTokenResponse(status int, body []byte, sent time.Time) (Credential, error) {
	var tr tokenResponse
	jerr := json.Unmarshal(body, &tr)
	if status != http.StatusOK {
		if jerr == nil && tr.Error != "" {
			msg := fmt.Sprintf("HTTP %d %s", status, printable(tr.Error, 64))
			if d := printable(tr.ErrorDescription, 256); d != "" {
				msg += ": " + d
			}
			return Credential{}, errors.New(msg)
		}
		return Credential{}, fmt.Errorf("HTTP %d", status)
	}
	if jerr != nil {
		return Credential{}, errors.New("the response is not a JSON token response")
	}
	if tr.AccessToken == "" {
		return Credential{}, errors.New("the response has no access_token")
	}
	if !validToken(tr.AccessToken) {
		return Credential{}, errors.New("the access_token is not a valid Bearer token (an RFC 6750 b64token)")
	}
	if !strings.EqualFold(tr.TokenType, "bearer") {
		return Credential{}, fmt.Errorf("token_type %q is not Bearer", printable(tr.TokenType, 32))
	}
	switch tr.IssuedTokenType {
	case "", TokenTypeAccessToken, TokenTypeJWT:
	default:
		// A refresh token, ID token or SAML assertion is not an access
		// token for the resource (RFC 8693 §3).
		return Credential{}, fmt.Errorf("issued_token_type %q is not an access token", printable(tr.IssuedTokenType, 96))
	}
	exp := sent.Add(DefaultOAuthLifetime)
	if n, ok := flexInt(tr.ExpiresIn); ok && n > 0 {
		if n > maxLifetime {
			n = maxLifetime
		}
		exp = sent.Add(time.Duration(n) * time.Second)
	}
	return Credential{Secret: tr.AccessToken, ExpiresAt: exp}, nil
}

// maxLifetime caps a claimed expires_in (seconds): a token the router
// holds for longer than a day without asking again outlives revocations
// it would otherwise pick up.
const maxLifetime = 24 * 3600

// validToken reports whether t is an RFC 6750 §2.1 b64token, which is what
// can follow "Bearer " in a header without breaking it.
func validToken(t string) bool {
	if len(t) > 16<<10 {
		return false
	}
	i := len(t)
	for i > 0 && t[i-1] == '=' {
		i--
	}
	if i == 0 {
		return false
	}
	for _, c := range []byte(t[:i]) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '-', c == '.', c == '_', c == '~', c == '+', c == '/':
		default:
			return false
		}
	}
	return true
}

// printable keeps the characters RFC 6749 §5.2 allows in error and
// error_description (%x20-21 / %x23-5B / %x5D-7E), at most n bytes.
func printable(s string, n int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < n; i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '"' && c != '\\' {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// redact removes each secret (and any 12-character stretch of it, for a
// server that echoes part of one) from msg.
func redact(msg string, secrets []string) string {
	for _, s := range secrets {
		if s == "" {
			continue
		}
		msg = strings.ReplaceAll(msg, s, "[redacted]")
		const stretch = 12
		for i := 0; i+stretch <= len(s); i++ {
			if strings.Contains(msg, s[i:i+stretch]) {
				msg = strings.ReplaceAll(msg, s[i:i+stretch], "[redacted]")
			}
		}
	}
	return msg
}

// Invalidate drops the cached token, so that the next caller fetches a new
// one: for an upstream that answered 401 to it (revoked, or issued for
// another audience).
func (c *Cache) Invalidate() {
	c.mu.Lock()
	c.cur = Credential{}
	c.mu.Unlock()
}
