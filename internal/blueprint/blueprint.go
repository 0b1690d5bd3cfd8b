// Package blueprint builds the objects of a new governed sandbox — its
// namespace, InferencePolicy, ToolPolicy, provider Secret and KarsSandbox —
// from the few choices `kars add` and `kars dev` expose. It is pure: options
// in, objects out.
package blueprint

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// Options describe a sandbox in CLI terms.
type Options struct {
	Name      string
	Namespace string // default kars-<name>
	// Runtime is a CLI runtime name (see Runtimes) or a RuntimeKind.
	Runtime string
	// Target is the model target; its Model may be overridden by Model.
	Target karsv1.ModelTarget
	Model  string
	// APIKey for Target, stored in a Secret that only the router mounts.
	APIKey           string
	TokenBudgetDaily int64
	Isolation        karsv1.IsolationLevel
	// Governance false still keeps the schema's default (enabled); the
	// flag exists for the seed's `--governance` and cannot turn it off.
	LearnEgress  bool
	BYOImage     string
	BYOContract  string
	BYOCommand   []string
	BYOArgs      []string
	Language     string // MAF or LangGraph language
	AgentImage   string // OCI image with agent code for first-class runtimes
	Instructions string
	Tools        []string
	Labels       map[string]string
}

// Runtimes maps the CLI's runtime names to runtime kinds.
var Runtimes = map[string]karsv1.RuntimeKind{
	"openclaw":                  karsv1.RuntimeOpenClaw,
	"openai-agents":             karsv1.RuntimeOpenAIAgents,
	"microsoft-agent-framework": karsv1.RuntimeMicrosoftAgentFramework,
	"maf":                       karsv1.RuntimeMicrosoftAgentFramework,
	"langgraph":                 karsv1.RuntimeLangGraph,
	"anthropic":                 karsv1.RuntimeAnthropic,
	"pydantic-ai":               karsv1.RuntimePydanticAi,
	"byo":                       karsv1.RuntimeBYO,
	"semantic-kernel":           karsv1.RuntimeSemanticKernel,
}

// RuntimeNames lists the CLI runtime names, sorted, for help text.
func RuntimeNames() string {
	var n []string
	for k := range Runtimes {
		n = append(n, k)
	}
	sort.Strings(n)
	return strings.Join(n, ", ")
}

// Names of a sandbox's companion objects.
func InferencePolicyName(sandbox string) string { return sandbox + "-inference" }

// ToolPolicyName is the name of a sandbox's ToolPolicy.
func ToolPolicyName(sandbox string) string { return sandbox + "-policy" }

// CredentialsSecretName is the name of a sandbox's provider Secret.
func CredentialsSecretName(sandbox string) string { return sandbox + "-credentials" }

// APIKeyKey is the key of the API key in the credentials Secret.
const APIKeyKey = "api-key"

// Build returns the objects to create, in creation order.
func Build(o Options) ([]client.Object, error) {
	if errs := validation.IsDNS1035Label(o.Name); len(errs) > 0 {
		return nil, fmt.Errorf("sandbox name %q: %s", o.Name, errs[0])
	}
	ns := o.Namespace
	if ns == "" {
		ns = "kars-" + o.Name
	}
	kind, err := runtimeKind(o.Runtime)
	if err != nil {
		return nil, err
	}
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: ns, Labels: mergeLabels(o.Labels, map[string]string{"kars.io/sandbox": o.Name})}
	}

	target := o.Target
	if target.Provider == "" {
		return nil, fmt.Errorf("no inference provider for %s: pass --provider (and --endpoint), or set credentials with `kars credentials set`", o.Name)
	}
	if o.Model != "" && target.Provider != karsv1.ProviderOffline {
		target.Model = o.Model
		if target.Provider == karsv1.ProviderAzureOpenAI {
			target.Deployment = o.Model
		}
	}
	var objs []client.Object
	objs = append(objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"kars.io/sandbox-namespace": "true"}}})
	if o.APIKey != "" {
		target.Auth = &karsv1.ProviderAuth{Mode: karsv1.AuthAPIKey, SecretRef: &karsv1.SecretKeyReference{Name: CredentialsSecretName(o.Name), Key: APIKeyKey}}
		objs = append(objs, &corev1.Secret{ObjectMeta: meta(CredentialsSecretName(o.Name)), Type: corev1.SecretTypeOpaque,
			StringData: map[string]string{APIKeyKey: o.APIKey}})
	}

	ip := &karsv1.InferencePolicy{ObjectMeta: meta(InferencePolicyName(o.Name)), Spec: karsv1.InferencePolicySpec{
		ModelPreference: karsv1.ModelPreference{Primary: target},
	}}
	if o.TokenBudgetDaily > 0 {
		// The router reserves DefaultReserve for a request that states no
		// output cap; with a small daily budget the schema default (4096)
		// would refuse every call, so reserve an eighth of the day instead.
		ip.Spec.TokenBudget = &karsv1.TokenBudget{Daily: o.TokenBudgetDaily, DefaultReserve: min(4096, max(16, o.TokenBudgetDaily/8))}
	}
	objs = append(objs, ip, DefaultToolPolicy(meta(ToolPolicyName(o.Name))))

	sb := &karsv1.KarsSandbox{ObjectMeta: meta(o.Name), Spec: karsv1.KarsSandboxSpec{
		Runtime:       karsv1.RuntimeSpec{Kind: kind},
		InferenceRef:  karsv1.LocalObjectReference{Name: ip.Name},
		Sandbox:       karsv1.SandboxIsolationSpec{Isolation: o.Isolation},
		Governance:    karsv1.GovernanceSpec{ToolPolicyRef: &karsv1.LocalObjectReference{Name: ToolPolicyName(o.Name)}},
		NetworkPolicy: karsv1.SandboxNetworkPolicy{},
	}}
	if o.LearnEgress {
		sb.Spec.NetworkPolicy.EgressMode = karsv1.EgressLearn
	}
	if o.Instructions != "" || len(o.Tools) > 0 {
		sb.Spec.Agent = &karsv1.AgentSpec{Instructions: o.Instructions, Tools: o.Tools}
	}
	if err := setRuntime(&sb.Spec.Runtime, o); err != nil {
		return nil, err
	}
	return append(objs, sb), nil
}

func runtimeKind(name string) (karsv1.RuntimeKind, error) {
	if name == "" {
		return karsv1.RuntimeOpenClaw, nil
	}
	if k, ok := Runtimes[strings.ToLower(name)]; ok {
		return k, nil
	}
	for _, k := range Runtimes {
		if string(k) == name {
			return k, nil
		}
	}
	return "", fmt.Errorf("unknown runtime %q; use one of %s", name, RuntimeNames())
}

func setRuntime(rt *karsv1.RuntimeSpec, o Options) error {
	var code *karsv1.AgentCode
	if o.AgentImage != "" {
		code = &karsv1.AgentCode{OCI: &karsv1.OCIAgentCode{Image: o.AgentImage}}
	}
	switch rt.Kind {
	case karsv1.RuntimeBYO:
		if o.BYOImage == "" {
			return fmt.Errorf("runtime byo needs --byo-image (an image labelled org.kars.runtime.contract=v1)")
		}
		contract := o.BYOContract
		if contract == "" {
			contract = "v1"
		}
		rt.BYO = &karsv1.BYORuntime{Image: o.BYOImage, ContractVersion: contract, Command: o.BYOCommand, Args: o.BYOArgs}
	case karsv1.RuntimeOpenAIAgents:
		if code != nil {
			rt.OpenAIAgents = &karsv1.OpenAIAgentsRuntime{AgentCode: code}
		}
	case karsv1.RuntimeMicrosoftAgentFramework:
		rt.MicrosoftAgentFramework = &karsv1.MicrosoftAgentFrameworkRuntime{Language: o.Language, AgentCode: code}
	case karsv1.RuntimeLangGraph:
		rt.LangGraph = &karsv1.LangGraphRuntime{Language: o.Language, AgentCode: code}
	case karsv1.RuntimeAnthropic:
		if code != nil {
			rt.Anthropic = &karsv1.AnthropicRuntime{AgentCode: code}
		}
	case karsv1.RuntimePydanticAi:
		if code != nil {
			rt.PydanticAi = &karsv1.PydanticAiRuntime{AgentCode: code}
		}
	}
	if o.BYOImage != "" && rt.Kind != karsv1.RuntimeBYO {
		return fmt.Errorf("--byo-image is only for --runtime byo")
	}
	return nil
}

// DefaultToolPolicy allows inference, the reference agent's workspace
// tools and its http_get (whose destinations the egress lists decide),
// rate-limits writes and fetches, lets the agent message the peers its
// pairings name (the pairing is the consent; the router still gates each
// peer by trust), and leaves everything else (shell, spawning, unknown
// tools) to the engine's default deny.
func DefaultToolPolicy(meta metav1.ObjectMeta) *karsv1.ToolPolicy {
	return &karsv1.ToolPolicy{ObjectMeta: meta, Spec: karsv1.ToolPolicySpec{
		Rules: []karsv1.ToolRule{
			{Name: "inference", Effect: karsv1.EffectAllow, Actions: []string{"inference:*"}},
			{Name: "read-only-tools", Effect: karsv1.EffectAllow, Actions: []string{"tool:calculator", "tool:current_time", "tool:list_files", "tool:read_file"}},
			{Name: "workspace-writes", Effect: karsv1.EffectAllow, Actions: []string{"tool:write_file"},
				RateLimit: &karsv1.RuleRateLimit{Requests: 30, WindowSeconds: 60}},
			{Name: "web-fetch", Effect: karsv1.EffectAllow, Actions: []string{"tool:http_get"},
				RateLimit: &karsv1.RuleRateLimit{Requests: 60, WindowSeconds: 60}},
			{Name: "mesh", Effect: karsv1.EffectAllow, Actions: []string{"tool:send_to_agent", "mesh:send:*", "mesh:receive:*"},
				RateLimit: &karsv1.RuleRateLimit{Requests: 120, WindowSeconds: 60}},
			{Name: "no-shell", Effect: karsv1.EffectDeny, Actions: []string{"shell:*"}, Priority: 100},
		},
	}}
}

func mergeLabels(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}
