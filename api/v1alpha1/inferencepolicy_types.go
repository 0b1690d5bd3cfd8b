package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ModelProvider names an inference provider the router can broker.
// +kubebuilder:validation:Enum=AzureOpenAI;AzureAIFoundry;OpenAI;GitHubModels;Anthropic;OpenAICompatible;Offline
type ModelProvider string

// The providers. Offline is the router's built-in deterministic model for
// local development without credentials.
const (
	ProviderAzureOpenAI      ModelProvider = "AzureOpenAI"
	ProviderAzureAIFoundry   ModelProvider = "AzureAIFoundry"
	ProviderOpenAI           ModelProvider = "OpenAI"
	ProviderGitHubModels     ModelProvider = "GitHubModels"
	ProviderAnthropic        ModelProvider = "Anthropic"
	ProviderOpenAICompatible ModelProvider = "OpenAICompatible"
	ProviderOffline          ModelProvider = "Offline"
)

// InferencePolicySpec governs a sandbox's model access. It is a budget and
// guardrail policy, not a model router: model choice stays with the
// provider, the policy says which deployments may be used and how much.
type InferencePolicySpec struct {
	// ModelPreference is the primary model and its ordered fallbacks.
	ModelPreference ModelPreference `json:"modelPreference"`
	// TokenBudget bounds token use.
	// +optional
	TokenBudget *TokenBudget `json:"tokenBudget,omitempty"`
	// RateLimit bounds request and token rates.
	// +optional
	RateLimit *InferenceRateLimit `json:"rateLimit,omitempty"`
	// ContentSafety sets the content-safety floors enforced on responses.
	// +optional
	ContentSafety *ContentSafety `json:"contentSafety,omitempty"`
}

// ModelPreference is a primary target and fallbacks tried in order when the
// primary is unhealthy (429 or 5xx).
type ModelPreference struct {
	// Primary is the model target used while it is healthy.
	Primary ModelTarget `json:"primary"`
	// Fallbacks are tried in order.
	// +kubebuilder:validation:MaxItems=8
	// +optional
	Fallbacks []ModelTarget `json:"fallbacks,omitempty"`
}

// ModelTarget is one deployment of a model at a provider.
// +kubebuilder:validation:XValidation:rule="!(self.provider in ['AzureOpenAI', 'AzureAIFoundry', 'OpenAICompatible']) || has(self.endpoint)",message="endpoint is required for AzureOpenAI, AzureAIFoundry and OpenAICompatible providers"
// +kubebuilder:validation:XValidation:rule="self.provider != 'AzureOpenAI' || has(self.deployment)",message="deployment is required for the AzureOpenAI provider"
// +kubebuilder:validation:XValidation:rule="!has(self.auth) || self.auth.mode != 'APIKey' || has(self.auth.secretRef)",message="auth.secretRef is required when auth.mode is APIKey"
// +kubebuilder:validation:XValidation:rule="!has(self.auth) || !(self.auth.mode in ['WorkloadIdentity', 'ManagedIdentity']) || self.provider in ['AzureOpenAI', 'AzureAIFoundry']",message="WorkloadIdentity and ManagedIdentity authenticate only to Azure providers"
type ModelTarget struct {
	// Provider of the model.
	Provider ModelProvider `json:"provider"`
	// Model name, for example "gpt-4.1".
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._:/-]*$`
	Model string `json:"model"`
	// Deployment name at an Azure provider.
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._-]*$`
	// +optional
	Deployment string `json:"deployment,omitempty"`
	// Endpoint is the provider's base URL.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://') || self.startsWith('http://')",message="endpoint must be an http:// or https:// URL"
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// APIVersion for Azure OpenAI (the api-version query parameter).
	// +kubebuilder:validation:MaxLength=64
	// +optional
	APIVersion string `json:"apiVersion,omitempty"`
	// Auth says how the router authenticates. Credentials are held by the
	// router only, never by the agent.
	// +optional
	Auth *ProviderAuth `json:"auth,omitempty"`
}

// AuthMode is how the router obtains a credential for a provider.
// +kubebuilder:validation:Enum=WorkloadIdentity;ManagedIdentity;APIKey;None
type AuthMode string

// The auth modes.
const (
	AuthWorkloadIdentity AuthMode = "WorkloadIdentity"
	AuthManagedIdentity  AuthMode = "ManagedIdentity"
	AuthAPIKey           AuthMode = "APIKey"
	AuthNone             AuthMode = "None"
)

// ProviderAuth configures the router's credential for a provider.
type ProviderAuth struct {
	// Mode of authentication.
	Mode AuthMode `json:"mode"`
	// SecretRef holds the API key for mode APIKey. It is mounted into the
	// router container only, readable by UID 1001 only.
	// +optional
	SecretRef *SecretKeyReference `json:"secretRef,omitempty"`
	// ClientID of the Entra application or managed identity.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	ClientID string `json:"clientID,omitempty"`
	// TenantID of the Entra tenant.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	TenantID string `json:"tenantID,omitempty"`
	// Scope requested for Entra tokens.
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:default="https://cognitiveservices.azure.com/.default"
	// +optional
	Scope string `json:"scope,omitempty"`
}

// TokenBudget bounds token use per sandbox. Windows are UTC calendar days and
// months. Zero means no bound.
// +kubebuilder:validation:XValidation:rule="!has(self.daily) || !has(self.monthly) || self.monthly == 0 || self.daily <= self.monthly",message="tokenBudget.daily may not exceed tokenBudget.monthly"
// +kubebuilder:validation:XValidation:rule="!has(self.perRequest) || !has(self.daily) || self.daily == 0 || self.perRequest <= self.daily",message="tokenBudget.perRequest may not exceed tokenBudget.daily"
type TokenBudget struct {
	// PerRequest caps the tokens one request may use.
	// +kubebuilder:validation:Minimum=0
	// +optional
	PerRequest int64 `json:"perRequest,omitempty"`
	// Daily caps tokens per UTC day.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Daily int64 `json:"daily,omitempty"`
	// Monthly caps tokens per UTC month.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Monthly int64 `json:"monthly,omitempty"`
	// DefaultReserve is reserved for a request that states no maximum
	// output tokens, before the upstream reports real usage.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:default=4096
	// +optional
	DefaultReserve int64 `json:"defaultReserve,omitempty"`
}

// InferenceRateLimit bounds request and token rates.
type InferenceRateLimit struct {
	// RPM is requests per minute.
	// +kubebuilder:validation:Minimum=0
	// +optional
	RPM int32 `json:"rpm,omitempty"`
	// TPM is tokens per minute.
	// +kubebuilder:validation:Minimum=0
	// +optional
	TPM int64 `json:"tpm,omitempty"`
}

// Severity is a content-safety severity, in increasing order.
// +kubebuilder:validation:Enum=Safe;Low;Medium;High
type Severity string

// The severities.
const (
	SeveritySafe   Severity = "Safe"
	SeverityLow    Severity = "Low"
	SeverityMedium Severity = "Medium"
	SeverityHigh   Severity = "High"
)

// ContentSafety sets per-category floors: a finding whose severity is above
// the category's floor blocks the response.
type ContentSafety struct {
	// Hate floor.
	// +kubebuilder:default=Low
	// +optional
	Hate Severity `json:"hate,omitempty"`
	// SelfHarm floor.
	// +kubebuilder:default=Low
	// +optional
	SelfHarm Severity `json:"selfHarm,omitempty"`
	// Sexual floor.
	// +kubebuilder:default=Low
	// +optional
	Sexual Severity `json:"sexual,omitempty"`
	// Violence floor.
	// +kubebuilder:default=Low
	// +optional
	Violence Severity `json:"violence,omitempty"`
	// RequirePromptShields rejects responses that carry no prompt-shield
	// annotations (the provider did not run them).
	// +optional
	RequirePromptShields bool `json:"requirePromptShields,omitempty"`
	// BlockJailbreak blocks when a jailbreak attempt is detected.
	// +kubebuilder:default=true
	// +optional
	BlockJailbreak *bool `json:"blockJailbreak,omitempty"`
	// BlockIndirectAttack blocks when an indirect prompt attack is detected.
	// +kubebuilder:default=true
	// +optional
	BlockIndirectAttack *bool `json:"blockIndirectAttack,omitempty"`
}

// Policy-kind phases and condition types. A policy is Compiled once the
// controller built router configuration from it, and Enforcing once every
// router that uses it reports the matching digest.
const (
	PolicyPhasePending                   = "Pending"
	PolicyPhaseAwaitingRouterEnforcement = "AwaitingRouterEnforcement"
	PolicyPhaseRouterEnforcing           = "RouterEnforcing"
	PolicyPhaseInvalid                   = "Invalid"
	ConditionCompiled                    = "Compiled"
)

// PolicyStatus is the status of InferencePolicy and ToolPolicy.
type PolicyStatus struct {
	CommonStatus `json:",inline"`
	// Phase is Pending, AwaitingRouterEnforcement, RouterEnforcing or Invalid.
	// +kubebuilder:validation:Enum=Pending;AwaitingRouterEnforcement;RouterEnforcing;Invalid
	// +optional
	Phase string `json:"phase,omitempty"`
	// Sandboxes using this policy.
	// +optional
	Sandboxes []string `json:"sandboxes,omitempty"`
	// EnforcingSandboxes is how many of them run a router enforcing the
	// current compiled digest.
	// +optional
	EnforcingSandboxes int32 `json:"enforcingSandboxes,omitempty"`
}

// InferencePolicy governs a sandbox's model access: models, token budgets,
// rate limits and content safety. The controller compiles it into the
// sandbox router's configuration.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ip;infpol,categories=kars
// +kubebuilder:printcolumn:name="Provider",type=string,JSONPath=`.spec.modelPreference.primary.provider`
// +kubebuilder:printcolumn:name="Model",type=string,JSONPath=`.spec.modelPreference.primary.model`
// +kubebuilder:printcolumn:name="Daily",type=integer,JSONPath=`.spec.tokenBudget.daily`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type InferencePolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   InferencePolicySpec `json:"spec"`
	Status PolicyStatus        `json:"status,omitempty"`
}

// InferencePolicyList is a list of InferencePolicies.
//
// +kubebuilder:object:root=true
type InferencePolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []InferencePolicy `json:"items"`
}

func init() { register(&InferencePolicy{}, &InferencePolicyList{}) }
