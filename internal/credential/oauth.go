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
	if len(c.Scopes) > 0 {
		form.Set("scope", strings.Join(c.Scopes, " "))
	}
	if c.Resource != "" {
		form.Set("resource", c.Resource)
	}
	if ep.PostSecret {
		form.Set("client_id", c.ClientID)
		form.Set("client_secret", secret.Secret)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, strings.NewReader(form.Encode()))
	if err != nil {
		return Credential{}, fmt.Errorf("OAuth token endpoint %q: %w", ep.URL, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if !ep.PostSecret {
		// RFC 6749 §2.3.1: both parts form-urlencoded before Basic.
		req.SetBasicAuth(url.QueryEscape(c.ClientID), url.QueryEscape(secret.Secret))
	}
	client := c.Client
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	sent := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return Credential{}, fmt.Errorf("OAuth client credentials grant: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Credential{}, fmt.Errorf("OAuth client credentials grant: read response: %w", err)
	}
	return parseOAuthToken(resp.StatusCode, body, sent)
}

// parseOAuthToken reads a token endpoint's answer (RFC 6749 §5.1, §5.2).
// Only Bearer tokens are accepted: the router presents them as such.
func parseOAuthToken(status int, body []byte, sent time.Time) (Credential, error) {
	var tr tokenResponse
	jerr := json.Unmarshal(body, &tr)
	if status != http.StatusOK {
		if jerr == nil && tr.Error != "" {
			return Credential{}, fmt.Errorf("OAuth client credentials grant: HTTP %d %s: %s", status, tr.Error, tr.ErrorDescription)
		}
		return Credential{}, fmt.Errorf("OAuth client credentials grant: HTTP %d", status)
	}
	if jerr != nil {
		return Credential{}, fmt.Errorf("OAuth client credentials grant: decode response: %w", jerr)
	}
	if tr.AccessToken == "" {
		return Credential{}, errors.New("OAuth client credentials grant: response has no access_token")
	}
	if !strings.EqualFold(tr.TokenType, "bearer") {
		return Credential{}, fmt.Errorf("OAuth client credentials grant: token_type %q is not Bearer", tr.TokenType)
	}
	exp := sent.Add(DefaultOAuthLifetime)
	if n, ok := flexInt(tr.ExpiresIn); ok && n > 0 {
		exp = sent.Add(time.Duration(n) * time.Second)
	}
	return Credential{Secret: tr.AccessToken, ExpiresAt: exp}, nil
}

// Invalidate drops the cached token, so that the next caller fetches a new
// one: for an upstream that answered 401 to it (revoked, or issued for
// another audience).
func (c *Cache) Invalidate() {
	c.mu.Lock()
	c.cur = Credential{}
	c.mu.Unlock()
}
