package routerconfig

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"time"
)

// A2A configures the router's inbound A2A ingress (docs/a2a.md). The
// controller renders it only while the sandbox is exposed
// (spec.a2a.enabled and before expiresAt); without it the router does
// not listen on the A2A port. The router enforces ExpiresAt itself too,
// so an exposure ends on time even before the controller's edit arrives.
type A2A struct {
	// Listen is the ingress address; empty means DefaultA2AListen. Only the
	// gateway reaches it (NetworkPolicy) and only with its pinned client
	// certificate (GatewayPins).
	Listen string `json:"listen,omitempty"`
	// TLSCertFile and TLSKeyFile are the router's serving certificate (the
	// admin certificate): the gateway pins it per sandbox.
	TLSCertFile string `json:"tlsCertFile"`
	TLSKeyFile  string `json:"tlsKeyFile"`
	// GatewayPins are the "sha256:<hex>" SHA-256 digests of the
	// SubjectPublicKeyInfo of the client certificates the gateway may
	// present; any other client is refused in the TLS handshake.
	GatewayPins []string `json:"gatewayPins"`
	// PublicURL is the sandbox's public JSON-RPC endpoint at the gateway;
	// the cards name it.
	PublicURL string `json:"publicURL"`
	// AgentURL is the agent's contract chat endpoint base
	// (http://127.0.0.1:18789), where accepted messages are forwarded.
	AgentURL string `json:"agentURL"`
	// ExpiresAt ends the exposure.
	ExpiresAt time.Time `json:"expiresAt"`
	// Callers are the foreign agents that may call, by key thumbprint.
	Callers []A2ACaller `json:"callers"`
	// Skills are advertised on the card; nothing else may be invoked.
	Skills []A2ASkill `json:"skills"`
	// MinimumTrustScore a caller needs (0..1000).
	MinimumTrustScore int `json:"minimumTrustScore,omitempty"`
	// RateLimit per caller.
	RateLimit A2ARateLimit `json:"rateLimit"`
	// BodyCapBytes caps request bodies (at most MaxA2ABodyBytes).
	BodyCapBytes int64 `json:"bodyCapBytes"`
	// SessionMaxSeconds bounds one A2A session (a context id): its first
	// message opens it, and no task of it runs past the bound.
	SessionMaxSeconds int `json:"sessionMaxSeconds"`
	// AllowStreaming permits SendStreamingMessage and SubscribeToTask.
	AllowStreaming bool `json:"allowStreaming,omitempty"`
}

// A2ACaller is an allowed caller.
type A2ACaller struct {
	// Thumbprint is "sha256:<hex>", the RFC 7638 thumbprint of the key
	// that signs the caller's AgentCard.
	Thumbprint  string `json:"thumbprint"`
	DisplayName string `json:"displayName,omitempty"`
	Issuer      string `json:"issuer,omitempty"`
}

// A2ASkill is an advertised skill.
type A2ASkill struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
}

// A2ARateLimit is a token bucket: RPM sustained, Burst at once.
type A2ARateLimit struct {
	RPM   int `json:"rpm"`
	Burst int `json:"burst,omitempty"`
}

// Defaults and bounds of the A2A section.
const (
	DefaultA2AListen = ":8445"
	// MaxA2ABodyBytes is the hard ceiling on bodyCapBytes (4 MiB, as the
	// KarsSandbox CRD).
	MaxA2ABodyBytes = 4 << 20
	// MaxA2AExposure is the longest exposure window the controller grants.
	MaxA2AExposure = 30 * 24 * time.Hour
)

// A2AListen returns the ingress address, applying the default.
func (a *A2A) A2AListen() string {
	if a.Listen == "" {
		return DefaultA2AListen
	}
	return a.Listen
}

// Open reports whether the exposure window is open at now.
func (a *A2A) Open(now time.Time) bool { return a != nil && now.Before(a.ExpiresAt) }

var (
	pinPattern   = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
	skillPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)
)

func (a *A2A) validate(bad func(field, format string, args ...any)) {
	if _, _, err := net.SplitHostPort(a.A2AListen()); err != nil {
		bad("a2a.listen", "%q is not host:port: %v", a.Listen, err)
	}
	if a.TLSCertFile == "" || a.TLSKeyFile == "" {
		bad("a2a.tlsCertFile", "the ingress serves TLS only: tlsCertFile and tlsKeyFile are required")
	}
	if len(a.GatewayPins) == 0 {
		bad("a2a.gatewayPins", "at least one gateway client certificate pin is required")
	}
	for i, p := range a.GatewayPins {
		if !pinPattern.MatchString(p) {
			bad(fmt.Sprintf("a2a.gatewayPins[%d]", i), "%q is not sha256:<64 lowercase hex>", p)
		}
	}
	if u, err := url.Parse(a.PublicURL); err != nil || u.Scheme != "https" || u.Host == "" {
		bad("a2a.publicURL", "%q must be an https:// URL", a.PublicURL)
	}
	if u, err := url.Parse(a.AgentURL); err != nil || u.Scheme != "http" || u.Host == "" {
		bad("a2a.agentURL", "%q must be the agent's http:// contract endpoint", a.AgentURL)
	}
	if a.ExpiresAt.IsZero() {
		bad("a2a.expiresAt", "is required: exposure must end")
	}
	if len(a.Callers) == 0 {
		bad("a2a.callers", "at least one caller is required")
	}
	for i, c := range a.Callers {
		if !pinPattern.MatchString(c.Thumbprint) {
			bad(fmt.Sprintf("a2a.callers[%d].thumbprint", i), "%q is not sha256:<64 lowercase hex>", c.Thumbprint)
		}
	}
	if len(a.Skills) == 0 {
		bad("a2a.skills", "at least one advertised skill is required")
	}
	for i, s := range a.Skills {
		if !skillPattern.MatchString(s.Name) {
			bad(fmt.Sprintf("a2a.skills[%d].name", i), "%q must match %s", s.Name, skillPattern)
		}
	}
	if a.MinimumTrustScore < 0 || a.MinimumTrustScore > 1000 {
		bad("a2a.minimumTrustScore", "%d is outside 0..1000", a.MinimumTrustScore)
	}
	if a.RateLimit.RPM < 1 || a.RateLimit.Burst < 0 {
		bad("a2a.rateLimit", "rpm must be at least 1 and burst not negative")
	}
	if a.BodyCapBytes < 1 || a.BodyCapBytes > MaxA2ABodyBytes {
		bad("a2a.bodyCapBytes", "%d is outside 1..%d", a.BodyCapBytes, MaxA2ABodyBytes)
	}
	if a.SessionMaxSeconds < 1 || a.SessionMaxSeconds > 3600 {
		bad("a2a.sessionMaxSeconds", "%d is outside 1..3600", a.SessionMaxSeconds)
	}
}

func (a *A2A) under(root string) *A2A {
	if a == nil {
		return nil
	}
	c := *a
	c.TLSCertFile = UnderRoot(root, c.TLSCertFile)
	c.TLSKeyFile = UnderRoot(root, c.TLSKeyFile)
	return &c
}

// SameA2A reports whether two configs' A2A parts (the a2a section and the
// peers), which the digest leaves out, are equal.
func SameA2A(a, b *Config) bool {
	ja, _ := json.Marshal([]any{a.A2A, a.A2APeers})
	jb, _ := json.Marshal([]any{b.A2A, b.A2APeers})
	return string(ja) == string(jb)
}

// A2APeer is a foreign A2A agent (an A2AAgent whose card the controller
// verified) that the sandbox's agent may call through the router, as the
// action a2a:call:<name>.
type A2APeer struct {
	// Name is the A2AAgent's name.
	Name string `json:"name"`
	// Endpoint is the peer's JSON-RPC URL (https).
	Endpoint string `json:"endpoint"`
	// ProtocolVersion is "1.0" or "0.3".
	ProtocolVersion string `json:"protocolVersion"`
	// Thumbprint is the pinned key of the peer's card.
	Thumbprint string `json:"thumbprint"`
	// Skills the agent may invoke; empty means every skill on the card.
	Skills []string `json:"skills,omitempty"`
	// RateLimit on calls to the peer; zero RPM means none.
	RateLimit A2ARateLimit `json:"rateLimit,omitzero"`
	// ExpiresAt ends the registration.
	ExpiresAt *time.Time `json:"expiresAt,omitempty"`
}

func validatePeers(peers []A2APeer, bad func(field, format string, args ...any)) {
	seen := map[string]bool{}
	for i, p := range peers {
		f := fmt.Sprintf("a2aPeers[%d]", i)
		if p.Name == "" || seen[p.Name] {
			bad(f+".name", "%q is empty or repeated", p.Name)
		}
		seen[p.Name] = true
		if u, err := url.Parse(p.Endpoint); err != nil || u.Scheme != "https" || u.Host == "" {
			bad(f+".endpoint", "%q must be an https:// URL", p.Endpoint)
		}
		if p.ProtocolVersion != "1.0" && p.ProtocolVersion != "0.3" {
			bad(f+".protocolVersion", "%q is not 1.0 or 0.3", p.ProtocolVersion)
		}
		if !pinPattern.MatchString(p.Thumbprint) {
			bad(f+".thumbprint", "%q is not sha256:<64 lowercase hex>", p.Thumbprint)
		}
	}
}
