package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// KarsMemorySpec binds a sandbox to an Azure AI Foundry memory store. kars is
// not a memory backend: the store lives in Foundry and the router brokers
// access to it with its own identity.
type KarsMemorySpec struct {
	// SandboxRef is the sandbox whose agent uses the memory.
	SandboxRef LocalObjectReference `json:"sandboxRef"`
	// Foundry locates the memory store.
	Foundry FoundryMemoryStore `json:"foundry"`
	// Scope partitions memories.
	// +kubebuilder:validation:Enum=agent;user;session
	// +kubebuilder:default=agent
	// +optional
	Scope string `json:"scope,omitempty"`
	// RetentionDays after which memories are forgotten; 0 keeps them.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=3650
	// +optional
	RetentionDays int32 `json:"retentionDays,omitempty"`
	// ReadOnly lets the agent recall but not store.
	// +optional
	ReadOnly bool `json:"readOnly,omitempty"`
	// DeleteOnSandboxDelete forgets the sandbox's memories in the store
	// (delete_scope) when the binding or its sandbox is deleted; by
	// default they are kept in Foundry.
	// +optional
	DeleteOnSandboxDelete bool `json:"deleteOnSandboxDelete,omitempty"`
}

// FoundryMemoryStore locates a Foundry memory store.
type FoundryMemoryStore struct {
	// Endpoint of the Foundry project.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://')",message="foundry.endpoint must be an https:// URL"
	Endpoint string `json:"endpoint"`
	// StoreName of the memory store in the project.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9_-]*$`
	StoreName string `json:"storeName"`
	// Auth for the router (workload or managed identity).
	// +optional
	Auth *ProviderAuth `json:"auth,omitempty"`
}

// KarsMemoryStatus is the observed state of a memory binding.
type KarsMemoryStatus struct {
	CommonStatus `json:",inline"`
	// Phase is Pending, Bound or Failed.
	// +kubebuilder:validation:Enum=Pending;Bound;Failed
	// +optional
	Phase string `json:"phase,omitempty"`
}

// KarsMemory binds a sandbox to a Foundry memory store.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=kmem,categories=kars
// +kubebuilder:printcolumn:name="Sandbox",type=string,JSONPath=`.spec.sandboxRef.name`
// +kubebuilder:printcolumn:name="Store",type=string,JSONPath=`.spec.foundry.storeName`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type KarsMemory struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   KarsMemorySpec   `json:"spec"`
	Status KarsMemoryStatus `json:"status,omitempty"`
}

// KarsMemoryList is a list of KarsMemories.
//
// +kubebuilder:object:root=true
type KarsMemoryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []KarsMemory `json:"items"`
}

func init() { register(&KarsMemory{}, &KarsMemoryList{}) }
