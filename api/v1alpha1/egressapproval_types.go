package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// EgressApprovalSpec approves, for a limited time, hosts a sandbox's router
// may reach on the agent's behalf. Creating one is the approval, so RBAC on
// this kind decides who may approve egress.
type EgressApprovalSpec struct {
	// Sandbox is the name of the KarsSandbox in this namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="sandbox is immutable: create a new approval for another sandbox"
	Sandbox string `json:"sandbox"`
	// Hosts approved: DNS names or "*." wildcards.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +listType=set
	Hosts []Hostname `json:"hosts"`
	// Ports approved on those hosts.
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:Minimum=1
	// +kubebuilder:validation:items:Maximum=65535
	// +kubebuilder:default={443}
	// +listType=set
	// +optional
	Ports []int32 `json:"ports,omitempty"`
	// Reason the hosts are needed, kept for audit.
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=1024
	Reason string `json:"reason"`
	// Ticket is the change or incident reference the approval was made
	// under, kept for audit.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Ticket string `json:"ticket,omitempty"`
	// TTL of the approval, from its creation: between 1m and 720h (30 days).
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m') && duration(self) <= duration('720h')",message="ttl must be between 1m and 720h (30 days)"
	// +optional
	TTL *metav1.Duration `json:"ttl,omitempty"`
}

// EgressApprovalStatus is the observed state of an approval.
type EgressApprovalStatus struct {
	CommonStatus `json:",inline"`
	// Phase is Pending (not yet enforced by the sandbox's router), Active
	// (the router echoes it: condition RouterConfirmed), Expired, or
	// Invalid (e.g. the sandbox does not exist).
	// +kubebuilder:validation:Enum=Pending;Active;Expired;Invalid
	// +optional
	Phase string `json:"phase,omitempty"`
	// ExpiresAt is creation time plus ttl.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`
}

// EgressApproval grants a sandbox time-bounded egress to named hosts.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ea;egress,categories=kars
// +kubebuilder:printcolumn:name="Sandbox",type=string,JSONPath=`.spec.sandbox`
// +kubebuilder:printcolumn:name="Hosts",type=string,JSONPath=`.spec.hosts`
// +kubebuilder:printcolumn:name="Expires",type=date,JSONPath=`.status.expiresAt`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type EgressApproval struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   EgressApprovalSpec   `json:"spec"`
	Status EgressApprovalStatus `json:"status,omitempty"`
}

// EgressApprovalList is a list of EgressApprovals.
//
// +kubebuilder:object:root=true
type EgressApprovalList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []EgressApproval `json:"items"`
}

func init() { register(&EgressApproval{}, &EgressApprovalList{}) }
