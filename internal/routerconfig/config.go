// Package routerconfig owns the compiled router configuration: the one JSON
// document (ConfigMap key "router.json") that the controller builds from a
// sandbox's CRDs and that kars-router enforces.
//
// The controller imports this package to build a Config and compute its
// Digest; the router loads, validates and watches the same file. Both sides
// compute the digest from the canonical encoding (see Digest), which is how
// the controller's RouterEnforcing handshake knows the router runs exactly
// the policy it compiled.
//
// Credentials never appear in a Config by value: a Config names a key file
// (mounted readable by the router's UID 1001 only) or the Azure workload
// identity environment. This package is pure Go plus file I/O; it must not
// import Kubernetes or network packages.
package routerconfig

import (
	"time"

	"github.com/kars-io/kars/internal/governance"
)

// SchemaVersion is the version of the Config layout this package reads and
// writes. A router refuses a config with another version rather than guess at
// fields it does not know.
const SchemaVersion = 1

// FileName is the key under which the controller stores the config in the
// sandbox's router ConfigMap, and therefore the file name in the mounted
// directory.
const FileName = "router.json"

// Config is the compiled, self-contained configuration of one sandbox's
// router. The zero value is not valid; build one and call Validate.
type Config struct {
	// SchemaVersion must equal the package constant SchemaVersion.
	SchemaVersion int `json:"schemaVersion"`
	// Sandbox identifies whose router this is; it labels audit entries,
	// metrics and the governance agent id.
	Sandbox Sandbox `json:"sandbox"`
	// Listen is the agent-facing API address. Empty means 127.0.0.1:8443.
	// It must be a loopback address: the agent reaches the router on lo.
	Listen string `json:"listen,omitempty"`
	// Models is the InferencePolicy's model preference: the primary target
	// and ordered fallbacks.
	Models Models `json:"models"`
	// Budget holds the token budgets; nil means unlimited.
	Budget *Budget `json:"budget,omitempty"`
	// RateLimit holds requests- and tokens-per-minute limits; nil means none.
	RateLimit *RateLimit `json:"rateLimit,omitempty"`
	// ContentSafety holds the severity floors and shield requirements; nil
	// applies the defaults described on ContentSafety.
	ContentSafety *ContentSafety `json:"contentSafety,omitempty"`
	// Governance is the policy the router's governance engine evaluates for
	// every call (action "inference:<op>:<model>"): the engine's own input
	// type, which the controller converts from the sandbox's ToolPolicy. Nil
	// means the router's built-in default (allow inference to the
	// configured models, deny everything else).
	Governance *governance.Policy `json:"governance,omitempty"`
	// Behavior configures the behaviour monitor in front of the governance
	// engine. Nil runs the monitor with every pattern off, so only
	// quarantines persisted in StateDir are enforced.
	Behavior *Behavior `json:"behavior,omitempty"`
	// MCP lists the MCP servers the router's gateway serves to the agent
	// (McpServers that name this sandbox).
	MCP []MCPServer `json:"mcp,omitempty"`
	// Memory binds the sandbox to a Foundry memory store (KarsMemory);
	// nil offers no memory API.
	Memory *Memory `json:"memory,omitempty"`
	// Egress configures the agent's egress proxy, DNS stub and lists; nil
	// means Strict with empty lists (see Egress).
	Egress *Egress `json:"egress,omitempty"`
	// Credentials are the credential bindings of the agent's tools and
	// channels (credentials.go); each endpoint's host:port is allowed in
	// egress too.
	Credentials []Credential `json:"credentials,omitempty"`
	// AgentURL is the agent's contract chat endpoint base, where the admin
	// API relays evaluation turns (EvalRelayPrefix). Empty means
	// DefaultAgentURL.
	AgentURL string `json:"agentURL,omitempty"`
	// Audit says where the hash-chained audit log lives.
	Audit Audit `json:"audit"`
	// Admin configures the controller-facing admin API.
	Admin Admin `json:"admin"`
	// StateDir is a writable directory, private to the router, where the
	// budget ledger persists across restarts.
	StateDir string `json:"stateDir"`
	// A2A configures inbound A2A while the sandbox is exposed; nil means
	// no A2A listener.
	A2A *A2A `json:"a2a,omitempty"`
	// A2APeers are the registered foreign agents the agent may call
	// (a2a:call:<name>).
	A2APeers []A2APeer `json:"a2aPeers,omitempty"`
	// Mesh, when set, makes the router the agent's AgentMesh endpoint;
	// nil leaves the mesh off.
	Mesh *Mesh `json:"mesh,omitempty"`
	// Approvals bounds the calls held for a person's approval; nil
	// applies the defaults (approvals.go).
	Approvals *Approvals `json:"approvals,omitempty"`
}

// Sandbox names the sandbox the router belongs to.
type Sandbox struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// AgentID is the governance identity of the agent (for example its
	// DID or "<namespace>/<name>"); it is the Agent of every decision.
	AgentID string `json:"agentId"`
}

// Models is the ordered list of inference targets.
type Models struct {
	Primary Target `json:"primary"`
	// Fallbacks are tried in order when the primary answers 429 or 5xx or
	// cannot be reached. At most MaxFallbacks.
	Fallbacks []Target `json:"fallbacks,omitempty"`
}

// MaxFallbacks bounds Models.Fallbacks, matching the InferencePolicy CRD.
const MaxFallbacks = 8

// Provider names an upstream API family.
type Provider string

// The providers the router can broker. Offline is the built-in
// deterministic model used by `kars dev` when no credentials exist; it never
// touches the network.
const (
	ProviderAzureOpenAI      Provider = "AzureOpenAI"
	ProviderAzureAIFoundry   Provider = "AzureAIFoundry"
	ProviderOpenAI           Provider = "OpenAI"
	ProviderGitHubModels     Provider = "GitHubModels"
	ProviderAnthropic        Provider = "Anthropic"
	ProviderOpenAICompatible Provider = "OpenAICompatible"
	ProviderOffline          Provider = "Offline"
)

// Target is one model at one provider, with how the router authenticates to
// it.
type Target struct {
	Provider Provider `json:"provider"`
	// Model is the model name sent upstream (and the <model> of the
	// governance action), for example "gpt-4.1".
	Model string `json:"model"`
	// Deployment is the Azure deployment name; required for Azure
	// providers, ignored otherwise.
	Deployment string `json:"deployment,omitempty"`
	// Endpoint is the base URL: the Azure resource
	// (https://x.openai.azure.com), or an OpenAI-compatible base including
	// its /v1. Empty selects the provider's public endpoint where one
	// exists.
	Endpoint string `json:"endpoint,omitempty"`
	// APIVersion is the Azure api-version query parameter, or the
	// anthropic-version header for Anthropic. Empty selects a default.
	APIVersion string `json:"apiVersion,omitempty"`
	// Auth says how the router obtains the upstream credential; nil means
	// AuthNone.
	Auth *Auth `json:"auth,omitempty"`
}

// AuthMode selects a credential source.
type AuthMode string

// The credential sources. WorkloadIdentity exchanges the projected
// ServiceAccount token for a Microsoft Entra token; ManagedIdentity asks the
// instance metadata service; APIKey reads a mounted key file.
const (
	AuthWorkloadIdentity AuthMode = "WorkloadIdentity"
	AuthManagedIdentity  AuthMode = "ManagedIdentity"
	AuthAPIKey           AuthMode = "APIKey"
	AuthNone             AuthMode = "None"
)

// Auth describes a credential by reference, never by value.
type Auth struct {
	Mode AuthMode `json:"mode"`
	// KeyFile is the path of a file holding the API key (AuthAPIKey). The
	// router re-reads it when it changes, so a rotated Secret takes effect
	// without a restart.
	KeyFile string `json:"keyFile,omitempty"`
	// ClientID and TenantID override AZURE_CLIENT_ID and AZURE_TENANT_ID
	// (workload identity) or select a user-assigned identity (managed
	// identity).
	ClientID string `json:"clientId,omitempty"`
	TenantID string `json:"tenantId,omitempty"`
	// Scope is the Entra scope requested; empty means
	// "https://cognitiveservices.azure.com/.default".
	Scope string `json:"scope,omitempty"`
	// AuthorityHost overrides AZURE_AUTHORITY_HOST (default
	// https://login.microsoftonline.com/).
	AuthorityHost string `json:"authorityHost,omitempty"`
	// FederatedTokenFile overrides AZURE_FEDERATED_TOKEN_FILE.
	FederatedTokenFile string `json:"federatedTokenFile,omitempty"`
	// IMDSEndpoint overrides the instance metadata service base URL
	// (default http://169.254.169.254); used by tests and by hosts that
	// proxy IMDS.
	IMDSEndpoint string `json:"imdsEndpoint,omitempty"`
}

// Budget is the token budget of one sandbox. Zero in a field means no limit
// for that window. Windows are calendar days and months in UTC.
type Budget struct {
	PerRequest int64 `json:"perRequest,omitempty"`
	Daily      int64 `json:"daily,omitempty"`
	Monthly    int64 `json:"monthly,omitempty"`
	// DefaultReserve is the completion allowance reserved when a request
	// gives no max tokens. Zero means DefaultReserveTokens.
	DefaultReserve int64 `json:"defaultReserve,omitempty"`
}

// DefaultReserveTokens is reserved for the completion of a request that sets
// no max tokens when the budget does not say otherwise.
const DefaultReserveTokens = 4096

// RateLimit bounds the call rate. Zero means no limit.
type RateLimit struct {
	// RPM is requests per minute.
	RPM int32 `json:"rpm,omitempty"`
	// TPM is tokens per minute, reserved like the budget and settled to
	// the upstream's reported usage.
	TPM int64 `json:"tpm,omitempty"`
}

// Behavior sets the thresholds of the behaviour monitor (internal/behavior),
// which watches the agent's decisions over time — inference and the agent's
// tool decisions alike — for patterns no single decision sees. Zero
// disables a pattern.
type Behavior struct {
	// MaxCallsPerMinute decisions a minute are normal; one more is a burst.
	MaxCallsPerMinute int `json:"maxCallsPerMinute,omitempty"`
	// MaxDenialsPerMinute denials a minute are tolerated; one more alerts.
	MaxDenialsPerMinute int `json:"maxDenialsPerMinute,omitempty"`
	// Quarantine makes an alert quarantine the agent: every further
	// decision is denied until an operator clears it on the admin API.
	// Without it alerts are only logged.
	Quarantine bool `json:"quarantine,omitempty"`
}

// Severity is a content-safety severity level, in Azure's order.
type Severity string

// The severity levels, lowest first.
const (
	SeveritySafe   Severity = "Safe"
	SeverityLow    Severity = "Low"
	SeverityMedium Severity = "Medium"
	SeverityHigh   Severity = "High"
)

// ContentSafety sets per-category floors: a finding whose severity is above
// its category's floor blocks the call. An empty floor means SeverityLow,
// which matches Azure's default filter (medium and high are blocked).
type ContentSafety struct {
	Hate     Severity `json:"hate,omitempty"`
	SelfHarm Severity `json:"selfHarm,omitempty"`
	Sexual   Severity `json:"sexual,omitempty"`
	Violence Severity `json:"violence,omitempty"`
	// RequirePromptShields rejects upstream responses that carry no Prompt
	// Shields annotation, so a misconfigured deployment cannot silently
	// turn jailbreak detection off.
	RequirePromptShields bool `json:"requirePromptShields,omitempty"`
	// BlockJailbreak and BlockIndirectAttack default to true (nil).
	BlockJailbreak      *bool `json:"blockJailbreak,omitempty"`
	BlockIndirectAttack *bool `json:"blockIndirectAttack,omitempty"`
}

// Audit configures the audit log.
type Audit struct {
	// Dir is the directory of the hash-chained JSONL audit log.
	Dir string `json:"dir"`
	// CheckpointKeyFile is the Ed25519 private key used to sign periodic
	// checkpoints; empty disables signed checkpoints.
	CheckpointKeyFile string `json:"checkpointKeyFile,omitempty"`
}

// Admin configures the admin API used by the controller and the CLI.
type Admin struct {
	// Listen is the admin address. Empty means ":8444".
	Listen string `json:"listen,omitempty"`
	// TokenFile holds the bearer token the admin API requires. It must be
	// readable by the router only, never by the agent.
	TokenFile string `json:"tokenFile"`
	// TLSCertFile and TLSKeyFile, when both set, serve the admin API over
	// TLS.
	TLSCertFile string `json:"tlsCertFile,omitempty"`
	TLSKeyFile  string `json:"tlsKeyFile,omitempty"`
}

// Defaults for empty fields.
const (
	DefaultListen      = "127.0.0.1:8443"
	DefaultAdminListen = ":8444"
	DefaultEntraScope  = "https://cognitiveservices.azure.com/.default"
)

// AgentListen returns the agent API address, applying the default.
func (c *Config) AgentListen() string {
	if c.Listen == "" {
		return DefaultListen
	}
	return c.Listen
}

// Prefixes of the router admin API's evaluation relay, which plays
// KarsEval cases from outside the pod.
const (
	// EvalAgentPrefix relays to the agent's contract endpoint:
	// POST <prefix>/v1/chat and DELETE <prefix>/v1/sessions/{id}.
	EvalAgentPrefix = "/admin/v1/eval/agent"
	// EvalRouterPrefix relays to the router's own agent API:
	// POST <prefix>/kars/v1/decide and the memory API.
	EvalRouterPrefix = "/admin/v1/eval/router"
)

// DefaultAgentURL is the contract's chat endpoint (runtime contract v1).
const DefaultAgentURL = "http://127.0.0.1:18789"

// AgentChatURL returns the agent's chat endpoint base, applying the
// default.
func (c *Config) AgentChatURL() string {
	if c.AgentURL == "" {
		return DefaultAgentURL
	}
	return c.AgentURL
}

// AdminListen returns the admin API address, applying the default.
func (c *Config) AdminListen() string {
	if c.Admin.Listen == "" {
		return DefaultAdminListen
	}
	return c.Admin.Listen
}

// Targets returns the primary followed by the fallbacks, in failover order.
func (c *Config) Targets() []Target {
	out := make([]Target, 0, 1+len(c.Models.Fallbacks))
	out = append(out, c.Models.Primary)
	return append(out, c.Models.Fallbacks...)
}

// Reserve returns the completion allowance for a request without max
// tokens.
func (b *Budget) Reserve() int64 {
	if b == nil || b.DefaultReserve <= 0 {
		return DefaultReserveTokens
	}
	return b.DefaultReserve
}

// Floor returns the category's floor, applying the default.
func (s Severity) Floor() Severity {
	if s == "" {
		return SeverityLow
	}
	return s
}

// Rank orders severities: Safe 0, Low 1, Medium 2, High 3, unknown -1.
func (s Severity) Rank() int {
	switch s {
	case SeveritySafe:
		return 0
	case SeverityLow:
		return 1
	case SeverityMedium:
		return 2
	case SeverityHigh:
		return 3
	}
	return -1
}

// JailbreakBlocked reports whether jailbreak detections block (default true).
func (c *ContentSafety) JailbreakBlocked() bool {
	return c == nil || c.BlockJailbreak == nil || *c.BlockJailbreak
}

// IndirectAttackBlocked reports whether indirect-attack detections block
// (default true).
func (c *ContentSafety) IndirectAttackBlocked() bool {
	return c == nil || c.BlockIndirectAttack == nil || *c.BlockIndirectAttack
}

// Snapshot is one loaded, validated config with its digest. The router swaps
// whole snapshots atomically; a request keeps the snapshot it started with.
type Snapshot struct {
	Config   *Config
	Digest   string
	LoadedAt time.Time
}
