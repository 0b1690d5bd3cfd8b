// Package fakeprovider is a local stand-in for the services kars-router
// talks to but that cannot be reached from a test: Azure OpenAI (with its
// content-filter annotations), OpenAI, Anthropic, the Microsoft Entra token
// endpoint and the Azure instance metadata service. Each speaks the real
// wire format — paths, headers, bodies, Server-Sent Events — so the router's
// parsers and the official SDKs are exercised for real.
//
// Tests steer the fake through directives in the prompt text, so that
// clients in any language can trigger them:
//
//	#fake:hate=medium      annotate the completion's hate category (any category, any severity)
//	#fake:jailbreak        Prompt Shields detects a jailbreak in the prompt
//	#fake:indirect         Prompt Shields detects an indirect attack
//	#fake:noshields        omit the Prompt Shields annotation
//	#fake:midstream-jailbreak  stream two chunks, then a chunk flagged as jailbreak, then more
//	#fake:status=429       answer with that HTTP status (Azure error body)
//	#fake:refuse           Azure refuses the prompt (400 content_filter with innererror)
//	#fake:break            break the stream off after two content chunks
//	#fake:echo-auth        echo the received credential headers in the reply
//	#fake:slow=20ms        wait this long between stream chunks
//	#fake:nousage          answer a whole (non-streamed) call without a usage object
//
// This package is test support: it is imported by tests, the interop
// harness and the benchmark, never by the router.
package fakeprovider

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Server is the fake. Configure fields before serving; read the counters
// and the recorded headers afterwards.
type Server struct {
	// EntraToken is what the token endpoint and IMDS issue and what the
	// Azure data plane accepts as "Authorization: Bearer".
	EntraToken string
	// APIKey is accepted as Azure "api-key", OpenAI/GitHub bearer and
	// Anthropic "x-api-key".
	APIKey string
	// TenantID, ClientID and FederatedToken are what the token endpoint
	// requires in a client-assertion exchange.
	TenantID, ClientID, FederatedToken string
	// TokenTTL is the lifetime of issued tokens (expires_in).
	TokenTTL time.Duration
	// CompletionTokens is how many tokens a reply has (capped by the
	// request's max tokens). Zero means 12.
	CompletionTokens int64

	// PromptTokens and CompletionTokensSum total the usage the fake has
	// reported in successful responses.
	PromptTokensSum, CompletionTokensSum atomic.Int64
	// TokenRequests counts token endpoint and IMDS calls.
	TokenRequests atomic.Int64
	// Requests counts data-plane requests.
	Requests atomic.Int64

	mu          sync.Mutex
	headers     []http.Header
	bodies      [][]byte
	failDeploys map[string]int

	srv *httptest.Server
}

// New returns a fake with fresh secrets, not yet serving.
func New() *Server {
	return &Server{
		EntraToken: "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake-entra-access-token.sig",
		APIKey:     "sk-upstream-key-0123456789abcdef", TenantID: "72f988bf-86f1-41af-91ab-2d7cd011db47",
		ClientID: "0b5b4a4e-1111-2222-3333-444455556666", FederatedToken: "eyJhbGciOiJSUzI1NiJ9.projected-sa-token.sig",
		TokenTTL: time.Hour,
	}
}

// Start serves on a loopback port and returns the base URL.
func (s *Server) Start() string {
	s.srv = httptest.NewServer(s)
	return s.srv.URL
}

// Close stops a started server.
func (s *Server) Close() {
	if s.srv != nil {
		s.srv.Close()
	}
}

// URL is the base URL of a started server.
func (s *Server) URL() string { return s.srv.URL }

// FailDeployment makes every call to an Azure deployment answer status
// (429 with Retry-After: 1, or a 5xx), to exercise failover.
func (s *Server) FailDeployment(deployment string, status string) {
	code, _ := strconv.Atoi(status)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failDeploys == nil {
		s.failDeploys = map[string]int{}
	}
	s.failDeploys[deployment] = code
}

// Bodies returns the body of every data-plane request received (the
// first 1,000).
func (s *Server) Bodies() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.bodies...)
}

// Headers returns the headers of every data-plane request received.
func (s *Server) Headers() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]http.Header(nil), s.headers...)
}

var deploymentPath = regexp.MustCompile(`^/openai/deployments/([^/]+)/(chat/completions|completions|embeddings)$`)

// ServeHTTP routes like the real services.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token"):
		s.entraToken(w, r)
		return
	case r.URL.Path == "/metadata/identity/oauth2/token":
		s.imds(w, r)
		return
	}
	s.Requests.Add(1)
	s.mu.Lock()
	if len(s.headers) < 10000 {
		s.headers = append(s.headers, r.Header.Clone())
	}
	if len(s.bodies) < 1000 && r.Body != nil {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		r.Body = io.NopCloser(bytes.NewReader(b))
		s.bodies = append(s.bodies, b)
	}
	s.mu.Unlock()
	switch p := r.URL.Path; {
	case deploymentPath.MatchString(p), p == "/openai/responses":
		if r.URL.Query().Get("api-version") == "" {
			azureError(w, http.StatusNotFound, "404", "Resource not found", nil)
			return
		}
		if !s.authorized(r.Header.Get("Api-Key"), bearer(r)) {
			azureError(w, http.StatusUnauthorized, "401", "Access denied due to invalid subscription key or wrong API endpoint.", nil)
			return
		}
		op := "responses"
		if m := deploymentPath.FindStringSubmatch(p); m != nil {
			op = m[2]
			s.mu.Lock()
			code := s.failDeploys[m[1]]
			s.mu.Unlock()
			if code != 0 {
				azureError(w, code, strconv.Itoa(code), "fake failing deployment", nil)
				return
			}
		}
		s.openAI(w, r, op, true)
	case p == "/v1/messages":
		if !s.authorized(r.Header.Get("X-Api-Key"), "") || r.Header.Get("Anthropic-Version") == "" {
			anthropicError(w, http.StatusUnauthorized, "authentication_error", "invalid x-api-key")
			return
		}
		s.anthropic(w, r)
	case strings.HasPrefix(p, "/v1/"):
		if !s.authorized("", bearer(r)) {
			openAIError(w, http.StatusUnauthorized, "invalid_request_error", "invalid_api_key", "Incorrect API key provided.")
			return
		}
		s.openAI(w, r, strings.TrimPrefix(p, "/v1/"), false)
	default:
		openAIError(w, http.StatusNotFound, "invalid_request_error", "unknown_url", "Unknown request URL: "+p)
	}
}

func bearer(r *http.Request) string {
	v, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return v
}

func (s *Server) authorized(key, bearerToken string) bool {
	eq := func(a, b string) bool { return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
	return eq(key, s.APIKey) || eq(bearerToken, s.APIKey) || eq(bearerToken, s.EntraToken)
}

// entraToken is the v2.0 token endpoint's client-credentials grant with a
// JWT client assertion, including its AADSTS-style errors.
func (s *Server) entraToken(w http.ResponseWriter, r *http.Request) {
	s.TokenRequests.Add(1)
	if r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		entraError(w, http.StatusBadRequest, "invalid_request", "AADSTS900144: The request body must contain the following parameter: 'grant_type'.")
		return
	}
	if err := r.ParseForm(); err != nil {
		entraError(w, http.StatusBadRequest, "invalid_request", "AADSTS90014: malformed body")
		return
	}
	f := r.PostForm
	tenant := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/"), "/oauth2/v2.0/token")
	switch {
	case tenant != s.TenantID:
		entraError(w, http.StatusBadRequest, "invalid_tenant", "AADSTS90002: Tenant '"+tenant+"' not found.")
	case f.Get("grant_type") != "client_credentials":
		entraError(w, http.StatusBadRequest, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type.")
	case f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
		entraError(w, http.StatusBadRequest, "invalid_request", "AADSTS50027: Invalid client assertion type.")
	case f.Get("client_id") != s.ClientID || f.Get("client_assertion") != s.FederatedToken:
		entraError(w, http.StatusUnauthorized, "invalid_client", "AADSTS700213: No matching federated identity record found for presented assertion subject.")
	case !strings.HasSuffix(f.Get("scope"), "/.default"):
		entraError(w, http.StatusBadRequest, "invalid_scope", "AADSTS1002012: The provided value for scope is not valid.")
	default:
		ttl := int64(s.TokenTTL.Seconds())
		writeJSON(w, http.StatusOK, map[string]any{"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl, "access_token": s.EntraToken})
	}
}

func entraError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, map[string]any{"error": code, "error_description": desc, "error_codes": []int{70000},
		"timestamp": time.Now().UTC().Format("2006-01-02 15:04:05Z"), "trace_id": "00000000-0000-0000-0000-000000000000",
		"correlation_id": "00000000-0000-0000-0000-000000000000"})
}

// imds is the managed identity endpoint: Metadata: true required, v1
// resource parameter, numbers as strings.
func (s *Server) imds(w http.ResponseWriter, r *http.Request) {
	s.TokenRequests.Add(1)
	if r.Header.Get("Metadata") != "true" {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid_request", "error_description": "Required metadata header not specified"})
		return
	}
	q := r.URL.Query()
	if q.Get("api-version") == "" || q.Get("resource") == "" || strings.HasSuffix(q.Get("resource"), "/.default") {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid_resource", "error_description": "AADSTS500011: The resource principal was not found"})
		return
	}
	ttl := int64(s.TokenTTL.Seconds())
	now := time.Now().Unix()
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": s.EntraToken, "client_id": s.ClientID, "refresh_token": "",
		"expires_in": fmt.Sprint(ttl), "expires_on": fmt.Sprint(now + ttl), "ext_expires_in": fmt.Sprint(ttl),
		"not_before": fmt.Sprint(now), "resource": q.Get("resource"), "token_type": "Bearer",
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b)
}

// directives finds the #fake: directives in a request body.
type directives map[string]string

var directiveRE = regexp.MustCompile(`#fake:([a-z_-]+)(?:=([A-Za-z0-9]+))?`)

func parseDirectives(body []byte) directives {
	d := directives{}
	for _, m := range directiveRE.FindAllSubmatch(body, -1) {
		d[string(m[1])] = string(m[2])
	}
	return d
}

// ParseSlow reads a #fake:slow=<duration> value.
func (d directives) slow() time.Duration {
	v, ok := d["slow"]
	if !ok {
		return 0
	}
	dur, _ := time.ParseDuration(v)
	return dur
}

// OpenAIBaseURL is the fake's OpenAI-compatible base URL (with /v1).
func (s *Server) OpenAIBaseURL() string {
	u, _ := url.JoinPath(s.srv.URL, "v1")
	return u
}
