package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CredentialBindingSpec binds one credential the router holds for a sandbox
// to the endpoints where it may be used and the place in a request where it
// goes. The agent holds only a placeholder (in the environment variable
// agentEnv); the router puts the real value in place on requests to an
// endpoint, in that place, and refuses — 403, audited — a placeholder seen
// anywhere else. The Secret is mounted into the router only.
//
// A binding also lets the agent reach its endpoints' hosts and ports
// through the egress proxy (the blocklist and the ToolPolicy still apply).
// +kubebuilder:validation:XValidation:rule="self.placement.type in ['Header', 'Query'] ? has(self.placement.name) : !has(self.placement.name)",message="placement.name is required for Header and Query placements and not allowed otherwise"
// +kubebuilder:validation:XValidation:rule="!has(self.placement.valuePrefix) || self.placement.type == 'Header'",message="placement.valuePrefix applies to Header placements only"
type CredentialBindingSpec struct {
	// SandboxRef names the KarsSandbox (same namespace) whose router holds
	// the credential.
	SandboxRef LocalObjectReference `json:"sandboxRef"`
	// SecretRef is the credential's value: one key of a Secret in the
	// namespace. 8 to 4096 visible ASCII characters.
	SecretRef SecretKeyReference `json:"secretRef"`
	// Endpoints are the URL prefixes the credential may be sent to:
	// https://host[:port]/path (or http://). Hosts are named one by one
	// (no wildcards); paths are compared segment by segment after
	// canonicalisation, and a path that could be read two ways gets no
	// credential.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=2048
	// +kubebuilder:validation:items:Pattern=`^https?://[a-z0-9.\-\[\]:]+(:[0-9]{1,5})?/[^?#]*$`
	Endpoints []string `json:"endpoints"`
	// Placement is where in a request the credential goes.
	Placement CredentialPlacement `json:"placement"`
	// AgentEnv names the agent's environment variable that holds the
	// placeholder (for example TELEGRAM_BOT_TOKEN or GITHUB_TOKEN). Empty:
	// the placeholder is only listed in KARS_CREDENTIALS.
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_]*$`
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('KARS_') && !self.startsWith('AZURE_') && !self.startsWith('AGT_') && !self.startsWith('IMDS_')",message="agentEnv may not use the reserved prefixes KARS_, AZURE_, AGT_ or IMDS_"
	// +optional
	AgentEnv string `json:"agentEnv,omitempty"`
}

// PlacementType is where a credential goes in a request.
// +kubebuilder:validation:Enum=Header;BasicAuth;Path;Query
type PlacementType string

// The placements.
const (
	// PlacementHeader: the named header's value holds the placeholder.
	PlacementHeader PlacementType = "Header"
	// PlacementBasicAuth: the user name or password of an
	// "Authorization: Basic" header is the placeholder.
	PlacementBasicAuth PlacementType = "BasicAuth"
	// PlacementPath: the URL path continues an endpoint's path with the
	// placeholder (Telegram's /bot<token>/method).
	PlacementPath PlacementType = "Path"
	// PlacementQuery: the named query parameter is the placeholder.
	PlacementQuery PlacementType = "Query"
)

// CredentialPlacement says where the credential goes.
type CredentialPlacement struct {
	// Type of placement.
	Type PlacementType `json:"type"`
	// Name of the header (Header) or query parameter (Query).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9!#$%&'*+.^_|~-]+$`
	// +optional
	Name string `json:"name,omitempty"`
	// ValuePrefix precedes the credential in the header's value, for
	// example "Bearer "; the value must then be exactly the prefix and the
	// placeholder.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	ValuePrefix string `json:"valuePrefix,omitempty"`
}

// CredentialBindingStatus reports the binding.
type CredentialBindingStatus struct {
	CommonStatus `json:",inline"`
	// Placeholder is what the agent holds instead of the credential. It is
	// not a secret.
	// +optional
	Placeholder string `json:"placeholder,omitempty"`
}

// CredentialBinding binds a credential to the endpoints where a sandbox's
// router may use it on the agent's behalf (docs/credentials.md). It is a
// kind of its own so that who may bind a Secret's value to a host — a
// grant as strong as reading the Secret — is a separate RBAC permission
// from who may edit a sandbox's policies.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=credbind;cb,categories=kars
// +kubebuilder:printcolumn:name="Sandbox",type=string,JSONPath=`.spec.sandboxRef.name`
// +kubebuilder:printcolumn:name="Placement",type=string,JSONPath=`.spec.placement.type`
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.spec.endpoints[0]`
// +kubebuilder:printcolumn:name="Env",type=string,JSONPath=`.spec.agentEnv`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type CredentialBinding struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   CredentialBindingSpec   `json:"spec"`
	Status CredentialBindingStatus `json:"status,omitempty"`
}

// CredentialBindingList is a list of CredentialBindings.
//
// +kubebuilder:object:root=true
type CredentialBindingList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []CredentialBinding `json:"items"`
}

func init() { register(&CredentialBinding{}, &CredentialBindingList{}) }
