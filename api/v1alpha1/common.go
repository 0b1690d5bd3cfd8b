package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LocalObjectReference names an object in the same namespace.
type LocalObjectReference struct {
	// Name of the referenced object.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	Name string `json:"name"`
}

// SecretKeyReference selects one key of a Secret in the same namespace.
type SecretKeyReference struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// Key within the Secret's data.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Key string `json:"key"`
}

// Status fields shared by every kind. Embedded inline so each kind's status
// reads flat: status.phase, status.conditions, status.observedGeneration.
type CommonStatus struct {
	// ObservedGeneration is the metadata.generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions report the object's state in the standard Kubernetes form.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`
}

// Condition types used across kinds.
const (
	ConditionReady       = "Ready"
	ConditionProgressing = "Progressing"
	ConditionDegraded    = "Degraded"
)

// Digest is a SHA-256 content digest or key thumbprint: "sha256:" followed by
// 64 lowercase hex characters.
// +kubebuilder:validation:MaxLength=71
// +kubebuilder:validation:XValidation:rule="self.matches('^sha256:[a-f0-9]{64}$')",message="must be \"sha256:\" followed by 64 lowercase hex characters"
type Digest string

// Hostname is a DNS name, optionally with a leading "*." wildcard label, in
// lowercase (for example "api.github.com" or "*.blob.core.windows.net").
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=253
// +kubebuilder:validation:XValidation:rule="self.matches('^([*][.])?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$')",message="must be a lowercase DNS name such as api.github.com, optionally starting with the wildcard *."
type Hostname string

// TrustScore is a trust score on the AgentMesh scale 0..1000.
// +kubebuilder:validation:Minimum=0
// +kubebuilder:validation:Maximum=1000
type TrustScore int32

// DecimalAmount is a non-negative decimal amount with up to six fractional
// digits, such as "25" or "199.99". A string, not a number, so that money
// keeps its exact value.
// +kubebuilder:validation:Pattern=`^[0-9]{1,12}(\.[0-9]{1,6})?$`
// +kubebuilder:validation:MaxLength=19
type DecimalAmount string

// AgentCode says where a first-class runtime finds the agent's own code:
// an OCI image layered onto the runtime, or a git checkout.
// +kubebuilder:validation:XValidation:rule="has(self.oci) != has(self.git)",message="agentCode needs exactly one of oci or git"
type AgentCode struct {
	// OCI takes the agent code from an image.
	// +optional
	OCI *OCIAgentCode `json:"oci,omitempty"`
	// Git takes the agent code from a git repository.
	// +optional
	Git *GitAgentCode `json:"git,omitempty"`
}

// OCIAgentCode is agent code shipped as an OCI image.
type OCIAgentCode struct {
	// Image reference, for example "myacr.azurecr.io/agent:1.2" or
	// "myacr.azurecr.io/agent@sha256:…".
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image"`
}

// GitAgentCode is agent code checked out from git.
type GitAgentCode struct {
	// URL of the repository (https or ssh).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://') || self.startsWith('ssh://') || self.startsWith('git@')",message="git.url must be an https://, ssh:// or git@ URL"
	URL string `json:"url"`
	// Ref is a branch, tag or commit.
	// +kubebuilder:default=main
	// +kubebuilder:validation:MaxLength=255
	// +optional
	Ref string `json:"ref,omitempty"`
	// Path within the repository holding the agent.
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="!self.contains('..')",message="git.path may not contain '..'"
	// +optional
	Path string `json:"path,omitempty"`
	// SecretRef names a Secret with credentials for a private repository.
	// +optional
	SecretRef *LocalObjectReference `json:"secretRef,omitempty"`
}

// RequestRateLimit bounds requests per minute with a burst allowance.
type RequestRateLimit struct {
	// RPM is the sustained number of requests per minute.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	RPM int32 `json:"rpm"`
	// Burst is how many requests may arrive at once above the sustained rate.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	// +optional
	Burst int32 `json:"burst,omitempty"`
}
