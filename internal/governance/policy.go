package governance

// Policy is the engine's input: plain, JSON-serialisable values. The
// controller converts a ToolPolicy into a Policy and ships it inside the
// router's config file; ParseAGT converts an Agent Governance Toolkit YAML
// profile into one. Compile turns a Policy into the immutable form the engine
// evaluates.
//
// The field names and JSON spelling follow the ToolPolicy CRD so that the
// conversion is field-by-field.
type Policy struct {
	// Name identifies the policy in reasons and logs.
	Name string `json:"name,omitempty"`
	// Agents, when set, restricts the policy to agents whose id matches one
	// of these globs ('*' and '?'); requests from other agents are denied.
	// Empty means every agent.
	Agents []string `json:"agents,omitempty"`
	// Rules are the decision rules; 1 to MaxRules of them.
	Rules []Rule `json:"rules"`
	// Approval turns some allowed calls into approval requests.
	Approval *Approval `json:"approval,omitempty"`
	// RateLimit bounds all allowed calls of the sandbox together.
	RateLimit *SandboxRateLimit `json:"rateLimit,omitempty"`
	// Commerce caps the amounts of calls that carry an amount argument.
	Commerce *Commerce `json:"commerce,omitempty"`
}

// Bounds on a Policy, matching the ToolPolicy CRD's validation.
const (
	MaxRules          = 256
	MaxRuleActions    = 64
	MaxPriority       = 10000
	MaxConditions     = 16
	MaxExpressionLen  = 4096
	maxAgentPatterns  = 64
	maxApprovers      = 64
	maxNameLen        = 253
	maxDecimalDigits  = 18
	decimalScaleExp   = 6 // amounts are kept in millionths
	decimalScale      = 1_000_000
	defaultAmountArg  = "amount"
	reasonNoPolicy    = "no policy loaded: every action is denied until one is"
	reasonNoRule      = "no rule matches this action: denied by default"
	reasonAgentScoped = "the policy in force does not apply to this agent"
)

// Effect is what a matching rule decides.
type Effect string

// The rule effects. At equal priority deny beats require-approval, which
// beats allow.
const (
	EffectAllow           Effect = "allow"
	EffectDeny            Effect = "deny"
	EffectRequireApproval Effect = "require-approval"
)

// Rule is one decision rule.
type Rule struct {
	// Name identifies the rule in decisions and the audit log.
	Name string `json:"name"`
	// Effect is allow, deny or require-approval.
	Effect Effect `json:"effect"`
	// Actions are action globs; 1 to MaxRuleActions of them.
	Actions []string `json:"actions"`
	// Priority orders rules, 0 to MaxPriority; higher wins.
	Priority int32 `json:"priority,omitempty"`
	// Conditions must all hold for the rule to match. Each is a CEL
	// expression over args, action and agent.
	Conditions []Condition `json:"conditions,omitempty"`
	// RateLimit, on an allow or require-approval rule, bounds how often the
	// rule may grant.
	RateLimit *RuleRateLimit `json:"rateLimit,omitempty"`
	// MinApprovals overrides Approval.MinApprovals for a require-approval
	// rule (the Agent Governance Toolkit sets it per rule).
	MinApprovals int32 `json:"minApprovals,omitempty"`
}

// Condition is a CEL expression that must evaluate to true.
type Condition struct {
	// Expression is CEL over `args` (map of the call's arguments),
	// `action` (string) and `agent` (string).
	Expression string `json:"expression"`
	// Message replaces the rule's reason when the rule matches, so a deny
	// can say why in the author's words.
	Message string `json:"message,omitempty"`
}

// RuleRateLimit allows Requests grants per WindowSeconds, with a burst of
// Requests.
type RuleRateLimit struct {
	Requests      int32 `json:"requests"`
	WindowSeconds int32 `json:"windowSeconds"`
}

// Approval modes.
const (
	ApprovalNever          = "never"
	ApprovalAlways         = "always"
	ApprovalAboveThreshold = "aboveThreshold"
)

// Approval configures human approval of calls that rules allow.
type Approval struct {
	// Mode is never, always or aboveThreshold.
	Mode string `json:"mode"`
	// Threshold is a decimal amount; with aboveThreshold, allowed calls
	// whose amount argument exceeds it need approval.
	Threshold string `json:"threshold,omitempty"`
	// MinApprovals is how many approvers must agree (default 1).
	MinApprovals int32 `json:"minApprovals,omitempty"`
	// Approvers may approve; empty means any operator.
	Approvers []string `json:"approvers,omitempty"`
	// TimeoutSeconds after which an unanswered request is denied.
	TimeoutSeconds int32 `json:"timeoutSeconds,omitempty"`
}

// SandboxRateLimit bounds the whole sandbox's allowed calls.
type SandboxRateLimit struct {
	RequestsPerMinute int32 `json:"requestsPerMinute"`
	// Burst defaults to RequestsPerMinute.
	Burst int32 `json:"burst,omitempty"`
}

// Commerce caps spending by calls that carry an amount argument.
type Commerce struct {
	// Currency is the ISO 4217 code amounts are in. A call whose
	// "currency" argument names another currency is denied.
	Currency string `json:"currency,omitempty"`
	// MaxPerTransaction is a decimal cap on one call's amount.
	MaxPerTransaction string `json:"maxPerTransaction,omitempty"`
	// MaxDaily is a decimal cap on the amounts allowed per UTC day.
	MaxDaily string `json:"maxDaily,omitempty"`
	// AmountArg names the argument holding the amount (default "amount").
	AmountArg string `json:"amountArg,omitempty"`
}
