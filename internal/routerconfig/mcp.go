package routerconfig

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/kars-io/kars/internal/governance"
)

// MCPServer is one MCP server the router's gateway serves to the agent, at
// the stable local path MCPPath(Name) on the agent API. The router is the
// MCP client toward URL and holds the credential (Auth); the agent never
// sees either. Each tools/call is decided as the governance action
// "mcp:<name>.<tool>" (MCPAction) and audited.
type MCPServer struct {
	// Name is the McpServer's name: a DNS label (no dots), so that the
	// first dot of an mcp: action separates the server from the tool.
	Name string `json:"name"`
	// URL is the server's MCP endpoint.
	URL string `json:"url"`
	// Transport is "streamable-http" (empty means it) or "sse" (the
	// 2024-11-05 HTTP+SSE transport) toward the server. The agent always
	// speaks streamable HTTP to the router.
	Transport string `json:"transport,omitempty"`
	// Tools is the allowlist of tool names the agent may see and call.
	// Empty allows none (the gateway fails closed); "*" allows every tool
	// the server lists. Each call is still decided by the governance
	// policy.
	Tools []string `json:"tools,omitempty"`
	// Auth is how the router authenticates to the server; nil means no
	// credential.
	Auth *MCPAuth `json:"auth,omitempty"`
}

// MCPAuthMode selects how the router authenticates to an MCP server.
type MCPAuthMode string

// The MCP credential sources. Bearer reads a static token from a mounted
// Secret file. OAuthClientCredentials runs the OAuth 2.1 client credentials
// grant (RFC 6749 §4.4, as OAuth 2.1 keeps it) against the token endpoint
// TokenURL names, or the one the server's protected resource metadata
// (RFC 9728) points at, and presents the access token as a Bearer token
// (RFC 6750). OAuthTokenExchange runs the OAuth 2.0 token exchange grant
// (RFC 8693): the router presents its subject token (the sandbox's
// workload identity, read from SubjectTokenFile) and receives an access
// token for the server.
const (
	MCPAuthBearer                 MCPAuthMode = "Bearer"
	MCPAuthOAuthClientCredentials MCPAuthMode = "OAuthClientCredentials"
	MCPAuthOAuthTokenExchange     MCPAuthMode = "OAuthTokenExchange"
)

// MCPAuth describes a credential toward an MCP server by reference.
type MCPAuth struct {
	Mode MCPAuthMode `json:"mode"`
	// TokenFile holds the bearer token (Bearer), re-read when it changes.
	TokenFile string `json:"tokenFile,omitempty"`
	// ClientID and ClientSecretFile are the OAuth client's credentials
	// (required for OAuthClientCredentials, optional for
	// OAuthTokenExchange); the secret is re-read on every grant.
	ClientID         string `json:"clientId,omitempty"`
	ClientSecretFile string `json:"clientSecretFile,omitempty"`
	// TokenURL is the authorization server's token endpoint. Empty means
	// discover it: from the WWW-Authenticate challenge of the server's 401
	// (RFC 9728 §5.1) or its well-known protected resource metadata, then
	// the authorization server's metadata (RFC 8414).
	TokenURL string `json:"tokenUrl,omitempty"`
	// Scopes requested; empty asks for none (the server's default).
	Scopes []string `json:"scopes,omitempty"`
	// Resource is the RFC 8707 resource indicator sent with the grant, so
	// that the token is bound to this server; empty means the server's URL.
	Resource string `json:"resource,omitempty"`
	// Audience is the RFC 8693 audience parameter (OAuthTokenExchange): the
	// logical name of the server at the authorization server; empty sends
	// none.
	Audience string `json:"audience,omitempty"`
	// SubjectTokenFile holds the subject token (OAuthTokenExchange),
	// re-read when it changes (the kubelet rotates a projected
	// ServiceAccount token).
	SubjectTokenFile string `json:"subjectTokenFile,omitempty"`
	// SubjectTokenType is the RFC 8693 §3 type URI of the subject token;
	// empty means urn:ietf:params:oauth:token-type:jwt.
	SubjectTokenType string `json:"subjectTokenType,omitempty"`
}

// MCPPathPrefix is where the gateway serves on the agent API.
const MCPPathPrefix = "/mcp/"

// MCPPath is the agent API path of the named server's gateway endpoint.
func MCPPath(name string) string { return MCPPathPrefix + name }

// MCPAction is the governance action of calling tool on server.
func MCPAction(server, tool string) string { return "mcp:" + server + "." + tool }

// MCPAllowAll in an allowlist allows every tool the server lists.
const MCPAllowAll = "*"

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// ValidMCPServerName reports whether name can name a gateway server: a
// DNS label, so that it is one path segment and holds no dot.
func ValidMCPServerName(name string) bool { return dnsLabel.MatchString(name) }

// Allows reports whether the allowlist lets the agent see and call tool.
func (s *MCPServer) Allows(tool string) bool {
	for _, t := range s.Tools {
		if t == MCPAllowAll || t == tool {
			return true
		}
	}
	return false
}

// validateMCP checks the gateway's servers.
func validateMCP(servers []MCPServer, bad func(field, format string, args ...any)) {
	seen := map[string]bool{}
	for i, s := range servers {
		field := fmt.Sprintf("mcp[%d]", i)
		if !ValidMCPServerName(s.Name) {
			bad(field+".name", "%q must be a DNS label (lowercase letters, digits and '-', no dots, at most 63 characters)", s.Name)
		} else if seen[s.Name] {
			bad(field+".name", "%q appears twice", s.Name)
		}
		seen[s.Name] = true
		if u, err := url.Parse(s.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
			bad(field+".url", "%q is not an http(s) URL without user information", s.URL)
		}
		switch s.Transport {
		case "", "streamable-http", "sse":
		default:
			bad(field+".transport", "%q is not streamable-http or sse", s.Transport)
		}
		for j, t := range s.Tools {
			if t == MCPAllowAll {
				continue
			}
			if t == "" || strings.ContainsAny(t, "*?") {
				bad(fmt.Sprintf("%s.tools[%d]", field, j), "%q must be a tool name or \"*\"", t)
				continue
			}
			if _, reason := governance.CheckAction(MCPAction(s.Name, t)); reason != "" {
				bad(fmt.Sprintf("%s.tools[%d]", field, j), "tool %q cannot be governed: %s", t, reason)
			}
		}
		if a := s.Auth; a != nil {
			switch a.Mode {
			case MCPAuthBearer:
				if a.TokenFile == "" {
					bad(field+".auth.tokenFile", "is required for Bearer: tokens are referenced by file, never inlined")
				}
			case MCPAuthOAuthClientCredentials:
				if a.ClientID == "" || a.ClientSecretFile == "" {
					bad(field+".auth", "clientId and clientSecretFile are required for OAuthClientCredentials")
				}
				if a.TokenURL != "" {
					if u, err := url.Parse(a.TokenURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
						bad(field+".auth.tokenUrl", "%q is not an http(s) URL", a.TokenURL)
					}
				}
			case MCPAuthOAuthTokenExchange:
				if a.SubjectTokenFile == "" {
					bad(field+".auth.subjectTokenFile", "is required for OAuthTokenExchange")
				}
				if a.ClientSecretFile != "" && a.ClientID == "" {
					bad(field+".auth.clientId", "is required with clientSecretFile")
				}
				if a.SubjectTokenType != "" && !strings.HasPrefix(a.SubjectTokenType, "urn:") {
					bad(field+".auth.subjectTokenType", "%q is not a token type URI (RFC 8693 §3)", a.SubjectTokenType)
				}
			default:
				bad(field+".auth.mode", "%q is not Bearer, OAuthClientCredentials or OAuthTokenExchange", a.Mode)
			}
			if a.TokenURL != "" && a.Mode == MCPAuthOAuthTokenExchange {
				if u, err := url.Parse(a.TokenURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
					bad(field+".auth.tokenUrl", "%q is not an http(s) URL", a.TokenURL)
				}
			}
		}
	}
}

// under resolves the server's credential files under root.
func (s MCPServer) under(root string) MCPServer {
	if s.Auth != nil {
		a := *s.Auth
		a.TokenFile = UnderRoot(root, a.TokenFile)
		a.ClientSecretFile = UnderRoot(root, a.ClientSecretFile)
		a.SubjectTokenFile = UnderRoot(root, a.SubjectTokenFile)
		s.Auth = &a
	}
	return s
}
