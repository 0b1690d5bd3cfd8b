package credential

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kars-io/kars/internal/routerconfig"
)

// The environment the Azure Workload Identity webhook injects, read the way
// Azure's SDKs read it.
const (
	EnvAuthorityHost      = "AZURE_AUTHORITY_HOST"
	EnvTenantID           = "AZURE_TENANT_ID"
	EnvClientID           = "AZURE_CLIENT_ID"
	EnvFederatedTokenFile = "AZURE_FEDERATED_TOKEN_FILE"
)

// DefaultAuthorityHost is the public-cloud Entra authority.
const DefaultAuthorityHost = "https://login.microsoftonline.com/"

// DefaultIMDSEndpoint is the instance metadata service.
const DefaultIMDSEndpoint = "http://169.254.169.254"

// WorkloadIdentity exchanges the projected ServiceAccount token for an Entra
// access token with the OAuth 2.0 client credentials grant and a JWT client
// assertion (RFC 7523 §2.2; Microsoft identity platform "access token
// request with a federated credential").
type WorkloadIdentity struct {
	AuthorityHost string
	TenantID      string
	ClientID      string
	// TokenFile is re-read on every exchange: the kubelet rotates it.
	TokenFile string
	Scope     string
	Client    *http.Client
	// Root, when set, prefixes a TokenFile taken from
	// AZURE_FEDERATED_TOKEN_FILE (routerconfig.EnvRoot): the local
	// substrate materialises the projected token under the router's
	// directory.
	Root string
}

// WorkloadIdentityFromEnv fills empty fields from the AZURE_* environment.
func WorkloadIdentityFromEnv(w WorkloadIdentity) (*WorkloadIdentity, error) {
	if w.AuthorityHost == "" {
		w.AuthorityHost = os.Getenv(EnvAuthorityHost)
	}
	if w.AuthorityHost == "" {
		w.AuthorityHost = DefaultAuthorityHost
	}
	if w.TenantID == "" {
		w.TenantID = os.Getenv(EnvTenantID)
	}
	if w.ClientID == "" {
		w.ClientID = os.Getenv(EnvClientID)
	}
	if w.TokenFile == "" {
		w.TokenFile = routerconfig.UnderRoot(w.Root, os.Getenv(EnvFederatedTokenFile))
	}
	var missing []string
	for name, v := range map[string]string{EnvTenantID: w.TenantID, EnvClientID: w.ClientID, EnvFederatedTokenFile: w.TokenFile} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("workload identity is not configured: %s unset (is the pod labelled azure.workload.identity/use=true?)", strings.Join(missing, ", "))
	}
	if _, err := url.Parse(w.AuthorityHost); err != nil {
		return nil, fmt.Errorf("%s %q: %w", EnvAuthorityHost, w.AuthorityHost, err)
	}
	return &w, nil
}

// Fetch performs one token exchange.
func (w *WorkloadIdentity) Fetch(ctx context.Context) (Credential, error) {
	assertion, err := os.ReadFile(w.TokenFile)
	if err != nil {
		return Credential{}, fmt.Errorf("read federated token: %w", err)
	}
	form := url.Values{
		"grant_type":            {"client_credentials"},
		"client_id":             {w.ClientID},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {strings.TrimSpace(string(assertion))},
		"scope":                 {w.Scope},
	}
	endpoint := strings.TrimRight(w.AuthorityHost, "/") + "/" + url.PathEscape(w.TenantID) + "/oauth2/v2.0/token"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return Credential{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	return doTokenRequest(w.Client, req, "workload identity token exchange")
}

// ManagedIdentity asks the Azure instance metadata service for a token
// (GET /metadata/identity/oauth2/token with the "Metadata: true" header that
// IMDS requires as SSRF protection).
type ManagedIdentity struct {
	Endpoint string
	// ClientID selects a user-assigned identity; empty means the
	// system-assigned one.
	ClientID string
	Scope    string
	Client   *http.Client
}

// Fetch performs one IMDS request.
func (m *ManagedIdentity) Fetch(ctx context.Context) (Credential, error) {
	base := m.Endpoint
	if base == "" {
		base = DefaultIMDSEndpoint
	}
	q := url.Values{
		"api-version": {"2018-02-01"},
		// IMDS takes a v1 resource, not a v2 scope.
		"resource": {strings.TrimSuffix(m.Scope, "/.default")},
	}
	if m.ClientID != "" {
		q.Set("client_id", m.ClientID)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(base, "/")+"/metadata/identity/oauth2/token?"+q.Encode(), nil)
	if err != nil {
		return Credential{}, err
	}
	req.Header.Set("Metadata", "true")
	return doTokenRequest(m.Client, req, "managed identity (IMDS) token request")
}

// tokenResponse covers both the v2 token endpoint (expires_in a number) and
// IMDS (expires_in and expires_on as decimal strings).
type tokenResponse struct {
	AccessToken      string          `json:"access_token"`
	TokenType        string          `json:"token_type"`
	IssuedTokenType  string          `json:"issued_token_type"`
	ExpiresIn        json.RawMessage `json:"expires_in"`
	ExpiresOn        json.RawMessage `json:"expires_on"`
	Error            string          `json:"error"`
	ErrorDescription string          `json:"error_description"`
}

func doTokenRequest(c *http.Client, req *http.Request, what string) (Credential, error) {
	if c == nil {
		c = &http.Client{Timeout: 30 * time.Second}
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return Credential{}, fmt.Errorf("%s: %w", what, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Credential{}, fmt.Errorf("%s: read response: %w", what, err)
	}
	var tr tokenResponse
	jerr := json.Unmarshal(body, &tr)
	if resp.StatusCode != http.StatusOK {
		if jerr == nil && tr.Error != "" {
			return Credential{}, fmt.Errorf("%s: HTTP %d %s: %s", what, resp.StatusCode, tr.Error, tr.ErrorDescription)
		}
		return Credential{}, fmt.Errorf("%s: HTTP %d", what, resp.StatusCode)
	}
	if jerr != nil {
		return Credential{}, fmt.Errorf("%s: decode response: %w", what, jerr)
	}
	if tr.AccessToken == "" {
		return Credential{}, errors.New(what + ": response has no access_token")
	}
	exp, err := expiry(start, tr)
	if err != nil {
		return Credential{}, fmt.Errorf("%s: %w", what, err)
	}
	return Credential{Secret: tr.AccessToken, Entra: true, ExpiresAt: exp}, nil
}

// expiry prefers the relative expires_in (immune to clock skew between us
// and the issuer), measured from when the request was sent.
func expiry(sent time.Time, tr tokenResponse) (time.Time, error) {
	if n, ok := flexInt(tr.ExpiresIn); ok && n > 0 {
		return sent.Add(time.Duration(n) * time.Second), nil
	}
	if n, ok := flexInt(tr.ExpiresOn); ok && n > 0 {
		return time.Unix(n, 0), nil
	}
	return time.Time{}, errors.New("response has no usable expires_in or expires_on")
}

// flexInt reads a JSON number or a JSON string holding a decimal integer.
func flexInt(raw json.RawMessage) (int64, bool) {
	s := strings.Trim(string(raw), `"`)
	if s == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}
