package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TrustGraphSpec is a set of signed trust edges between agent identities.
// Each edge is signed by its issuer so a graph can be shared across clusters
// without trusting the transport.
type TrustGraphSpec struct {
	// TrustDomain the graph describes, for example "contoso.com".
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	TrustDomain string `json:"trustDomain"`
	// Edges of the graph.
	// +kubebuilder:validation:MaxItems=1024
	// +optional
	Edges []TrustEdge `json:"edges,omitempty"`
}

// TrustEdge says how much one identity trusts another.
// +kubebuilder:validation:XValidation:rule="self.from != self.to",message="a trust edge may not point from an identity to itself"
type TrustEdge struct {
	// From is the trusting identity (agent id or "namespace/sandbox").
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	From string `json:"from"`
	// To is the trusted identity.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	To string `json:"to"`
	// Score on the 0..1000 scale.
	Score TrustScore `json:"score"`
	// KeyID names the Ed25519 key that signed the edge.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	KeyID string `json:"keyID"`
	// Signature is the base64url Ed25519 signature, by the key KeyID
	// names in the kars-trust-keys ConfigMap, over "kars-trust-edge-v1\n"
	// followed by the RFC 8785 JSON of {domain (the graph's trustDomain),
	// expiresAt (RFC 3339 UTC, omitted when unset), from, score, to}
	// (docs/mesh.md, "TrustGraph").
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9_-]{86}$`
	Signature string `json:"signature"`
	// ExpiresAt ends the edge.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`
}

// TrustGraphStatus is the observed state of a trust graph.
type TrustGraphStatus struct {
	CommonStatus `json:",inline"`
	// VerifiedEdges counts edges whose signature verified.
	// +optional
	VerifiedEdges int32 `json:"verifiedEdges,omitempty"`
	// RejectedEdges counts edges that failed verification or expired.
	// +optional
	RejectedEdges int32 `json:"rejectedEdges,omitempty"`
}

// TrustGraph holds signed trust edges between agents (cluster-scoped).
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=tg;trust,categories=kars
// +kubebuilder:printcolumn:name="Domain",type=string,JSONPath=`.spec.trustDomain`
// +kubebuilder:printcolumn:name="Verified",type=integer,JSONPath=`.status.verifiedEdges`
// +kubebuilder:printcolumn:name="Rejected",type=integer,JSONPath=`.status.rejectedEdges`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type TrustGraph struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   TrustGraphSpec   `json:"spec"`
	Status TrustGraphStatus `json:"status,omitempty"`
}

// TrustGraphList is a list of TrustGraphs.
//
// +kubebuilder:object:root=true
type TrustGraphList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TrustGraph `json:"items"`
}

func init() { register(&TrustGraph{}, &TrustGraphList{}) }
