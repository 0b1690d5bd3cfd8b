package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A2AAgentSpec registers a remote A2A agent that sandboxes may call out to.
// The router fetches and verifies its card and gates calls on trust.
type A2AAgentSpec struct {
	// CardURL is the agent's card, for example
	// "https://partner.example.com/.well-known/agent-card.json".
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://')",message="cardURL must be an https:// URL"
	CardURL string `json:"cardURL"`
	// JWSThumbprint pins the card's signing key ("sha256:" + hex RFC 7638
	// thumbprint). Unsigned or differently signed cards are refused.
	JWSThumbprint Digest `json:"jwsThumbprint"`
	// ProtocolVersion the agent speaks.
	// +kubebuilder:validation:Enum="1.0";"0.3"
	// +kubebuilder:default="1.0"
	// +optional
	ProtocolVersion string `json:"protocolVersion,omitempty"`
	// Sandboxes that may call this agent. Empty means none.
	// +kubebuilder:validation:MaxItems=128
	// +optional
	Sandboxes []string `json:"sandboxes,omitempty"`
	// AllowedSkills restricts which of the agent's skills may be used.
	// Empty means every skill on its card.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	AllowedSkills []string `json:"allowedSkills,omitempty"`
	// MinimumTrustScore the agent must hold to be called.
	// +kubebuilder:default=500
	// +optional
	MinimumTrustScore *TrustScore `json:"minimumTrustScore,omitempty"`
	// RateLimit on calls to the agent.
	// +optional
	RateLimit *RequestRateLimit `json:"rateLimit,omitempty"`
	// ExpiresAt ends the registration.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`
}

// A2AAgentStatus is the observed state of a registered agent.
type A2AAgentStatus struct {
	CommonStatus `json:",inline"`
	// Phase is Pending, Verified, Unverified or Expired.
	// +kubebuilder:validation:Enum=Pending;Verified;Unverified;Expired
	// +optional
	Phase string `json:"phase,omitempty"`
	// CardDigest is the SHA-256 of the canonical card last verified.
	// +optional
	CardDigest string `json:"cardDigest,omitempty"`
	// Skills advertised on the verified card.
	// +optional
	Skills []string `json:"skills,omitempty"`
	// Endpoint is the verified card's JSON-RPC URL for the spec's protocol
	// version: where the routers of the allowed sandboxes send calls.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// TrustScore currently held.
	// +optional
	TrustScore *TrustScore `json:"trustScore,omitempty"`
	// LastVerified is when the card was last fetched and verified.
	// +optional
	LastVerified *metav1.Time `json:"lastVerified,omitempty"`
}

// A2AAgent registers a remote A2A agent (a peer) that sandboxes may call.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=a2a;a2aagent,categories=kars
// +kubebuilder:printcolumn:name="Card",type=string,JSONPath=`.spec.cardURL`
// +kubebuilder:printcolumn:name="Trust",type=integer,JSONPath=`.status.trustScore`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type A2AAgent struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   A2AAgentSpec   `json:"spec"`
	Status A2AAgentStatus `json:"status,omitempty"`
}

// A2AAgentList is a list of A2AAgents.
//
// +kubebuilder:object:root=true
type A2AAgentList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []A2AAgent `json:"items"`
}

func init() { register(&A2AAgent{}, &A2AAgentList{}) }
