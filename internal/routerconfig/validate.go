package routerconfig

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/kars-io/kars/internal/governance"
)

// Validate reports every problem with c at once, each naming the field, so
// that a bad ConfigMap is rejected with an error a person can act on. A
// config that fails validation is never swapped in.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.SchemaVersion != SchemaVersion {
		bad("schemaVersion", "is %d, this router reads version %d", c.SchemaVersion, SchemaVersion)
	}
	if c.Sandbox.Name == "" {
		bad("sandbox.name", "is required")
	}
	if c.Sandbox.AgentID == "" {
		bad("sandbox.agentId", "is required")
	}
	if host, _, err := net.SplitHostPort(c.AgentListen()); err != nil {
		bad("listen", "%q is not host:port: %v", c.Listen, err)
	} else if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		bad("listen", "%q must be a loopback address; the agent API is never exposed off the pod", c.Listen)
	}
	if u, err := url.Parse(c.AgentChatURL()); err != nil || u.Scheme != "http" || u.Path != "" || !isLoopbackHost(u.Hostname()) || u.Port() == "" {
		bad("agentURL", "%q must be http://<loopback>:<port>: the agent's contract endpoint in its own pod", c.AgentURL)
	}
	if _, _, err := net.SplitHostPort(c.AdminListen()); err != nil {
		bad("admin.listen", "%q is not host:port: %v", c.Admin.Listen, err)
	}
	if len(c.Models.Fallbacks) > MaxFallbacks {
		bad("models.fallbacks", "has %d entries, at most %d are allowed", len(c.Models.Fallbacks), MaxFallbacks)
	}
	validateTarget("models.primary", c.Models.Primary, c.ContentSafety, bad)
	for i, t := range c.Models.Fallbacks {
		validateTarget(fmt.Sprintf("models.fallbacks[%d]", i), t, c.ContentSafety, bad)
	}
	if b := c.Budget; b != nil {
		if b.PerRequest < 0 || b.Daily < 0 || b.Monthly < 0 || b.DefaultReserve < 0 {
			bad("budget", "limits must not be negative")
		}
		if b.PerRequest > 0 && b.DefaultReserve > b.PerRequest {
			bad("budget.defaultReserve", "%d exceeds perRequest %d, so every request without max tokens would be refused", b.DefaultReserve, b.PerRequest)
		}
	}
	if r := c.RateLimit; r != nil && (r.RPM < 0 || r.TPM < 0) {
		bad("rateLimit", "limits must not be negative")
	}
	if b := c.Behavior; b != nil && (b.MaxCallsPerMinute < 0 || b.MaxDenialsPerMinute < 0) {
		bad("behavior", "thresholds must not be negative")
	}
	if s := c.ContentSafety; s != nil {
		for name, sev := range map[string]Severity{"hate": s.Hate, "selfHarm": s.SelfHarm, "sexual": s.Sexual, "violence": s.Violence} {
			if sev != "" && sev.Rank() < 0 {
				bad("contentSafety."+name, "%q is not one of Safe, Low, Medium, High", sev)
			}
		}
	}
	if c.Governance != nil {
		if _, err := governance.Compile(c.Governance); err != nil {
			bad("governance", "%v", err)
		}
	}
	validateMCP(c.MCP, bad)
	validateMemory(c.Memory, bad)
	c.Approvals.validate(bad)
	c.Egress.validate(bad)
	validateCredentials(c.Credentials, bad)
	if c.Audit.Dir == "" {
		bad("audit.dir", "is required: every call is audited")
	} else if !filepath.IsAbs(c.Audit.Dir) {
		bad("audit.dir", "%q must be an absolute path", c.Audit.Dir)
	}
	if c.StateDir == "" {
		bad("stateDir", "is required: budgets persist there")
	} else if !filepath.IsAbs(c.StateDir) {
		bad("stateDir", "%q must be an absolute path", c.StateDir)
	}
	if c.Admin.TokenFile == "" {
		bad("admin.tokenFile", "is required: the admin API is never open")
	}
	if (c.Admin.TLSCertFile == "") != (c.Admin.TLSKeyFile == "") {
		bad("admin", "tlsCertFile and tlsKeyFile must be set together")
	}
	if c.A2A != nil {
		c.A2A.validate(bad)
	}
	validatePeers(c.A2APeers, bad)
	if c.Mesh != nil {
		validateMesh(c.Mesh, bad)
	}
	return errors.Join(errs...)
}

func validateTarget(field string, t Target, cs *ContentSafety, bad func(field, format string, args ...any)) {
	switch t.Provider {
	case ProviderAzureOpenAI, ProviderAzureAIFoundry:
		if t.Deployment == "" {
			bad(field+".deployment", "is required for %s", t.Provider)
		}
		if t.Endpoint == "" {
			bad(field+".endpoint", "is required for %s", t.Provider)
		}
	case ProviderOpenAICompatible:
		if t.Endpoint == "" {
			bad(field+".endpoint", "is required for %s", t.Provider)
		}
	case ProviderOpenAI, ProviderGitHubModels, ProviderAnthropic:
	case ProviderOffline:
		if cs != nil && cs.RequirePromptShields {
			bad(field, "the Offline provider carries no Prompt Shields annotations, so contentSafety.requirePromptShields would refuse every reply")
		}
	case "":
		bad(field+".provider", "is required")
		return
	default:
		bad(field+".provider", "%q is not a known provider", t.Provider)
		return
	}
	if t.Model == "" {
		bad(field+".model", "is required")
	}
	if t.Endpoint != "" {
		u, err := url.Parse(t.Endpoint)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad(field+".endpoint", "%q is not an http(s) URL", t.Endpoint)
		}
	}
	if t.Auth == nil {
		return
	}
	switch t.Auth.Mode {
	case AuthAPIKey:
		if t.Auth.KeyFile == "" {
			bad(field+".auth.keyFile", "is required for APIKey: keys are referenced by file, never inlined")
		}
	case AuthWorkloadIdentity, AuthManagedIdentity:
		if t.Provider != ProviderAzureOpenAI && t.Provider != ProviderAzureAIFoundry {
			bad(field+".auth.mode", "%s issues Microsoft Entra tokens, which only Azure providers accept", t.Auth.Mode)
		}
	case AuthNone, "":
	default:
		bad(field+".auth.mode", "%q is not one of WorkloadIdentity, ManagedIdentity, APIKey, None", t.Auth.Mode)
	}
	if strings.TrimSpace(t.Auth.Scope) != t.Auth.Scope {
		bad(field+".auth.scope", "has surrounding spaces")
	}
}

func isLoopbackHost(h string) bool {
	ip := net.ParseIP(h)
	return h == "localhost" || (ip != nil && ip.IsLoopback())
}
