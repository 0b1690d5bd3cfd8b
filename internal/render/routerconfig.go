package render

import (
	"path"
	"strconv"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/governance/toolpolicy"
	"github.com/kars-io/kars/internal/routerconfig"
)

// AgentID is the governance identity of a sandbox's agent: every decision
// and audit entry of its router names it.
func AgentID(sb *karsv1.KarsSandbox) string { return sb.Namespace + "/" + sb.Name }

// RouterConfig compiles the sandbox's InferencePolicy and (when governance is
// on and a ToolPolicy is referenced) its ToolPolicy (converted by
// governance/toolpolicy, after checking its appliesTo) into the router's
// configuration, and validates it exactly as the router will. tp may be nil:
// the router then enforces its built-in default (inference to the
// configured models only, every other action denied).
//
// Credentials appear only as file paths inside the router container; the
// paths are the ones PodSpec mounts. mesh, when set, makes the router the
// agent's mesh endpoint (Environment.Mesh); b adds the sandbox's McpServers
// and KarsMemory. creds are the sandbox's usable CredentialBindings
// (UsableCredentials).
func RouterConfig(sb *karsv1.KarsSandbox, ip *karsv1.InferencePolicy, tp *karsv1.ToolPolicy, mesh *MeshEndpoints, b Bindings, creds ...karsv1.CredentialBinding) (*routerconfig.Config, error) {
	c, err := compile(sb, ip, tp, mesh, b, creds)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, fail(ReasonPolicyInvalid, "InferencePolicy %s / ToolPolicy %s compile to a config the router refuses: %v", ip.Name, nameOf(tp), err)
	}
	return c, nil
}

// RouterConfigDigest is the digest of the config RouterConfig would compile,
// without validating it (which compiles CEL and is the expensive part). The
// policy reconcilers use it to tell whether a router enforces the current
// generation of a policy.
func RouterConfigDigest(sb *karsv1.KarsSandbox, ip *karsv1.InferencePolicy, tp *karsv1.ToolPolicy, mesh *MeshEndpoints, b Bindings, creds ...karsv1.CredentialBinding) (string, error) {
	c, err := compile(sb, ip, tp, mesh, b, creds)
	if err != nil {
		return "", err
	}
	return routerconfig.Digest(c)
}

// Bindings are the objects besides the policies that shape a sandbox's
// router: the McpServers it may use (McpServersFor) and its KarsMemory.
type Bindings struct {
	MCP    []karsv1.McpServer
	Memory *karsv1.KarsMemory
}

func compile(sb *karsv1.KarsSandbox, ip *karsv1.InferencePolicy, tp *karsv1.ToolPolicy, mesh *MeshEndpoints, b Bindings, creds []karsv1.CredentialBinding) (*routerconfig.Config, error) {
	c := &routerconfig.Config{
		SchemaVersion: routerconfig.SchemaVersion,
		Sandbox:       routerconfig.Sandbox{Namespace: sb.Namespace, Name: sb.Name, AgentID: AgentID(sb)},
		// Checkpoints are always signed, with a key the router generates
		// on its state volume and keeps to itself.
		Audit:    routerconfig.Audit{Dir: RouterAuditDir, CheckpointKeyFile: RouterCheckpointKey},
		StateDir: RouterStateDir,
		Admin: routerconfig.Admin{
			TokenFile:   path.Join(RouterAdminDir, AdminTokenKey),
			TLSCertFile: path.Join(RouterAdminDir, AdminCertKey),
			TLSKeyFile:  path.Join(RouterAdminDir, AdminKeyKey),
		},
	}
	if b := sb.Spec.Runtime.BYO; b != nil && b.Port != 0 && b.Port != DefaultAgentPort {
		// Where the admin API relays evaluation turns; the default is
		// the contract's port.
		c.AgentURL = "http://127.0.0.1:" + strconv.Itoa(int(b.Port))
	}
	spec := ip.Spec
	c.Models.Primary = target(spec.ModelPreference.Primary)
	for _, f := range spec.ModelPreference.Fallbacks {
		c.Models.Fallbacks = append(c.Models.Fallbacks, target(f))
	}
	if b := spec.TokenBudget; b != nil {
		c.Budget = &routerconfig.Budget{PerRequest: b.PerRequest, Daily: b.Daily, Monthly: b.Monthly, DefaultReserve: b.DefaultReserve}
	}
	if r := spec.RateLimit; r != nil && (r.RPM > 0 || r.TPM > 0) {
		c.RateLimit = &routerconfig.RateLimit{RPM: r.RPM, TPM: r.TPM}
	}
	if s := spec.ContentSafety; s != nil {
		c.ContentSafety = &routerconfig.ContentSafety{
			Hate:                 routerconfig.Severity(s.Hate),
			SelfHarm:             routerconfig.Severity(s.SelfHarm),
			Sexual:               routerconfig.Severity(s.Sexual),
			Violence:             routerconfig.Severity(s.Violence),
			RequirePromptShields: s.RequirePromptShields,
			BlockJailbreak:       s.BlockJailbreak,
			BlockIndirectAttack:  s.BlockIndirectAttack,
		}
	}
	if tp != nil {
		ok, err := ToolPolicyApplies(tp, sb)
		if err != nil {
			return nil, fail(ReasonPolicyInvalid, "ToolPolicy %s: appliesTo.selector: %v", tp.Name, err)
		}
		if !ok {
			return nil, fail(ReasonToolPolicyNotApplicable, "ToolPolicy %s does not apply to sandbox %s (see its spec.appliesTo)", tp.Name, sb.Name)
		}
		c.Governance = toolpolicy.FromSpec(tp.Namespace+"/"+tp.Name, &tp.Spec)
	}
	c.Behavior = behavior(sb.Spec.Governance.Behavior)
	c.MCP = mcpConfig(b.MCP)
	c.Memory = memoryConfig(sb, b.Memory)
	c.Egress = egressConfig(sb)
	for _, cb := range creds {
		c.Credentials = append(c.Credentials, credentialConfig(sb, cb))
	}
	c.Mesh = meshConfig(sb, mesh)
	return c, nil
}

// Defaults of the behaviour monitor when the sandbox does not tune it: the
// same as the schema's defaults, alerting only.
const (
	defaultMaxCallsPerMinute   = 600
	defaultMaxDenialsPerMinute = 20
)

// behavior always turns the monitor on: a sandbox without the block gets
// alerts at the defaults and no quarantine.
func behavior(b *karsv1.BehaviorMonitor) *routerconfig.Behavior {
	out := &routerconfig.Behavior{MaxCallsPerMinute: defaultMaxCallsPerMinute, MaxDenialsPerMinute: defaultMaxDenialsPerMinute}
	if b == nil {
		return out
	}
	if b.MaxCallsPerMinute > 0 {
		out.MaxCallsPerMinute = int(b.MaxCallsPerMinute)
	}
	if b.MaxDenialsPerMinute > 0 {
		out.MaxDenialsPerMinute = int(b.MaxDenialsPerMinute)
	}
	out.Quarantine = b.Quarantine
	return out
}

func nameOf(tp *karsv1.ToolPolicy) string {
	if tp == nil {
		return "(none)"
	}
	return tp.Name
}

// target converts one model target. Azure AI Foundry deployments are
// usually named after their model, so a Foundry target without a deployment
// uses the model name (the router needs one to build the URL).
func target(t karsv1.ModelTarget) routerconfig.Target {
	out := routerconfig.Target{
		Provider:   routerconfig.Provider(t.Provider),
		Model:      t.Model,
		Deployment: t.Deployment,
		Endpoint:   t.Endpoint,
		APIVersion: t.APIVersion,
	}
	if out.Provider == routerconfig.ProviderAzureAIFoundry && out.Deployment == "" {
		out.Deployment = t.Model
	}
	a := t.Auth
	if a == nil {
		return out
	}
	ra := &routerconfig.Auth{Mode: routerconfig.AuthMode(a.Mode), ClientID: a.ClientID, TenantID: a.TenantID, Scope: a.Scope}
	switch a.Mode {
	case karsv1.AuthAPIKey:
		if a.SecretRef != nil {
			ra.KeyFile = providerKeyFile(*a.SecretRef)
		}
	case karsv1.AuthWorkloadIdentity:
		ra.FederatedTokenFile = WorkloadIdentityTokenFile
	}
	out.Auth = ra
	return out
}

func providerKeyFile(ref karsv1.SecretKeyReference) string {
	return path.Join(RouterProviderDir, ref.Name, ref.Key)
}

// needsWorkloadIdentity reports whether any target authenticates with the
// projected ServiceAccount token.
func needsWorkloadIdentity(ip *karsv1.InferencePolicy) bool {
	return usesAuth(ip, karsv1.AuthWorkloadIdentity)
}

func usesAuth(ip *karsv1.InferencePolicy, mode karsv1.AuthMode) bool {
	for _, t := range targets(ip) {
		if t.Auth != nil && t.Auth.Mode == mode {
			return true
		}
	}
	return false
}

func targets(ip *karsv1.InferencePolicy) []karsv1.ModelTarget {
	out := []karsv1.ModelTarget{ip.Spec.ModelPreference.Primary}
	return append(out, ip.Spec.ModelPreference.Fallbacks...)
}

// providerSecrets lists the API-key Secrets the router must mount, in
// first-use order, without duplicates.
func providerSecrets(ip *karsv1.InferencePolicy) []karsv1.SecretKeyReference {
	var out []karsv1.SecretKeyReference
	seen := map[karsv1.SecretKeyReference]bool{}
	for _, t := range targets(ip) {
		if t.Auth == nil || t.Auth.Mode != karsv1.AuthAPIKey || t.Auth.SecretRef == nil || seen[*t.Auth.SecretRef] {
			continue
		}
		seen[*t.Auth.SecretRef] = true
		out = append(out, *t.Auth.SecretRef)
	}
	return out
}
