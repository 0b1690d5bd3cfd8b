package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SREActionType is an operational action kars can carry out once approved.
// +kubebuilder:validation:Enum=RestartSandbox;SuspendSandbox;ResumeSandbox;QuarantineAgent;ReleaseQuarantine;RotateRouterCredentials;RevokePairing;RevokeA2AExposure;SetModel
type SREActionType string

// The SRE actions.
const (
	SRERestartSandbox          SREActionType = "RestartSandbox"
	SRESuspendSandbox          SREActionType = "SuspendSandbox"
	SREResumeSandbox           SREActionType = "ResumeSandbox"
	SREQuarantineAgent         SREActionType = "QuarantineAgent"
	SREReleaseQuarantine       SREActionType = "ReleaseQuarantine"
	SRERotateRouterCredentials SREActionType = "RotateRouterCredentials"
	SRERevokePairing           SREActionType = "RevokePairing"
	SRERevokeA2AExposure       SREActionType = "RevokeA2AExposure"
	SRESetModel                SREActionType = "SetModel"
)

// KarsSREActionSpec is a proposed operational action, executed by the
// controller only after approval and before it expires.
// +kubebuilder:validation:XValidation:rule="self.action == 'RevokePairing' ? self.target.kind == 'KarsPairing' : self.target.kind == 'KarsSandbox'",message="target.kind must be KarsPairing for RevokePairing and KarsSandbox for every other action"
// +kubebuilder:validation:XValidation:rule="self.action != 'SetModel' || (has(self.params) && 'model' in self.params)",message="SetModel needs params.model"
// +kubebuilder:validation:XValidation:rule="oldSelf.approval.state == 'Pending' || self.approval.state == oldSelf.approval.state",message="an approval decision is final: approval.state cannot change once Approved or Rejected"
// +kubebuilder:validation:XValidation:rule="self.action == oldSelf.action && self.target == oldSelf.target && has(self.params) == has(oldSelf.params) && (!has(self.params) || self.params == oldSelf.params)",message="action, target and params are immutable: propose a new action instead"
type KarsSREActionSpec struct {
	// Action to take.
	Action SREActionType `json:"action"`
	// Target of the action, in this namespace.
	Target SREActionTarget `json:"target"`
	// Params of the action (SetModel: model).
	// +kubebuilder:validation:MaxProperties=16
	// +optional
	Params map[string]string `json:"params,omitempty"`
	// Reason for the action.
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=2048
	Reason string `json:"reason"`
	// ProposedBy names who (or which agent) proposed it.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	ProposedBy string `json:"proposedBy,omitempty"`
	// TTLMinutes after creation the proposal expires unexecuted.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=60
	// +kubebuilder:default=15
	// +optional
	TTLMinutes int32 `json:"ttlMinutes,omitempty"`
	// Approval state of the proposal.
	// +kubebuilder:default={state: Pending}
	// +optional
	Approval SREApproval `json:"approval,omitempty"`
}

// SREActionTarget names the object acted on.
type SREActionTarget struct {
	// Kind of the target.
	// +kubebuilder:validation:Enum=KarsSandbox;KarsPairing
	Kind string `json:"kind"`
	// Name of the target.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// SREApproval records the decision on a proposal.
// +kubebuilder:validation:XValidation:rule="self.state == 'Pending' || has(self.decidedBy)",message="approval.decidedBy is required once the state is Approved or Rejected"
type SREApproval struct {
	// State of the approval.
	// +kubebuilder:validation:Enum=Pending;Approved;Rejected
	// +kubebuilder:default=Pending
	State string `json:"state"`
	// DecidedBy names who approved or rejected.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	DecidedBy string `json:"decidedBy,omitempty"`
	// Comment on the decision.
	// +kubebuilder:validation:MaxLength=2048
	// +optional
	Comment string `json:"comment,omitempty"`
}

// KarsSREActionStatus is the observed state of a proposal.
type KarsSREActionStatus struct {
	CommonStatus `json:",inline"`
	// Phase is Proposed, Executing, Succeeded, Failed, Rejected or Expired.
	// +kubebuilder:validation:Enum=Proposed;Executing;Succeeded;Failed;Rejected;Expired
	// +optional
	Phase string `json:"phase,omitempty"`
	// ExpiresAt is creation time plus ttlMinutes.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`
	// ExecutedAt is when the action ran.
	// +optional
	ExecutedAt *metav1.Time `json:"executedAt,omitempty"`
	// Result describes the outcome.
	// +optional
	Result string `json:"result,omitempty"`
}

// KarsSREAction is an operational action proposed for approval.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=sre;sreaction,categories=kars
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.action`
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.spec.target.name`
// +kubebuilder:printcolumn:name="Approval",type=string,JSONPath=`.spec.approval.state`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type KarsSREAction struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   KarsSREActionSpec   `json:"spec"`
	Status KarsSREActionStatus `json:"status,omitempty"`
}

// KarsSREActionList is a list of KarsSREActions.
//
// +kubebuilder:object:root=true
type KarsSREActionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []KarsSREAction `json:"items"`
}

func init() { register(&KarsSREAction{}, &KarsSREActionList{}) }
