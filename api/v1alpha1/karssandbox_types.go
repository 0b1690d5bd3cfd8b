package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// RuntimeKind names an agent framework kars can host.
// +kubebuilder:validation:Enum=OpenClaw;OpenAIAgents;MicrosoftAgentFramework;LangGraph;Anthropic;PydanticAi;BYO;SemanticKernel
type RuntimeKind string

// The runtime kinds. SemanticKernel is reserved in the schema; its adapter is
// not built yet, so the controller reports RuntimeReady=False/AdapterMissing.
const (
	RuntimeOpenClaw                RuntimeKind = "OpenClaw"
	RuntimeOpenAIAgents            RuntimeKind = "OpenAIAgents"
	RuntimeMicrosoftAgentFramework RuntimeKind = "MicrosoftAgentFramework"
	RuntimeLangGraph               RuntimeKind = "LangGraph"
	RuntimeAnthropic               RuntimeKind = "Anthropic"
	RuntimePydanticAi              RuntimeKind = "PydanticAi"
	RuntimeBYO                     RuntimeKind = "BYO"
	RuntimeSemanticKernel          RuntimeKind = "SemanticKernel"
)

// KarsSandboxSpec is the desired state of one governed agent sandbox.
type KarsSandboxSpec struct {
	// Runtime selects the agent framework and carries its configuration.
	Runtime RuntimeSpec `json:"runtime"`

	// InferenceRef names the InferencePolicy (same namespace) that governs
	// the agent's model access: models, budgets, rate limits, content safety.
	InferenceRef LocalObjectReference `json:"inferenceRef"`

	// Sandbox sets the isolation of the agent's pod.
	// +kubebuilder:default={}
	// +optional
	Sandbox SandboxIsolationSpec `json:"sandbox,omitempty"`

	// Governance configures policy evaluation of the agent's actions.
	// +kubebuilder:default={}
	// +optional
	Governance GovernanceSpec `json:"governance,omitempty"`

	// NetworkPolicy configures the sandbox's network containment.
	// +kubebuilder:default={}
	// +optional
	NetworkPolicy SandboxNetworkPolicy `json:"networkPolicy,omitempty"`

	// Agent holds runtime-independent agent settings.
	// +optional
	Agent *AgentSpec `json:"agent,omitempty"`

	// A2A opts the sandbox in to inbound A2A calls through the public
	// gateway. Off unless enabled; exposure is time-bounded by expiresAt.
	// +kubebuilder:default={}
	// +optional
	A2A A2AExposure `json:"a2a,omitempty"`

	// UpstreamCompatibility sets how kars coexists with an upstream
	// agents.x-k8s.io Sandbox controller.
	// +optional
	UpstreamCompatibility *UpstreamCompatibility `json:"upstreamCompatibility,omitempty"`

	// Suspended scales the sandbox to zero while keeping its state and
	// policy objects.
	// +optional
	Suspended bool `json:"suspended,omitempty"`

	// Resources for the agent's runtime container.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`
}

// RuntimeSpec selects the agent runtime. Exactly the block matching kind may
// be set (BYO requires its block).
// +kubebuilder:validation:XValidation:rule="!has(self.openclaw) || self.kind == 'OpenClaw'",message="runtime.openclaw is set but runtime.kind is not OpenClaw: set only the block that matches runtime.kind"
// +kubebuilder:validation:XValidation:rule="!has(self.openaiAgents) || self.kind == 'OpenAIAgents'",message="runtime.openaiAgents is set but runtime.kind is not OpenAIAgents: set only the block that matches runtime.kind"
// +kubebuilder:validation:XValidation:rule="!has(self.microsoftAgentFramework) || self.kind == 'MicrosoftAgentFramework'",message="runtime.microsoftAgentFramework is set but runtime.kind is not MicrosoftAgentFramework: set only the block that matches runtime.kind"
// +kubebuilder:validation:XValidation:rule="!has(self.langGraph) || self.kind == 'LangGraph'",message="runtime.langGraph is set but runtime.kind is not LangGraph: set only the block that matches runtime.kind"
// +kubebuilder:validation:XValidation:rule="!has(self.anthropic) || self.kind == 'Anthropic'",message="runtime.anthropic is set but runtime.kind is not Anthropic: set only the block that matches runtime.kind"
// +kubebuilder:validation:XValidation:rule="!has(self.pydanticAi) || self.kind == 'PydanticAi'",message="runtime.pydanticAi is set but runtime.kind is not PydanticAi: set only the block that matches runtime.kind"
// +kubebuilder:validation:XValidation:rule="!has(self.byo) || self.kind == 'BYO'",message="runtime.byo is set but runtime.kind is not BYO: set only the block that matches runtime.kind"
// +kubebuilder:validation:XValidation:rule="!has(self.semanticKernel) || self.kind == 'SemanticKernel'",message="runtime.semanticKernel is set but runtime.kind is not SemanticKernel: set only the block that matches runtime.kind"
// +kubebuilder:validation:XValidation:rule="self.kind != 'BYO' || has(self.byo)",message="runtime.kind BYO needs a runtime.byo block with image and contractVersion: v1"
type RuntimeSpec struct {
	// Kind is the agent framework.
	Kind RuntimeKind `json:"kind"`

	// OpenClaw configures the OpenClaw runtime.
	// +optional
	OpenClaw *OpenClawRuntime `json:"openclaw,omitempty"`
	// OpenAIAgents configures the OpenAI Agents SDK runtime.
	// +optional
	OpenAIAgents *OpenAIAgentsRuntime `json:"openaiAgents,omitempty"`
	// MicrosoftAgentFramework configures the Microsoft Agent Framework runtime.
	// +optional
	MicrosoftAgentFramework *MicrosoftAgentFrameworkRuntime `json:"microsoftAgentFramework,omitempty"`
	// LangGraph configures the LangGraph runtime.
	// +optional
	LangGraph *LangGraphRuntime `json:"langGraph,omitempty"`
	// Anthropic configures the Anthropic (Claude Agent SDK) runtime.
	// +optional
	Anthropic *AnthropicRuntime `json:"anthropic,omitempty"`
	// PydanticAi configures the PydanticAI runtime.
	// +optional
	PydanticAi *PydanticAiRuntime `json:"pydanticAi,omitempty"`
	// BYO runs your own image under the kars runtime contract.
	// +optional
	BYO *BYORuntime `json:"byo,omitempty"`
	// SemanticKernel is reserved; its adapter is not built yet.
	// +optional
	SemanticKernel *SemanticKernelRuntime `json:"semanticKernel,omitempty"`

	// Env adds environment variables to the agent container. Names with the
	// reserved prefixes KARS_, AZURE_, AGT_ and IMDS_ are refused.
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:XValidation:rule="self.all(e, !e.name.startsWith('KARS_') && !e.name.startsWith('AZURE_') && !e.name.startsWith('AGT_') && !e.name.startsWith('IMDS_'))",message="runtime.env may not set variables with the reserved prefixes KARS_, AZURE_, AGT_ or IMDS_"
	// +optional
	Env []RuntimeEnvVar `json:"env,omitempty"`

	// ImagePullSecrets used to pull the runtime and agent-code images (and to
	// read a BYO image's contract label).
	// +kubebuilder:validation:MaxItems=8
	// +optional
	ImagePullSecrets []LocalObjectReference `json:"imagePullSecrets,omitempty"`
}

// RuntimeEnvVar is a plain environment variable for the agent. Values from
// Secrets are deliberately not offered: secrets belong to the router.
type RuntimeEnvVar struct {
	// Name of the variable.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_]*$`
	Name string `json:"name"`
	// Value of the variable.
	// +kubebuilder:validation:MaxLength=4096
	// +optional
	Value string `json:"value,omitempty"`
}

// OpenClawRuntime configures OpenClaw.
type OpenClawRuntime struct {
	// Config is OpenClaw's own configuration document (channels, skills,
	// …), passed through to the runtime unchanged.
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Type=object
	// +optional
	Config *runtime.RawExtension `json:"config,omitempty"`
	// Image overrides the catalog's OpenClaw image.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Image string `json:"image,omitempty"`
}

// OpenAIAgentsRuntime configures the OpenAI Agents SDK (Python).
type OpenAIAgentsRuntime struct {
	// PythonVersion of the runtime image.
	// +kubebuilder:validation:Enum="3.11";"3.12";"3.13"
	// +kubebuilder:default="3.12"
	// +optional
	PythonVersion string `json:"pythonVersion,omitempty"`
	// AgentCode locates the agent.
	// +optional
	AgentCode *AgentCode `json:"agentCode,omitempty"`
	// Entrypoint is the Python module:attribute exposing the agent.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Entrypoint string `json:"entrypoint,omitempty"`
}

// MicrosoftAgentFrameworkRuntime configures Microsoft Agent Framework.
type MicrosoftAgentFrameworkRuntime struct {
	// Language of the agent. Only python has an adapter today; dotnet is
	// accepted by the schema and reported as RuntimeReady=False/ShapeInvalid.
	// +kubebuilder:validation:Enum=python;dotnet
	// +kubebuilder:default=python
	// +optional
	Language string `json:"language,omitempty"`
	// AgentCode locates the agent.
	// +optional
	AgentCode *AgentCode `json:"agentCode,omitempty"`
	// Entrypoint is the module:attribute (python) exposing the agent.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Entrypoint string `json:"entrypoint,omitempty"`
}

// LangGraphRuntime configures LangGraph.
type LangGraphRuntime struct {
	// Language of the graph.
	// +kubebuilder:validation:Enum=python;typescript
	// +kubebuilder:default=python
	// +optional
	Language string `json:"language,omitempty"`
	// AgentCode locates the graph.
	// +optional
	AgentCode *AgentCode `json:"agentCode,omitempty"`
	// Graph is the graph to serve, as in langgraph.json ("./agent.py:graph").
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Graph string `json:"graph,omitempty"`
}

// AnthropicRuntime configures the Anthropic (Claude Agent SDK) runtime.
type AnthropicRuntime struct {
	// AgentCode locates the agent.
	// +optional
	AgentCode *AgentCode `json:"agentCode,omitempty"`
	// Entrypoint is the Python module:attribute exposing the agent.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Entrypoint string `json:"entrypoint,omitempty"`
}

// PydanticAiRuntime configures PydanticAI.
type PydanticAiRuntime struct {
	// AgentCode locates the agent.
	// +optional
	AgentCode *AgentCode `json:"agentCode,omitempty"`
	// Entrypoint is the Python module:attribute exposing the agent.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Entrypoint string `json:"entrypoint,omitempty"`
}

// SemanticKernelRuntime is reserved for the Semantic Kernel adapter.
type SemanticKernelRuntime struct {
	// Language of the agent.
	// +kubebuilder:validation:Enum=python;dotnet
	// +kubebuilder:default=python
	// +optional
	Language string `json:"language,omitempty"`
	// AgentCode locates the agent.
	// +optional
	AgentCode *AgentCode `json:"agentCode,omitempty"`
}

// BYORuntime runs a user-supplied image that implements the kars runtime
// contract. The image must carry the label org.kars.runtime.contract=v1.
type BYORuntime struct {
	// Image reference of the agent.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image"`
	// ContractVersion the image implements.
	// +kubebuilder:validation:Enum=v1
	ContractVersion string `json:"contractVersion"`
	// Command overrides the image's entrypoint.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	Command []string `json:"command,omitempty"`
	// Args are passed to the command.
	// +kubebuilder:validation:MaxItems=128
	// +optional
	Args []string `json:"args,omitempty"`
	// Port is where the agent serves the contract's chat endpoint.
	// +kubebuilder:validation:Minimum=1024
	// +kubebuilder:validation:Maximum=65535
	// +kubebuilder:validation:XValidation:rule="self != 8443 && self != 8444 && self != 8445",message="byo.port may not be one of the router's ports 8443-8445"
	// +kubebuilder:default=18789
	// +optional
	Port int32 `json:"port,omitempty"`
}

// IsolationLevel is how strongly the agent is isolated.
// +kubebuilder:validation:Enum=standard;enhanced;confidential
type IsolationLevel string

// The isolation levels.
const (
	// IsolationStandard uses the container runtime's default seccomp profile.
	IsolationStandard IsolationLevel = "standard"
	// IsolationEnhanced uses the kars-strict seccomp profile.
	IsolationEnhanced IsolationLevel = "enhanced"
	// IsolationConfidential adds a Kata VM (RuntimeClass kata-vm-isolation).
	IsolationConfidential IsolationLevel = "confidential"
)

// SandboxIsolationSpec sets the agent pod's isolation.
type SandboxIsolationSpec struct {
	// Isolation level.
	// +kubebuilder:default=enhanced
	// +optional
	Isolation IsolationLevel `json:"isolation,omitempty"`
	// ReadOnlyRootFilesystem for the agent container. Only true is accepted:
	// the field exists so manifests can state it.
	// +kubebuilder:default=true
	// +kubebuilder:validation:XValidation:rule="self == true",message="sandbox.readOnlyRootFilesystem cannot be turned off: the agent writes only to /sandbox and /tmp"
	// +optional
	ReadOnlyRootFilesystem *bool `json:"readOnlyRootFilesystem,omitempty"`
	// RunAsNonRoot for the agent container. Only true is accepted.
	// +kubebuilder:default=true
	// +kubebuilder:validation:XValidation:rule="self == true",message="sandbox.runAsNonRoot cannot be turned off: the agent always runs as UID 1000"
	// +optional
	RunAsNonRoot *bool `json:"runAsNonRoot,omitempty"`
}

// RegistryMode sets where the sandbox's mesh identity is published.
// +kubebuilder:validation:Enum=local;global
type RegistryMode string

// GovernanceSpec configures policy evaluation.
type GovernanceSpec struct {
	// Enabled turns on policy evaluation of every action. On by default.
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`
	// ToolPolicyRef names the ToolPolicy (same namespace) to enforce.
	// +optional
	ToolPolicyRef *LocalObjectReference `json:"toolPolicyRef,omitempty"`
	// TrustThreshold is the minimum trust score a mesh peer needs.
	// +kubebuilder:default=500
	// +optional
	TrustThreshold *TrustScore `json:"trustThreshold,omitempty"`
	// RegistryMode local keeps the agent's mesh identity in this cluster's
	// registry; global publishes it for cross-cluster mesh.
	// +kubebuilder:default=local
	// +optional
	RegistryMode RegistryMode `json:"registryMode,omitempty"`
	// Behavior tunes the router's behaviour monitor, which watches for
	// bursts of calls and repeated denials. Without it the monitor alerts
	// (in the router's log and metrics) at the defaults and never
	// quarantines.
	// +optional
	Behavior *BehaviorMonitor `json:"behavior,omitempty"`
}

// BehaviorMonitor configures anomaly detection on a sandbox's actions.
type BehaviorMonitor struct {
	// MaxCallsPerMinute actions a minute are normal; more is a burst.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	// +kubebuilder:default=600
	// +optional
	MaxCallsPerMinute int32 `json:"maxCallsPerMinute,omitempty"`
	// MaxDenialsPerMinute policy denials a minute are tolerated; more
	// raises an alert.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	// +kubebuilder:default=20
	// +optional
	MaxDenialsPerMinute int32 `json:"maxDenialsPerMinute,omitempty"`
	// Quarantine turns an alert into a quarantine: every further action is
	// denied until an operator clears it.
	// +optional
	Quarantine bool `json:"quarantine,omitempty"`
}

// EgressMode is how the router treats outbound traffic.
// +kubebuilder:validation:Enum=Strict;Learn
type EgressMode string

// The egress modes.
const (
	// EgressStrict allows only allowlisted hosts.
	EgressStrict EgressMode = "Strict"
	// EgressLearn allows every destination the blocklist does not name and
	// records it with counts, so that an operator can review the hosts and
	// enforce an allowlist built from them (`kars egress --enforce`).
	EgressLearn EgressMode = "Learn"
)

// SandboxNetworkPolicy configures network containment.
type SandboxNetworkPolicy struct {
	// DefaultDeny makes the NetworkPolicy deny all traffic not explicitly
	// allowed. Only true is accepted.
	// +kubebuilder:default=true
	// +kubebuilder:validation:XValidation:rule="self == true",message="networkPolicy.defaultDeny cannot be turned off"
	// +optional
	DefaultDeny *bool `json:"defaultDeny,omitempty"`
	// EgressMode of the router's egress proxy.
	// +kubebuilder:default=Strict
	// +optional
	EgressMode EgressMode `json:"egressMode,omitempty"`
	// AllowlistRef points to a signed OCI artifact holding the egress
	// allowlist.
	// +optional
	AllowlistRef *OCIArtifactReference `json:"allowlistRef,omitempty"`
	// AllowedHosts are hosts the router may reach on the agent's behalf, in
	// addition to the allowlist artifact and approved EgressApprovals.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	AllowedHosts []Hostname `json:"allowedHosts,omitempty"`
}

// OCIArtifactReference locates an OCI artifact by digest.
type OCIArtifactReference struct {
	// Registry host, for example "karsacr.azurecr.io".
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$`
	Registry string `json:"registry"`
	// Repository within the registry.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:Pattern=`^[a-z0-9]+([._/-][a-z0-9]+)*$`
	Repository string `json:"repository"`
	// Digest of the artifact manifest.
	Digest Digest `json:"digest"`
	// ArtifactType expected on the manifest.
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:default="application/vnd.kars.egress-allowlist.v1+yaml"
	// +optional
	ArtifactType string `json:"artifactType,omitempty"`
}

// AgentSpec holds runtime-independent agent settings.
type AgentSpec struct {
	// Instructions are the agent's system instructions.
	// +kubebuilder:validation:MaxLength=65536
	// +optional
	Instructions string `json:"instructions,omitempty"`
	// Tools the agent is offered. Each call is still evaluated by the
	// ToolPolicy.
	// +kubebuilder:validation:MaxItems=128
	// +kubebuilder:validation:items:MaxLength=128
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9_.:-]+$`
	// +optional
	Tools []string `json:"tools,omitempty"`
}

// A2AExposure opts a sandbox in to inbound A2A calls through the gateway.
// +kubebuilder:validation:XValidation:rule="!(has(self.enabled) && self.enabled) || has(self.expiresAt)",message="a2a.expiresAt is required when a2a.enabled is true (exposure must end; at most 30 days ahead)"
// +kubebuilder:validation:XValidation:rule="!(has(self.enabled) && self.enabled) || (has(self.allowedCallers) && size(self.allowedCallers) > 0)",message="a2a.allowedCallers needs at least one caller when a2a.enabled is true"
// +kubebuilder:validation:XValidation:rule="!(has(self.enabled) && self.enabled) || has(self.rateLimit)",message="a2a.rateLimit is required when a2a.enabled is true"
type A2AExposure struct {
	// Enabled exposes the sandbox to the allowed callers.
	// +kubebuilder:default=false
	// +optional
	Enabled bool `json:"enabled"`
	// AllowedCallers are the foreign agents that may call, pinned by the
	// thumbprint of their AgentCard signing key.
	// +kubebuilder:validation:MaxItems=64
	// +listType=map
	// +listMapKey=jwsThumbprint
	// +optional
	AllowedCallers []A2ACaller `json:"allowedCallers,omitempty"`
	// ExpiresAt ends the exposure. The controller refuses windows longer
	// than 30 days from the time it first sees them.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`
	// AdvertisedSkills are published on the agent card; callers may invoke
	// nothing else.
	// +kubebuilder:validation:MaxItems=32
	// +listType=map
	// +listMapKey=name
	// +optional
	AdvertisedSkills []A2ASkill `json:"advertisedSkills,omitempty"`
	// MinimumTrustScore a caller needs.
	// +optional
	MinimumTrustScore *TrustScore `json:"minimumTrustScore,omitempty"`
	// RateLimit per caller.
	// +optional
	RateLimit *RequestRateLimit `json:"rateLimit,omitempty"`
	// BodyCapBytes caps request bodies; the ceiling is 4 MiB.
	// +kubebuilder:validation:Minimum=1024
	// +kubebuilder:validation:Maximum=4194304
	// +kubebuilder:default=1048576
	// +optional
	BodyCapBytes int64 `json:"bodyCapBytes,omitempty"`
	// SessionMaxSeconds bounds one A2A session.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=3600
	// +kubebuilder:default=60
	// +optional
	SessionMaxSeconds int32 `json:"sessionMaxSeconds,omitempty"`
	// AllowStreaming permits SendStreamingMessage / message/stream.
	// +optional
	AllowStreaming bool `json:"allowStreaming,omitempty"`
}

// A2ACaller identifies a foreign agent allowed to call.
type A2ACaller struct {
	// JWSThumbprint is "sha256:" + the hex SHA-256 JWK thumbprint (RFC 7638)
	// of the caller's AgentCard signing key.
	JWSThumbprint Digest `json:"jwsThumbprint"`
	// DisplayName for audit and status.
	// +kubebuilder:validation:MaxLength=128
	// +optional
	DisplayName string `json:"displayName,omitempty"`
	// Issuer is the URL of the caller's agent card.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://')",message="a2a caller issuer must be an https:// URL"
	// +optional
	Issuer string `json:"issuer,omitempty"`
}

// A2ASkill is a skill published on the agent card.
type A2ASkill struct {
	// Name of the skill, for example "search.web".
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9_.-]+$`
	Name string `json:"name"`
	// Description shown to callers.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Description string `json:"description,omitempty"`
}

// UpstreamCompatibility sets coexistence with agents.x-k8s.io Sandboxes.
type UpstreamCompatibility struct {
	// SigsAgentSandbox is off (kars owns everything), translate (kars also
	// emits an upstream Sandbox), overlay (kars adds governance to an
	// upstream-owned pod) or observe (kars mirrors an upstream status).
	// +kubebuilder:validation:Enum=off;translate;overlay;observe
	// +kubebuilder:default=off
	// +optional
	SigsAgentSandbox string `json:"sigsAgentSandbox,omitempty"`
	// UpstreamRef names the upstream Sandbox for overlay and observe.
	// +optional
	UpstreamRef *LocalObjectReference `json:"upstreamRef,omitempty"`
}

// SandboxPhase summarises a sandbox's state.
// +kubebuilder:validation:Enum=Pending;Provisioning;Running;Suspended;Degraded;Failed
type SandboxPhase string

// The sandbox phases.
const (
	SandboxPending      SandboxPhase = "Pending"
	SandboxProvisioning SandboxPhase = "Provisioning"
	SandboxRunning      SandboxPhase = "Running"
	SandboxSuspended    SandboxPhase = "Suspended"
	SandboxDegraded     SandboxPhase = "Degraded"
	SandboxFailed       SandboxPhase = "Failed"
)

// Condition types specific to KarsSandbox.
const (
	ConditionSuspended         = "Suspended"
	ConditionRuntimeReady      = "RuntimeReady"
	ConditionRouterEnforcing   = "RouterEnforcing"
	ConditionAllowlistVerified = "AllowlistVerified"
	// ConditionAuditIntact is False when the router's audit log lost
	// entries the controller saw it write, or signs with a key other than
	// the pinned one.
	ConditionAuditIntact = "AuditIntact"
	ConditionA2AExposed  = "A2AExposed"
)

// KarsSandboxStatus is the observed state of a sandbox.
type KarsSandboxStatus struct {
	CommonStatus `json:",inline"`
	// Phase summarises the conditions.
	// +optional
	Phase SandboxPhase `json:"phase,omitempty"`
	// RouterEndpoint is the in-cluster address of the router's admin API.
	// +optional
	RouterEndpoint string `json:"routerEndpoint,omitempty"`
	// ConfigDigest is the digest of the router configuration compiled for
	// this sandbox.
	// +optional
	ConfigDigest string `json:"configDigest,omitempty"`
	// EnforcedDigest is the configuration digest the router reports it
	// enforces.
	// +optional
	EnforcedDigest string `json:"enforcedDigest,omitempty"`
	// RuntimeImage is the image the runtime container runs.
	// +optional
	RuntimeImage string `json:"runtimeImage,omitempty"`
	// Model is the primary model the router currently serves.
	// +optional
	Model string `json:"model,omitempty"`
	// A2AExpiresAt is when inbound A2A exposure ends, while it is active.
	// +optional
	A2AExpiresAt *metav1.Time `json:"a2aExpiresAt,omitempty"`
	// Audit is the router's audit log head as the controller last read
	// it, kept here, outside the router's volume, so that a log cut
	// together with its checkpoints is still caught (`kars audit verify`).
	// +optional
	Audit *AuditAnchor `json:"audit,omitempty"`
}

// AuditAnchor records a router's audit log head outside the router.
type AuditAnchor struct {
	// CheckpointKey is the base64 Ed25519 public key the router signs its
	// checkpoints with, pinned the first time the controller read it. A
	// router that later signs with another key raises AuditIntact=False.
	// +optional
	CheckpointKey string `json:"checkpointKey,omitempty"`
	// Seq is the sequence number of the last durable entry read.
	// +optional
	Seq int64 `json:"seq,omitempty"`
	// Hash is that entry's SHA-256, lowercase hex.
	// +optional
	Hash string `json:"hash,omitempty"`
	// RecordedAt is when the controller read it.
	// +optional
	RecordedAt *metav1.Time `json:"recordedAt,omitempty"`
}

// KarsSandbox is one governed agent: a hardened pod with the agent (UID 1000)
// and its router (UID 1001), the router's compiled policy and the network
// containment around them.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ksb;karssb,categories=kars
// +kubebuilder:printcolumn:name="Runtime",type=string,JSONPath=`.spec.runtime.kind`
// +kubebuilder:printcolumn:name="Isolation",type=string,JSONPath=`.spec.sandbox.isolation`
// +kubebuilder:printcolumn:name="Model",type=string,JSONPath=`.status.model`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="A2A",type=boolean,JSONPath=`.spec.a2a.enabled`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type KarsSandbox struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   KarsSandboxSpec   `json:"spec"`
	Status KarsSandboxStatus `json:"status,omitempty"`
}

// KarsSandboxList is a list of KarsSandboxes.
//
// +kubebuilder:object:root=true
type KarsSandboxList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []KarsSandbox `json:"items"`
}

func init() { register(&KarsSandbox{}, &KarsSandboxList{}) }

// GovernanceEnabled reports whether policy evaluation is on (the default).
func (s *KarsSandboxSpec) GovernanceEnabled() bool {
	return s.Governance.Enabled == nil || *s.Governance.Enabled
}

// IsolationLevel returns the effective isolation (enhanced by default).
func (s *KarsSandboxSpec) IsolationLevel() IsolationLevel {
	if s.Sandbox.Isolation == "" {
		return IsolationEnhanced
	}
	return s.Sandbox.Isolation
}
