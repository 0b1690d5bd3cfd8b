package render

import (
	"net/netip"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// testNow is the fixed clock of every rendering test.
var testNow = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func testEnv() Environment {
	return Environment{
		Catalog:         Catalog{Registry: "ghcr.io/kars-io", Version: "v0.1.0", GitSyncImage: DefaultGitSyncImage},
		SystemNamespace: "kars-system",
		ClusterDNS:      []netip.Addr{netip.MustParseAddr("10.96.0.10")},
	}
}

func testAdmin() AdminCredentials {
	return AdminCredentials{Token: []byte("admin-token"), CertPEM: []byte("CERT"), KeyPEM: []byte("KEY")}
}

// sandbox returns a minimal valid sandbox of the given runtime kind.
func sandbox(kind karsv1.RuntimeKind, iso karsv1.IsolationLevel) *karsv1.KarsSandbox {
	sb := &karsv1.KarsSandbox{
		ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: "kars-agent", UID: "0b5e5c2e-1111-4222-8333-944455556666", Generation: 1},
		Spec: karsv1.KarsSandboxSpec{
			Runtime:      karsv1.RuntimeSpec{Kind: kind},
			InferenceRef: karsv1.LocalObjectReference{Name: "agent-inference"},
			Sandbox:      karsv1.SandboxIsolationSpec{Isolation: iso},
			Governance:   karsv1.GovernanceSpec{ToolPolicyRef: &karsv1.LocalObjectReference{Name: "agent-policy"}},
			Agent:        &karsv1.AgentSpec{Instructions: "Be brief.", Tools: []string{"web_search"}},
		},
	}
	code := &karsv1.AgentCode{OCI: &karsv1.OCIAgentCode{Image: "myacr.azurecr.io/agent-code:1.0"}}
	switch kind {
	case karsv1.RuntimeOpenClaw:
		sb.Spec.Runtime.OpenClaw = &karsv1.OpenClawRuntime{Config: &runtime.RawExtension{Raw: []byte(`{"channels":{"telegram":{"enabled":true}}}`)}}
	case karsv1.RuntimeOpenAIAgents:
		sb.Spec.Runtime.OpenAIAgents = &karsv1.OpenAIAgentsRuntime{PythonVersion: "3.12", AgentCode: code, Entrypoint: "agent:app"}
	case karsv1.RuntimeMicrosoftAgentFramework:
		sb.Spec.Runtime.MicrosoftAgentFramework = &karsv1.MicrosoftAgentFrameworkRuntime{Language: "python", AgentCode: &karsv1.AgentCode{
			Git: &karsv1.GitAgentCode{URL: "https://github.com/my-org/support-bot.git", Ref: "main", Path: "agent/", SecretRef: &karsv1.LocalObjectReference{Name: "git-creds"}}}}
	case karsv1.RuntimeLangGraph:
		sb.Spec.Runtime.LangGraph = &karsv1.LangGraphRuntime{Language: "python", AgentCode: code, Graph: "./agent.py:graph"}
	case karsv1.RuntimeAnthropic:
		sb.Spec.Runtime.Anthropic = &karsv1.AnthropicRuntime{AgentCode: code, Entrypoint: "agent:main"}
	case karsv1.RuntimePydanticAi:
		sb.Spec.Runtime.PydanticAi = &karsv1.PydanticAiRuntime{AgentCode: code, Entrypoint: "agent:agent"}
	case karsv1.RuntimeBYO:
		sb.Spec.Runtime.BYO = &karsv1.BYORuntime{Image: "myacr.azurecr.io/my-agent:latest", ContractVersion: "v1",
			Command: []string{"/app/agent"}, Args: []string{"--mode", "production"}, Port: 18789}
	case karsv1.RuntimeSemanticKernel:
		sb.Spec.Runtime.SemanticKernel = &karsv1.SemanticKernelRuntime{Language: "python"}
	}
	return sb
}

// inferencePolicy returns an Azure OpenAI policy authenticated by workload
// identity, with an API-key OpenAI fallback.
func inferencePolicy() *karsv1.InferencePolicy {
	return &karsv1.InferencePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "agent-inference", Namespace: "kars-agent"},
		Spec: karsv1.InferencePolicySpec{
			ModelPreference: karsv1.ModelPreference{
				Primary: karsv1.ModelTarget{Provider: karsv1.ProviderAzureOpenAI, Model: "gpt-4.1", Deployment: "gpt-41",
					Endpoint: "https://research.openai.azure.com", APIVersion: "2024-10-21",
					Auth: &karsv1.ProviderAuth{Mode: karsv1.AuthWorkloadIdentity, ClientID: "11111111-2222-3333-4444-555555555555", TenantID: "66666666-7777-8888-9999-000000000000"}},
				Fallbacks: []karsv1.ModelTarget{{Provider: karsv1.ProviderOpenAI, Model: "gpt-4.1-mini",
					Auth: &karsv1.ProviderAuth{Mode: karsv1.AuthAPIKey, SecretRef: &karsv1.SecretKeyReference{Name: "openai", Key: "api-key"}}}},
			},
			TokenBudget: &karsv1.TokenBudget{Daily: 100000, Monthly: 2000000, DefaultReserve: 4096},
			RateLimit:   &karsv1.InferenceRateLimit{RPM: 60},
		},
	}
}

func offlinePolicy() *karsv1.InferencePolicy {
	return &karsv1.InferencePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "agent-inference", Namespace: "kars-agent"},
		Spec: karsv1.InferencePolicySpec{ModelPreference: karsv1.ModelPreference{
			Primary: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "offline"}}},
	}
}

func toolPolicy() *karsv1.ToolPolicy {
	return &karsv1.ToolPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "agent-policy", Namespace: "kars-agent"},
		Spec: karsv1.ToolPolicySpec{
			Rules: []karsv1.ToolRule{
				{Name: "inference", Effect: karsv1.EffectAllow, Actions: []string{"inference:*"}},
				{Name: "search", Effect: karsv1.EffectAllow, Actions: []string{"tool:web_search", "egress:api.search.example:8443"}, Priority: 10,
					RateLimit: &karsv1.RuleRateLimit{Requests: 30, WindowSeconds: 60}},
				{Name: "no-shell", Effect: karsv1.EffectDeny, Actions: []string{"shell:*"}, Priority: 100,
					Conditions: []karsv1.ToolCondition{{Expression: "true", Message: "no shell in this sandbox"}}},
			},
			Approval:  &karsv1.ToolApproval{Mode: karsv1.ApprovalNever},
			RateLimit: &karsv1.ToolRateLimit{RequestsPerMinute: 120, Burst: 20},
		},
	}
}

func input(sb *karsv1.KarsSandbox) Input {
	in := Input{Sandbox: sb, Inference: inferencePolicy(), Tools: toolPolicy(), Admin: testAdmin(), Now: testNow, Env: testEnv()}
	if sb.Spec.Runtime.Kind == karsv1.RuntimeBYO {
		in.BYOImage = "myacr.azurecr.io/my-agent@sha256:" + "ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34"
	}
	return in
}
