package v1alpha1_test

import (
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/kars-io/kars/internal/testenv"
)

const validSandbox = `
apiVersion: kars.azure.com/v1alpha1
kind: KarsSandbox
metadata: {name: sb, namespace: validation}
spec:
  runtime: {kind: OpenClaw}
  inferenceRef: {name: sb-inference}
`

const validA2A = `
apiVersion: kars.azure.com/v1alpha1
kind: KarsSandbox
metadata: {name: sb, namespace: validation}
spec:
  runtime: {kind: OpenClaw}
  inferenceRef: {name: sb-inference}
  a2a:
    enabled: true
    allowedCallers: [{jwsThumbprint: "sha256:abcd1234abcd1234abcd1234abcd1234abcd1234abcd1234abcd1234abcd1234"}]
    expiresAt: "2026-12-01T00:00:00Z"
    rateLimit: {rpm: 30, burst: 5}
`

const validPairing = `
apiVersion: kars.azure.com/v1alpha1
kind: KarsPairing
metadata: {name: alice-laptop, namespace: validation}
spec:
  tokenHash: "sha256:0000000000000000000000000000000000000000000000000000000000000000"
  expiresAt: "2027-01-01T00:00:00Z"
  slots: 3
  capabilities: [offload, handoff]
`

const validEgress = `
apiVersion: kars.azure.com/v1alpha1
kind: EgressApproval
metadata: {name: github, namespace: validation}
spec:
  sandbox: analyst
  hosts: [api.github.com]
  reason: "the agent reads issues"
  ttl: 24h
`

const validSRE = `
apiVersion: kars.azure.com/v1alpha1
kind: KarsSREAction
metadata: {name: restart, namespace: validation}
spec:
  action: RestartSandbox
  target: {kind: KarsSandbox, name: analyst}
  reason: "router stuck"
  ttlMinutes: 15
`

const validInference = `
apiVersion: kars.azure.com/v1alpha1
kind: InferencePolicy
metadata: {name: ip, namespace: validation}
spec:
  modelPreference:
    primary: {provider: AzureOpenAI, model: gpt-4.1, deployment: gpt-41, endpoint: "https://contoso.openai.azure.com"}
  tokenBudget: {perRequest: 8000, daily: 100000, monthly: 2000000}
`

const validTool = `
apiVersion: kars.azure.com/v1alpha1
kind: ToolPolicy
metadata: {name: tp, namespace: validation}
spec:
  rules:
  - {name: search, effect: allow, actions: ["tool:web_search"]}
`

const validTrust = `
apiVersion: kars.azure.com/v1alpha1
kind: TrustGraph
metadata: {name: contoso}
spec:
  trustDomain: contoso.com
  edges:
  - from: kars-planner/planner
    to: kars-worker/worker
    score: 700
    keyID: k1
    signature: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
`

const validMcp = `
apiVersion: kars.azure.com/v1alpha1
kind: McpServer
metadata: {name: github, namespace: validation}
spec:
  url: "https://mcp.internal.example.com/mcp"
`

const validMcpExchange = `
apiVersion: kars.azure.com/v1alpha1
kind: McpServer
metadata: {name: jira, namespace: validation}
spec:
  url: "https://mcp.jira.example.com/mcp"
  oauth:
    grant: TokenExchange
    audience: jira
    scopes: [read]
    subjectToken: {serviceAccountAudience: "https://idp.example.com"}
`

const validEval = `
apiVersion: kars.azure.com/v1alpha1
kind: KarsEval
metadata: {name: smoke, namespace: validation}
spec:
  sandboxRef: {name: analyst}
  dataset: {cases: [{input: "2+2?", expected: "4"}]}
  evaluators: [contains]
`

const validCredential = `
apiVersion: kars.azure.com/v1alpha1
kind: CredentialBinding
metadata: {name: research-bot-telegram, namespace: validation}
spec:
  sandboxRef: {name: research-bot}
  secretRef: {name: research-bot-credentials, key: telegram-token}
  endpoints: ["https://api.telegram.org/bot", "https://api.telegram.org/file/bot"]
  placement: {type: Path}
  agentEnv: TELEGRAM_BOT_TOKEN
`

// invalidCase is an object the API server must reject. patch is a JSON merge
// patch (as YAML) over base; wantMsg are substrings the rejection must
// contain: the field path and words that say what is wrong.
type invalidCase struct {
	name    string
	base    string
	patch   string
	wantMsg []string
}

var invalidCases = []invalidCase{
	{"BYO kind without byo block", validSandbox, `spec: {runtime: {kind: BYO}}`,
		[]string{"spec.runtime", "runtime.kind BYO needs a runtime.byo block"}},
	{"byo block with OpenClaw kind", validSandbox, `spec: {runtime: {byo: {image: x/y:1, contractVersion: v1}}}`,
		[]string{"spec.runtime", "runtime.byo is set but runtime.kind is not BYO"}},
	{"openaiAgents block with LangGraph kind", validSandbox, `spec: {runtime: {kind: LangGraph, openaiAgents: {pythonVersion: "3.12"}}}`,
		[]string{"spec.runtime", "runtime.openaiAgents is set but runtime.kind is not OpenAIAgents"}},
	{"BYO contract v2", validSandbox, `spec: {runtime: {kind: BYO, byo: {image: x/y:1, contractVersion: v2}}}`,
		[]string{"spec.runtime.byo.contractVersion", `supported values: "v1"`}},
	{"BYO without image", validSandbox, `spec: {runtime: {kind: BYO, byo: {contractVersion: v1}}}`,
		[]string{"spec.runtime.byo.image", "Required"}},
	{"unknown runtime kind", validSandbox, `spec: {runtime: {kind: CrewAI}}`,
		[]string{"spec.runtime.kind", "supported values"}},
	{"BYO port collides with router", validSandbox, `spec: {runtime: {kind: BYO, byo: {image: x/y:1, contractVersion: v1, port: 8443}}}`,
		[]string{"spec.runtime.byo.port", "router's ports"}},
	{"reserved env prefix", validSandbox, `spec: {runtime: {env: [{name: AZURE_CLIENT_ID, value: x}]}}`,
		[]string{"spec.runtime.env", "reserved prefixes"}},
	{"agentCode with oci and git", validSandbox, `spec: {runtime: {kind: OpenAIAgents, openaiAgents: {agentCode: {oci: {image: a/b:1}, git: {url: "https://x/y.git"}}}}}`,
		[]string{"spec.runtime.openaiAgents.agentCode", "exactly one of oci or git"}},
	{"git url not https or ssh", validSandbox, `spec: {runtime: {kind: LangGraph, langGraph: {agentCode: {git: {url: "ftp://x/y.git"}}}}}`,
		[]string{"spec.runtime.langGraph.agentCode.git.url", "https://, ssh:// or git@ URL"}},
	{"missing inferenceRef", validSandbox, `spec: {inferenceRef: null}`,
		[]string{"spec.inferenceRef", "Required"}},
	{"unknown isolation", validSandbox, `spec: {sandbox: {isolation: paranoid}}`,
		[]string{"spec.sandbox.isolation", "supported values"}},
	{"read-only root turned off", validSandbox, `spec: {sandbox: {readOnlyRootFilesystem: false}}`,
		[]string{"spec.sandbox.readOnlyRootFilesystem", "cannot be turned off"}},
	{"run as root", validSandbox, `spec: {sandbox: {runAsNonRoot: false}}`,
		[]string{"spec.sandbox.runAsNonRoot", "UID 1000"}},
	{"defaultDeny off", validSandbox, `spec: {networkPolicy: {defaultDeny: false}}`,
		[]string{"spec.networkPolicy.defaultDeny", "cannot be turned off"}},
	{"unknown egress mode", validSandbox, `spec: {networkPolicy: {egressMode: Open}}`,
		[]string{"spec.networkPolicy.egressMode", "supported values"}},
	{"allowlist digest not sha256", validSandbox, `spec: {networkPolicy: {allowlistRef: {registry: r.io, repository: p/a, digest: "sha256:XYZ"}}}`,
		[]string{"spec.networkPolicy.allowlistRef.digest", `must be "sha256:" followed by 64 lowercase hex characters`}},
	{"allowed host invalid", validSandbox, `spec: {networkPolicy: {allowedHosts: ["Bad Host!"]}}`,
		[]string{"spec.networkPolicy.allowedHosts[0]", "lowercase DNS name"}},
	{"trustThreshold above 1000", validSandbox, `spec: {governance: {trustThreshold: 1001}}`,
		[]string{"spec.governance.trustThreshold", "less than or equal to 1000"}},
	{"trustThreshold negative", validSandbox, `spec: {governance: {trustThreshold: -1}}`,
		[]string{"spec.governance.trustThreshold", "greater than or equal to 0"}},
	{"a2a enabled without expiresAt", validA2A, `spec: {a2a: {expiresAt: null}}`,
		[]string{"spec.a2a", "a2a.expiresAt is required when a2a.enabled is true"}},
	{"a2a enabled without callers", validA2A, `spec: {a2a: {allowedCallers: []}}`,
		[]string{"spec.a2a", "at least one caller"}},
	{"a2a enabled without rateLimit", validA2A, `spec: {a2a: {rateLimit: null}}`,
		[]string{"spec.a2a", "a2a.rateLimit is required"}},
	{"a2a body cap above 4 MiB", validA2A, `spec: {a2a: {bodyCapBytes: 8388608}}`,
		[]string{"spec.a2a.bodyCapBytes", "less than or equal to 4194304"}},
	{"a2a minimumTrustScore above 1000", validA2A, `spec: {a2a: {minimumTrustScore: 5000}}`,
		[]string{"spec.a2a.minimumTrustScore", "less than or equal to 1000"}},
	{"a2a caller thumbprint malformed", validA2A, `spec: {a2a: {allowedCallers: [{jwsThumbprint: "sha256:abcd1234..."}]}}`,
		[]string{"spec.a2a.allowedCallers[0].jwsThumbprint", "64 lowercase hex"}},
	{"a2a caller issuer http", validA2A, `spec: {a2a: {allowedCallers: [{jwsThumbprint: "sha256:abcd1234abcd1234abcd1234abcd1234abcd1234abcd1234abcd1234abcd1234", issuer: "http://p.example.com"}]}}`,
		[]string{"spec.a2a.allowedCallers[0].issuer", "https://"}},
	{"pairing token hash malformed", validPairing, `spec: {tokenHash: "abc"}`,
		[]string{"spec.tokenHash", "64 lowercase hex"}},
	{"pairing unknown capability", validPairing, `spec: {capabilities: [teleport]}`,
		[]string{"spec.capabilities[0]", "supported values"}},
	{"pairing zero slots", validPairing, `spec: {slots: 0}`,
		[]string{"spec.slots", "greater than or equal to 1"}},
	{"egress approval without hosts", validEgress, `spec: {hosts: []}`,
		[]string{"spec.hosts", "at least 1 items"}},
	{"egress approval with 17 hosts", validEgress, `spec: {hosts: [a.io, b.io, c.io, d.io, e.io, f.io, g.io, h.io, i.io, j.io, k.io, l.io, m.io, n.io, o.io, p.io, q.io]}`,
		[]string{"spec.hosts", "must have at most 16 items"}},
	{"egress approval bad host", validEgress, `spec: {hosts: ["api.github.com:443"]}`,
		[]string{"spec.hosts[0]", "lowercase DNS name"}},
	{"egress approval ttl above ceiling", validEgress, `spec: {ttl: 1000h}`,
		[]string{"spec.ttl", "between 1m and 720h"}},
	{"egress approval without reason", validEgress, `spec: {reason: null}`,
		[]string{"spec.reason", "Required"}},
	{"SRE ttl above 60 minutes", validSRE, `spec: {ttlMinutes: 61}`,
		[]string{"spec.ttlMinutes", "less than or equal to 60"}},
	{"SRE ttl zero", validSRE, `spec: {ttlMinutes: 0}`,
		[]string{"spec.ttlMinutes", "greater than or equal to 1"}},
	{"SRE RevokePairing on a sandbox", validSRE, `spec: {action: RevokePairing}`,
		[]string{"spec", "target.kind must be KarsPairing for RevokePairing"}},
	{"SRE SetModel without model", validSRE, `spec: {action: SetModel}`,
		[]string{"spec", "SetModel needs params.model"}},
	{"SRE approved without decider", validSRE, `spec: {approval: {state: Approved}}`,
		[]string{"spec.approval", "decidedBy is required"}},
	{"inference Azure without endpoint", validInference, `spec: {modelPreference: {primary: {endpoint: null}}}`,
		[]string{"spec.modelPreference.primary", "endpoint is required"}},
	{"inference nine fallbacks", validInference, `spec: {modelPreference: {fallbacks: [{provider: OpenAI, model: a}, {provider: OpenAI, model: b}, {provider: OpenAI, model: c}, {provider: OpenAI, model: d}, {provider: OpenAI, model: e}, {provider: OpenAI, model: f}, {provider: OpenAI, model: g}, {provider: OpenAI, model: h}, {provider: OpenAI, model: i}]}}`,
		[]string{"spec.modelPreference.fallbacks", "must have at most 8 items"}},
	{"inference daily above monthly", validInference, `spec: {tokenBudget: {daily: 3000000}}`,
		[]string{"spec.tokenBudget", "daily may not exceed tokenBudget.monthly"}},
	{"inference API key without secret", validInference, `spec: {modelPreference: {primary: {auth: {mode: APIKey}}}}`,
		[]string{"spec.modelPreference.primary", "auth.secretRef is required"}},
	{"inference workload identity to OpenAI", validInference, `spec: {modelPreference: {primary: {provider: OpenAI, auth: {mode: WorkloadIdentity}}}}`,
		[]string{"spec.modelPreference.primary", "only to Azure providers"}},
	{"inference unknown severity", validInference, `spec: {contentSafety: {hate: Extreme}}`,
		[]string{"spec.contentSafety.hate", "supported values"}},
	{"tool rule unknown effect", validTool, `spec: {rules: [{name: r, effect: maybe, actions: ["tool:x"]}]}`,
		[]string{"spec.rules[0].effect", "supported values"}},
	{"tool rule unknown action namespace", validTool, `spec: {rules: [{name: r, effect: allow, actions: ["teleport:x"]}]}`,
		[]string{"spec.rules[0].actions[0]"}},
	{"tool policy without rules", validTool, `spec: {rules: []}`,
		[]string{"spec.rules", "at least 1 items"}},
	{"tool approval above threshold without threshold", validTool, `spec: {approval: {mode: aboveThreshold}}`,
		[]string{"spec.approval", "approval.threshold is required"}},
	{"trust edge score above 1000", validTrust, `spec: {edges: [{from: a, to: b, score: 1001, keyID: k, signature: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA}]}`,
		[]string{"spec.edges[0].score", "less than or equal to 1000"}},
	{"trust edge to itself", validTrust, `spec: {edges: [{from: a, to: a, score: 10, keyID: k, signature: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA}]}`,
		[]string{"spec.edges[0]", "from an identity to itself"}},
	{"mcp server with image and url", validMcp, `spec: {image: "mcp/github:1"}`,
		[]string{"spec", "exactly one of image"}},
	{"eval without evaluators", validEval, `spec: {evaluators: []}`,
		[]string{"spec.evaluators", "at least 1 items"}},
	{"mcp server named with a dot", validMcp, `metadata: {name: "git.hub"}`,
		[]string{"name must be a DNS label"}},
	{"mcp server with bearer and oauth", validMcp, `spec: {authSecretRef: {name: s, key: k}, oauth: {clientId: c, clientSecretRef: {name: s, key: k}}}`,
		[]string{"spec", "at most one"}},
	{"mcp client credentials without a secret", validMcp, `spec: {oauth: {clientId: c}}`,
		[]string{"spec.oauth", "grant ClientCredentials needs clientId and clientSecretRef"}},
	{"mcp token exchange without a subject token", validMcp, `spec: {oauth: {grant: TokenExchange}}`,
		[]string{"spec.oauth", "grant TokenExchange needs subjectToken"}},
	{"mcp subject token from two sources", validMcpExchange, `spec: {oauth: {subjectToken: {secretRef: {name: s, key: k}}}}`,
		[]string{"spec.oauth.subjectToken", "exactly one of serviceAccountAudience or secretRef"}},
	{"mcp subject token with client credentials", validMcpExchange, `spec: {oauth: {grant: ClientCredentials, clientId: c, clientSecretRef: {name: s, key: k}}}`,
		[]string{"spec.oauth", "subjectToken is for grant TokenExchange"}},
	{"mcp subject token type not a URI", validMcpExchange, `spec: {oauth: {subjectToken: {type: jwt}}}`,
		[]string{"spec.oauth.subjectToken.type"}},
	{"eval with cases and a builtin corpus", validEval, `spec: {dataset: {builtin: banned-tools}}`,
		[]string{"spec", "exactly one of configMapRef, inline cases or builtin"}},
	{"eval with an unknown corpus", validEval, `spec: {dataset: {cases: null, builtin: everything}}`,
		[]string{"spec.dataset.builtin", "Unsupported value"}},
	{"credential without endpoints", validCredential, `spec: {endpoints: []}`,
		[]string{"spec.endpoints", "at least 1 items"}},
	{"credential endpoint with a query", validCredential, `spec: {endpoints: ["https://api.telegram.org/bot?x=1"]}`,
		[]string{"spec.endpoints[0]"}},
	{"credential endpoint ftp", validCredential, `spec: {endpoints: ["ftp://api.telegram.org/"]}`,
		[]string{"spec.endpoints[0]"}},
	{"credential in the body", validCredential, `spec: {placement: {type: Body}}`,
		[]string{"spec.placement.type", "supported values"}},
	{"credential header without a name", validCredential, `spec: {placement: {type: Header}}`,
		[]string{"spec", "placement.name is required for Header and Query"}},
	{"credential path with a name", validCredential, `spec: {placement: {name: x}}`,
		[]string{"spec", "placement.name is required for Header and Query placements and not allowed otherwise"}},
	{"credential value prefix on a query", validCredential, `spec: {placement: {type: Query, name: key, valuePrefix: "Bearer "}}`,
		[]string{"spec", "valuePrefix applies to Header placements only"}},
	{"credential env with a reserved prefix", validCredential, `spec: {agentEnv: KARS_TOKEN}`,
		[]string{"spec.agentEnv", "reserved prefixes"}},
}

// Every invalid object is rejected by the real API server, with a message
// that names the field and says what is wrong; nothing is stored.
func TestInvalidObjectsRejected(t *testing.T) {
	if len(invalidCases) < 25 {
		t.Fatalf("want at least 25 invalid cases, have %d", len(invalidCases))
	}
	env := testenv.Start(t, testenv.Options{})
	ensureNamespace(t, env.Client, "validation")
	ctx := context.Background()
	for _, tc := range invalidCases {
		t.Run(tc.name, func(t *testing.T) {
			base := decode(t, tc.base)
			obj := &unstructured.Unstructured{Object: mergePatch(base, decode(t, tc.patch))}
			// The base itself must be valid, or the case proves nothing.
			probe := &unstructured.Unstructured{Object: deepCopyMap(base)}
			if err := env.Client.Create(ctx, probe, client.DryRunAll); err != nil {
				t.Fatalf("base object of this case is itself rejected: %v", err)
			}
			err := env.Client.Create(ctx, obj)
			if err == nil {
				_ = env.Client.Delete(ctx, obj)
				t.Fatalf("API server accepted an invalid object:\n%v", obj.Object)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("want an Invalid error, got %v", err)
			}
			for _, w := range tc.wantMsg {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("rejection does not contain %q:\n%v", w, err)
				}
			}
			got := obj.DeepCopy()
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(obj), got); !apierrors.IsNotFound(err) {
				t.Errorf("rejected object was stored (get: %v)", err)
			}
		})
	}
}

// Updates that would change an immutable or final field are rejected.
func TestImmutableFields(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ensureNamespace(t, env.Client, "validation")
	ctx := context.Background()
	cases := []struct {
		name    string
		base    string
		patch   string
		wantMsg string
	}{
		{"pairing tokenHash", validPairing, `spec: {tokenHash: "sha256:1111111111111111111111111111111111111111111111111111111111111111"}`, "tokenHash is immutable"},
		{"pairing un-revoke", validPairing + "  revoked: true\n", `spec: {revoked: false}`, "cannot be un-revoked"},
		{"egress approval sandbox", validEgress, `spec: {sandbox: other}`, "sandbox is immutable"},
		{"SRE decision", validSRE + "  approval: {state: Approved, decidedBy: alice}\n", `spec: {approval: {state: Rejected}}`, "approval decision is final"},
		{"SRE target", validSRE, `spec: {target: {name: other}}`, "action, target and params are immutable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			obj := &unstructured.Unstructured{Object: decode(t, tc.base)}
			if err := env.Client.Create(ctx, obj); err != nil {
				t.Fatalf("create base: %v", err)
			}
			t.Cleanup(func() { _ = env.Client.Delete(ctx, obj) })
			changed := &unstructured.Unstructured{Object: mergePatch(obj.Object, decode(t, tc.patch))}
			err := env.Client.Update(ctx, changed)
			if err == nil {
				t.Fatal("API server accepted the change")
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("rejection does not say %q: %v", tc.wantMsg, err)
			}
		})
	}
}

func decode(t *testing.T, doc string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatalf("test YAML: %v", err)
	}
	return m
}

// mergePatch applies an RFC 7386 JSON merge patch to a copy of base.
func mergePatch(base, patch map[string]any) map[string]any {
	out := deepCopyMap(base)
	for k, pv := range patch {
		if pv == nil {
			delete(out, k)
			continue
		}
		pm, pIsMap := pv.(map[string]any)
		bm, bIsMap := out[k].(map[string]any)
		if pIsMap && bIsMap {
			out[k] = mergePatch(bm, pm)
			continue
		}
		if pIsMap {
			out[k] = mergePatch(map[string]any{}, pm)
			continue
		}
		out[k] = pv
	}
	return out
}

func isAlreadyExists(err error) bool { return apierrors.IsAlreadyExists(err) }

func waitGone(t *testing.T, c client.Client, obj *unstructured.Unstructured) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		probe := obj.DeepCopy()
		if err := c.Get(context.Background(), client.ObjectKeyFromObject(obj), probe); apierrors.IsNotFound(err) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s still present", obj.GetName())
}
