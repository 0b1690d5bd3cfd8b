package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ToolPolicySpec is the policy the router's governance engine enforces on a
// sandbox's actions (tool calls, MCP calls, shell commands, egress, mesh
// sends, …). No matching rule means deny; at equal priority deny wins.
type ToolPolicySpec struct {
	// AppliesTo narrows which sandboxes may use this policy. Empty means any
	// sandbox in the namespace that references it.
	// +optional
	AppliesTo ToolPolicyTarget `json:"appliesTo,omitempty"`
	// Rules are evaluated by priority, highest first.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +listType=map
	// +listMapKey=name
	Rules []ToolRule `json:"rules"`
	// Approval sets when allowed actions still need a person's approval.
	// +optional
	Approval *ToolApproval `json:"approval,omitempty"`
	// RateLimit bounds all actions of the sandbox together.
	// +optional
	RateLimit *ToolRateLimit `json:"rateLimit,omitempty"`
	// Commerce caps spending by tools that move money.
	// +optional
	Commerce *CommerceLimits `json:"commerce,omitempty"`
}

// ToolPolicyTarget selects sandboxes.
type ToolPolicyTarget struct {
	// Sandboxes by name.
	// +kubebuilder:validation:MaxItems=128
	// +optional
	Sandboxes []string `json:"sandboxes,omitempty"`
	// Selector over sandbox labels.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`
}

// RuleEffect is what a matching rule decides.
// +kubebuilder:validation:Enum=allow;deny;require-approval
type RuleEffect string

// The rule effects.
const (
	EffectAllow           RuleEffect = "allow"
	EffectDeny            RuleEffect = "deny"
	EffectRequireApproval RuleEffect = "require-approval"
)

// ToolRule matches actions by glob and decides on them.
type ToolRule struct {
	// Name identifies the rule in decisions and the audit log.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9_.-]*$`
	Name string `json:"name"`
	// Effect of a match.
	Effect RuleEffect `json:"effect"`
	// Actions are globs over namespaced action strings, for example
	// "tool:web_search", "mcp:github.*", "egress:*.github.com:443".
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	// +kubebuilder:validation:items:Pattern=`^(inference|tool|mcp|shell|egress|a2a|mesh|memory|spawn|\*)(:.*)?$`
	Actions []string `json:"actions"`
	// Priority orders rules; higher is evaluated first.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10000
	// +optional
	Priority int32 `json:"priority,omitempty"`
	// Conditions on the action's arguments; all must hold for the rule to
	// match.
	// +kubebuilder:validation:MaxItems=16
	// +optional
	Conditions []ToolCondition `json:"conditions,omitempty"`
	// RateLimit applies to actions this rule allows.
	// +optional
	RateLimit *RuleRateLimit `json:"rateLimit,omitempty"`
}

// ToolCondition is a CEL expression over the call.
type ToolCondition struct {
	// Expression in CEL over `args` (the call's arguments), `action` and
	// `agent`; it must evaluate to a bool.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	Expression string `json:"expression"`
	// Message explains the condition in decisions.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Message string `json:"message,omitempty"`
}

// RuleRateLimit allows a number of requests per window.
type RuleRateLimit struct {
	// Requests allowed per window.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	Requests int32 `json:"requests"`
	// WindowSeconds is the window length.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=86400
	WindowSeconds int32 `json:"windowSeconds"`
}

// ApprovalMode says when allowed actions need approval.
// +kubebuilder:validation:Enum=never;always;aboveThreshold
type ApprovalMode string

// The approval modes.
const (
	ApprovalNever          ApprovalMode = "never"
	ApprovalAlways         ApprovalMode = "always"
	ApprovalAboveThreshold ApprovalMode = "aboveThreshold"
)

// ToolApproval configures human approval.
// +kubebuilder:validation:XValidation:rule="self.mode != 'aboveThreshold' || has(self.threshold)",message="approval.threshold is required when approval.mode is aboveThreshold"
type ToolApproval struct {
	// Mode of approval.
	Mode ApprovalMode `json:"mode"`
	// Threshold amount above which a call needs approval (aboveThreshold).
	// +optional
	Threshold DecimalAmount `json:"threshold,omitempty"`
	// MinApprovals needed.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10
	// +kubebuilder:default=1
	// +optional
	MinApprovals int32 `json:"minApprovals,omitempty"`
	// Approvers who may approve (user or group names).
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Approvers []string `json:"approvers,omitempty"`
	// TimeoutSeconds after which an unanswered request is denied.
	// +kubebuilder:validation:Minimum=10
	// +kubebuilder:validation:Maximum=86400
	// +kubebuilder:default=900
	// +optional
	TimeoutSeconds int32 `json:"timeoutSeconds,omitempty"`
}

// ToolRateLimit bounds a sandbox's actions.
type ToolRateLimit struct {
	// RequestsPerMinute sustained.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	RequestsPerMinute int32 `json:"requestsPerMinute"`
	// Burst above the sustained rate.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	// +optional
	Burst int32 `json:"burst,omitempty"`
}

// CommerceLimits cap money moved by tool calls. The amount is read from the
// call argument named by amountArg.
type CommerceLimits struct {
	// Currency code (ISO 4217).
	// +kubebuilder:validation:Pattern=`^[A-Z]{3}$`
	// +kubebuilder:default=USD
	// +optional
	Currency string `json:"currency,omitempty"`
	// MaxPerTransaction caps one call.
	// +optional
	MaxPerTransaction DecimalAmount `json:"maxPerTransaction,omitempty"`
	// MaxDaily caps the sum per UTC day.
	// +optional
	MaxDaily DecimalAmount `json:"maxDaily,omitempty"`
	// AmountArg is the argument carrying the amount.
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:default=amount
	// +optional
	AmountArg string `json:"amountArg,omitempty"`
}

// ToolPolicy is the governance policy for a sandbox's actions.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=tp;toolpol,categories=kars
// +kubebuilder:printcolumn:name="Approval",type=string,JSONPath=`.spec.approval.mode`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ToolPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ToolPolicySpec `json:"spec"`
	Status PolicyStatus   `json:"status,omitempty"`
}

// ToolPolicyList is a list of ToolPolicies.
//
// +kubebuilder:object:root=true
type ToolPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ToolPolicy `json:"items"`
}

func init() { register(&ToolPolicy{}, &ToolPolicyList{}) }
