package credential

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
)

// Token type identifiers (RFC 8693 §3).
const (
	TokenTypeAccessToken = "urn:ietf:params:oauth:token-type:access_token"
	TokenTypeJWT         = "urn:ietf:params:oauth:token-type:jwt"
	TokenTypeIDToken     = "urn:ietf:params:oauth:token-type:id_token"
)

// GrantTokenExchange is the grant_type of an OAuth 2.0 token exchange
// (RFC 8693 §2.1).
const GrantTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"

// TokenExchange is the OAuth 2.0 token exchange grant (RFC 8693): the
// router presents a token that proves who it acts for — the subject token,
// the sandbox's workload identity — and receives an access token for one
// resource. The subject token is read from a file on every exchange (a
// projected ServiceAccount token the kubelet rotates, or a mounted
// Secret). Wrap it in a Cache.
type TokenExchange struct {
	// SubjectToken is the file holding the subject token.
	SubjectToken KeyFile
	// SubjectTokenType is its RFC 8693 §3 type; empty means
	// TokenTypeJWT (a ServiceAccount token is a JWT).
	SubjectTokenType string
	// Resource (RFC 8707, RFC 8693 §2.1) and Audience (RFC 8693 §2.1)
	// name the server the token is for; either may be empty.
	Resource, Audience string
	Scopes             []string
	// DefaultScopes, when Scopes is empty, gives the scopes to request.
	DefaultScopes func() []string
	// ClientID and ClientSecret authenticate the router at the token
	// endpoint when the authorization server asks for it: both set, HTTP
	// Basic (or the form, when the endpoint says so); only ClientID, the
	// id in the form (a public client). Neither: the subject token is the
	// only proof, which RFC 8693 §2.1 leaves to the deployment.
	ClientID     string
	ClientSecret *KeyFile
	// Endpoint resolves the token endpoint; it may discover it.
	Endpoint func(ctx context.Context) (TokenEndpoint, error)
	// Client carries the exchange; nil means a client with a 30 s timeout.
	Client *http.Client
}

// Fetch implements Fetcher.
func (x *TokenExchange) Fetch(ctx context.Context) (Credential, error) {
	const what = "OAuth token exchange"
	ep, err := x.Endpoint(ctx)
	if err != nil {
		return Credential{}, fmt.Errorf("%s: token endpoint: %w", what, err)
	}
	subject, err := x.SubjectToken.Credential(ctx)
	if errors.Is(err, fs.ErrNotExist) {
		// kars dev projects no ServiceAccount token (no authorization
		// server trusts a laptop's API server), so say what to do.
		return Credential{}, fmt.Errorf("%s: no subject token at %s: no workload identity token is projected here (under kars dev, give the McpServer a subjectToken.secretRef)", what, x.SubjectToken.Path)
	}
	if err != nil {
		return Credential{}, fmt.Errorf("%s: subject token: %w", what, err)
	}
	typ := x.SubjectTokenType
	if typ == "" {
		typ = TokenTypeJWT
	}
	form := url.Values{
		"grant_type":           {GrantTokenExchange},
		"subject_token":        {subject.Secret},
		"subject_token_type":   {typ},
		"requested_token_type": {TokenTypeAccessToken},
	}
	if x.Resource != "" {
		form.Set("resource", x.Resource)
	}
	if x.Audience != "" {
		form.Set("audience", x.Audience)
	}
	if sc := scopes(x.Scopes, x.DefaultScopes); len(sc) > 0 {
		form.Set("scope", strings.Join(sc, " "))
	}
	secrets := []string{subject.Secret}
	var basic *[2]string
	switch {
	case x.ClientSecret != nil:
		sec, err := x.ClientSecret.Credential(ctx)
		if err != nil {
			return Credential{}, fmt.Errorf("%s: client secret: %w", what, err)
		}
		secrets = append(secrets, sec.Secret)
		if ep.PostSecret {
			form.Set("client_id", x.ClientID)
			form.Set("client_secret", sec.Secret)
		} else {
			basic = &[2]string{x.ClientID, sec.Secret}
		}
	case x.ClientID != "":
		form.Set("client_id", x.ClientID)
	}
	return postTokenRequest(ctx, x.Client, ep.URL, form, basic, what, secrets...)
}
