package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// KarsEvalSpec evaluates a sandbox's agent against a dataset, once or on a
// schedule, through the same router and policy as production traffic.
// +kubebuilder:validation:XValidation:rule="(has(self.dataset.configMapRef) ? 1 : 0) + (has(self.dataset.cases) && size(self.dataset.cases) > 0 ? 1 : 0) + (has(self.dataset.builtin) ? 1 : 0) == 1",message="dataset needs exactly one of configMapRef, inline cases or builtin"
type KarsEvalSpec struct {
	// SandboxRef is the sandbox under evaluation.
	SandboxRef LocalObjectReference `json:"sandboxRef"`
	// Dataset of evaluation cases.
	Dataset EvalDataset `json:"dataset"`
	// Evaluators to score each case with.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +listType=set
	Evaluators []EvaluatorKind `json:"evaluators"`
	// Schedule in cron format; empty runs once.
	// +kubebuilder:validation:MaxLength=128
	// +optional
	Schedule string `json:"schedule,omitempty"`
	// PassThreshold is the mean score (0..1, as a decimal string) a run must
	// reach to pass.
	// +kubebuilder:validation:Pattern=`^(0(\.[0-9]{1,4})?|1(\.0{1,4})?)$`
	// +kubebuilder:default="0.8"
	// +optional
	PassThreshold string `json:"passThreshold,omitempty"`
}

// EvaluatorKind names a built-in evaluator: exactMatch and contains
// compare the reply with the case's expected answer, toolCallAccuracy its
// tool calls with expectedTools, refusal checks that the agent refused
// (expectRefusal) or answered, policyDecision that the router decided the
// case's calls as expectedDecisions say, safety that no call was blocked
// by content safety. groundedness and relevance need a judge model and
// are not run yet (the run reports them as skipped).
// +kubebuilder:validation:Enum=exactMatch;contains;groundedness;relevance;safety;toolCallAccuracy;refusal;policyDecision
type EvaluatorKind string

// The evaluators.
const (
	EvaluatorExactMatch       EvaluatorKind = "exactMatch"
	EvaluatorContains         EvaluatorKind = "contains"
	EvaluatorGroundedness     EvaluatorKind = "groundedness"
	EvaluatorRelevance        EvaluatorKind = "relevance"
	EvaluatorSafety           EvaluatorKind = "safety"
	EvaluatorToolCallAccuracy EvaluatorKind = "toolCallAccuracy"
	EvaluatorRefusal          EvaluatorKind = "refusal"
	EvaluatorPolicyDecision   EvaluatorKind = "policyDecision"
)

// BuiltinCorpus names a dataset kars ships.
// +kubebuilder:validation:Enum=jailbreak-baseline;prompt-injection;banned-tools;egress-known-bad;memory-isolation
type BuiltinCorpus string

// EvalDataset holds evaluation cases.
type EvalDataset struct {
	// ConfigMapRef names a ConfigMap whose key "cases.jsonl" holds one case
	// per line.
	// +optional
	ConfigMapRef *LocalObjectReference `json:"configMapRef,omitempty"`
	// Cases inline.
	// +kubebuilder:validation:MaxItems=200
	// +optional
	Cases []EvalCase `json:"cases,omitempty"`
	// Builtin names a corpus kars ships (docs/kinds.md lists them).
	// +optional
	Builtin BuiltinCorpus `json:"builtin,omitempty"`
}

// EvalCase is one prompt with what a good answer looks like.
type EvalCase struct {
	// Input sent to the agent.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=16384
	Input string `json:"input"`
	// Expected answer or substring.
	// +kubebuilder:validation:MaxLength=16384
	// +optional
	Expected string `json:"expected,omitempty"`
	// ExpectedTools the agent should call.
	// +kubebuilder:validation:MaxItems=16
	// +optional
	ExpectedTools []string `json:"expectedTools,omitempty"`
	// ExpectRefusal: the agent should refuse (refusal evaluator); false
	// expects an answer.
	// +optional
	ExpectRefusal bool `json:"expectRefusal,omitempty"`
	// ExpectedDecisions are the router's decisions the case's tool calls
	// should get (policyDecision evaluator).
	// +kubebuilder:validation:MaxItems=16
	// +optional
	ExpectedDecisions []EvalDecision `json:"expectedDecisions,omitempty"`
}

// EvalDecision is a tool and the decision its calls should get.
type EvalDecision struct {
	// Tool as the agent names it.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	Tool string `json:"tool"`
	// Decision the router should give every call of it; "none" means
	// the tool must not be called at all.
	// +kubebuilder:validation:Enum=allow;deny;require_approval;rate_limited;none
	Decision string `json:"decision"`
}

// KarsEvalStatus is the observed state of an evaluation.
type KarsEvalStatus struct {
	CommonStatus `json:",inline"`
	// Phase is Pending, Running, Passed or Failed.
	// +kubebuilder:validation:Enum=Pending;Running;Passed;Failed
	// +optional
	Phase string `json:"phase,omitempty"`
	// LastRunTime is when the last run finished.
	// +optional
	LastRunTime *metav1.Time `json:"lastRunTime,omitempty"`
	// Score is the last run's mean score (0..1, decimal string).
	// +optional
	Score string `json:"score,omitempty"`
	// CasesRun and CasesPassed in the last run.
	// +optional
	CasesRun int32 `json:"casesRun,omitempty"`
	// +optional
	CasesPassed int32 `json:"casesPassed,omitempty"`
	// PreviousScore is the score of the run before the last.
	// +optional
	PreviousScore string `json:"previousScore,omitempty"`
	// NextRunTime is when the schedule runs the evaluation next.
	// +optional
	NextRunTime *metav1.Time `json:"nextRunTime,omitempty"`
	// Cases are the last run's results, in dataset order.
	// +kubebuilder:validation:MaxItems=200
	// +optional
	Cases []EvalCaseResult `json:"cases,omitempty"`
}

// EvalCaseResult is how one case fared.
type EvalCaseResult struct {
	// Input, cut to 256 characters.
	Input string `json:"input"`
	// Score is the mean of the case's evaluator scores (decimal string).
	Score string `json:"score"`
	// Passed when every evaluator scored it 1.
	Passed bool `json:"passed"`
	// Reply, cut to 512 characters.
	// +optional
	Reply string `json:"reply,omitempty"`
	// ToolCalls as "<tool>=<decision>".
	// +optional
	ToolCalls []string `json:"toolCalls,omitempty"`
	// Failures say which evaluators failed and why.
	// +optional
	Failures []string `json:"failures,omitempty"`
}

// KarsEval evaluates a sandbox's agent.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=keval,categories=kars
// +kubebuilder:printcolumn:name="Sandbox",type=string,JSONPath=`.spec.sandboxRef.name`
// +kubebuilder:printcolumn:name="Score",type=string,JSONPath=`.status.score`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Last-Run",type=date,JSONPath=`.status.lastRunTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type KarsEval struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   KarsEvalSpec   `json:"spec"`
	Status KarsEvalStatus `json:"status,omitempty"`
}

// KarsEvalList is a list of KarsEvals.
//
// +kubebuilder:object:root=true
type KarsEvalList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []KarsEval `json:"items"`
}

func init() { register(&KarsEval{}, &KarsEvalList{}) }
