package render

import (
	"maps"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/egress"
)

// ReservedEnvPrefixes may never be set by a user: they carry the sandbox
// contract (KARS_), cloud identity (AZURE_, IMDS_) and governance (AGT_).
var ReservedEnvPrefixes = []string{"KARS_", "AZURE_", "AGT_", "IMDS_"}

// BrokeredKey is the placeholder API key handed to SDKs that refuse to start
// without one. It is not a credential: the router drops whatever the agent
// sends and authenticates upstream itself.
const BrokeredKey = "kars-brokered"

// Volume names of the sandbox pod.
const (
	volWorkspace     = "workspace"
	volTmp           = "tmp"
	volAgentCode     = "agent-code"
	volAgentConfig   = "agent-config"
	volRouterConfig  = "router-config"
	volRouterAdmin   = "router-admin"
	volRouterState   = "router-state"
	volGitHome       = "git-home"
	volIdentityToken = "azure-identity-token"
	volGitSecret     = "git-credentials"
)

// routerURL is where the agent reaches the router: loopback only.
var routerURL = "http://127.0.0.1:" + strconv.Itoa(int(RouterAgentPort))

// noProxy keeps the agent's calls to the router itself off the proxy.
const noProxy = "127.0.0.1,localhost,::1"

func podTemplate(in Input, names Names, rt *Runtime, a2a bool) (corev1.PodTemplateSpec, error) {
	sb := in.Sandbox
	agent, err := agentContainer(in, rt)
	if err != nil {
		return corev1.PodTemplateSpec{}, err
	}
	spec := corev1.PodSpec{
		ServiceAccountName:           names.Workload,
		AutomountServiceAccountToken: ptr(false),
		// Service environment variables would tell the agent about every
		// Service in the namespace; it needs none of them.
		EnableServiceLinks:    ptr(false),
		ShareProcessNamespace: ptr(false),
		// No fsGroup on purpose: the kubelet would add it to every
		// container's supplementary groups, the agent's included, and
		// group-readable credential files would become agent-readable.
		SecurityContext: &corev1.PodSecurityContext{
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		// The router drains in-flight calls for up to 30 s on SIGTERM.
		TerminationGracePeriodSeconds: ptr(int64(35)),
		InitContainers:                initContainers(in, a2a),
		Containers:                    []corev1.Container{agent, routerContainer(in, names, a2a)},
		Volumes:                       volumes(in, names, rt),
	}
	if git := gitCode(rt); git != nil {
		spec.InitContainers = append(spec.InitContainers, agentCodeContainer(in.Env.Catalog, git))
	}
	if sb.Spec.IsolationLevel() == karsv1.IsolationConfidential {
		spec.RuntimeClassName = ptr(ConfidentialRuntimeClass)
	}
	tmpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{
			Labels: Labels(sb, "workload"),
			Annotations: map[string]string{
				"kubectl.kubernetes.io/default-container": agent.Name,
				AnnotationAdminCert:                       sha256Hex(in.Admin.CertPEM),
			},
		},
		Spec: spec,
	}
	if rt.Config != nil {
		tmpl.Annotations[AnnotationAgentConfigDigest] = sha256Hex(rt.Config)
	}
	if rt.Kind == karsv1.RuntimeBYO {
		tmpl.Annotations[AnnotationVerifiedImage] = rt.Image
	}
	return tmpl, nil
}

// agentSeccomp is the agent's seccomp profile for the isolation level.
func agentSeccomp(sb *karsv1.KarsSandbox, env Environment) *corev1.SeccompProfile {
	if sb.Spec.IsolationLevel() == karsv1.IsolationStandard {
		return &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
	}
	p := env.SeccompProfile
	if p == "" {
		p = DefaultSeccompProfile
	}
	return &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptr(p)}
}

// restricted is the security context of a non-root kars container.
func restricted(uid int64, seccomp *corev1.SeccompProfile) *corev1.SecurityContext {
	return &corev1.SecurityContext{
		RunAsUser:                ptr(uid),
		RunAsGroup:               ptr(uid),
		RunAsNonRoot:             ptr(true),
		ReadOnlyRootFilesystem:   ptr(true),
		AllowPrivilegeEscalation: ptr(false),
		Privileged:               ptr(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           seccomp,
	}
}

func runtimeDefault() *corev1.SeccompProfile {
	return &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
}

// egressGuardContainer installs the owner-match rules before the agent
// starts: the agent's TCP goes to the router's transparent proxy, its DNS
// to the router's stub (never to the cluster resolver), and the pod is
// closed to inbound connections but the router's admin port (and the A2A
// port while exposed). It is the only container with any capability, and
// only the two nftables needs.
func egressGuardContainer(env Environment, a2a bool) corev1.Container {
	inbound := strconv.Itoa(int(RouterAdminPort))
	if a2a {
		inbound += "," + strconv.Itoa(int(RouterA2APort))
	}
	return corev1.Container{
		Name:  ContainerEgressGuard,
		Image: env.Catalog.Image("kars-egress-guard"),
		Env: []corev1.EnvVar{
			{Name: "KARS_AGENT_UID", Value: strconv.FormatInt(AgentUID, 10)},
			{Name: "KARS_ROUTER_PORT", Value: strconv.Itoa(int(RouterAgentPort))},
			{Name: "KARS_TRANSPARENT_PORT", Value: strconv.Itoa(egress.DefaultTransparentPort)},
			{Name: "KARS_DNS_PORT", Value: strconv.Itoa(egress.DefaultDNSPort)},
			{Name: "KARS_INBOUND_PORTS", Value: inbound},
		},
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr(int64(0)),
			RunAsNonRoot:             ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Privileged:               ptr(false),
			Capabilities: &corev1.Capabilities{
				Drop: []corev1.Capability{"ALL"},
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
			},
			SeccompProfile: runtimeDefault(),
		},
		Resources: resources("10m", "16Mi", "64Mi"),
	}
}

// containerName names the runtime container after its framework, as the
// scenarios show it ("openclaw (UID 1000)").
func containerName(k karsv1.RuntimeKind) string {
	switch k {
	case karsv1.RuntimeOpenClaw:
		return "openclaw"
	case karsv1.RuntimeOpenAIAgents:
		return "openai-agents"
	case karsv1.RuntimeMicrosoftAgentFramework:
		return "microsoft-agent-framework"
	case karsv1.RuntimeLangGraph:
		return "langgraph"
	case karsv1.RuntimeAnthropic:
		return "anthropic"
	case karsv1.RuntimePydanticAi:
		return "pydantic-ai"
	}
	return "agent"
}

// initContainers: the egress guard, then (with credentials bound to HTTPS
// hosts) router-trust.
func initContainers(in Input, a2a bool) []corev1.Container {
	out := []corev1.Container{egressGuardContainer(in.Env, a2a)}
	if t := trustContainer(in); t != nil {
		out = append(out, *t)
	}
	return out
}

func agentContainer(in Input, rt *Runtime) (corev1.Container, error) {
	sb := in.Sandbox
	env, err := agentEnv(sb, rt, credentialEnv(in))
	if err != nil {
		return corev1.Container{}, err
	}
	c := corev1.Container{
		Name:    containerName(rt.Kind),
		Image:   rt.Image,
		Command: slices.Clone(rt.Command),
		Args:    slices.Clone(rt.Args),
		Env:     env,
		Ports:   []corev1.ContainerPort{{Name: "agent", ContainerPort: rt.Port, Protocol: corev1.ProtocolTCP}},
		VolumeMounts: append([]corev1.VolumeMount{
			{Name: volWorkspace, MountPath: Workspace},
			{Name: volTmp, MountPath: "/tmp"},
		}, agentTrustMount(in)...),
		SecurityContext: restricted(AgentUID, agentSeccomp(sb, in.Env)),
		Resources:       resources("100m", "256Mi", "2Gi"),
	}
	if r := sb.Spec.Resources; r != nil {
		c.Resources = *r.DeepCopy()
	}
	if rt.Code != nil {
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: volAgentCode, MountPath: AgentCodeDir, ReadOnly: true})
	}
	if rt.Config != nil {
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: volAgentConfig, MountPath: AgentConfigDir, ReadOnly: true})
	}
	return c, nil
}

// agentEnv is the runtime contract's environment (docs/runtime-contract.md),
// the SDK variables that point every framework at the router, the runtime's
// own variables, then the user's, which may not touch any of the former.
//
// The model is deliberately absent: the router decides which deployment
// serves a call, so `kars model set` changes the router's config and never
// the pod. creds are the credential placeholders (credentialEnv).
func agentEnv(sb *karsv1.KarsSandbox, rt *Runtime, creds map[string]string) ([]corev1.EnvVar, error) {
	set := map[string]string{
		"KARS_CONTRACT_VERSION":  "v1",
		"KARS_SANDBOX_NAME":      sb.Name,
		"KARS_SANDBOX_NAMESPACE": sb.Namespace,
		"KARS_AGENT_ID":          AgentID(sb),
		"KARS_RUNTIME_KIND":      string(rt.Kind),
		"KARS_ROUTER_URL":        routerURL,
		"KARS_WORKSPACE":         Workspace,
		"KARS_AGENT_LISTEN":      "127.0.0.1:" + strconv.Itoa(int(rt.Port)),
		"HOME":                   Workspace,
		"TMPDIR":                 "/tmp",
		// OpenAI and OpenAI-compatible SDKs (OpenAI Agents, LangGraph,
		// PydanticAI, OpenClaw).
		"OPENAI_BASE_URL": routerURL + "/v1",
		"OPENAI_API_KEY":  BrokeredKey,
		// Azure OpenAI SDKs (Microsoft Agent Framework); the router serves
		// /openai/deployments/{d}/… on the same port.
		"AZURE_OPENAI_ENDPOINT": routerURL,
		"AZURE_OPENAI_API_KEY":  BrokeredKey,
		// Anthropic SDKs append /v1/messages themselves.
		"ANTHROPIC_BASE_URL": routerURL,
		"ANTHROPIC_API_KEY":  BrokeredKey,
		// Everything else goes through the router's forward proxy on the
		// same port (docs/egress.md); clients that ignore these variables
		// are redirected to it by the egress guard. Both spellings: curl
		// reads only the lower-case http_proxy.
		"HTTP_PROXY": routerURL, "HTTPS_PROXY": routerURL, "http_proxy": routerURL, "https_proxy": routerURL,
		"NO_PROXY": noProxy, "no_proxy": noProxy,
	}
	if a := sb.Spec.Agent; a != nil {
		if a.Instructions != "" {
			set["KARS_INSTRUCTIONS"] = a.Instructions
		}
		if len(a.Tools) > 0 {
			set["KARS_TOOLS"] = strings.Join(a.Tools, ",")
		}
	}
	if rt.Code != nil {
		set["KARS_AGENT_CODE"] = agentCodePath(rt.Code)
	}
	if rt.Config != nil {
		set["KARS_AGENT_CONFIG"] = path.Join(AgentConfigDir, rt.ConfigFile)
	}
	for k, v := range rt.Env {
		set[k] = v
	}
	for k, v := range creds {
		if _, ok := set[k]; !ok { // UsableCredentials refused collisions
			set[k] = v
		}
	}
	env := make([]corev1.EnvVar, 0, len(set)+len(sb.Spec.Runtime.Env))
	for _, k := range slices.Sorted(maps.Keys(set)) {
		env = append(env, corev1.EnvVar{Name: k, Value: set[k]})
	}
	for _, e := range sb.Spec.Runtime.Env {
		for _, p := range ReservedEnvPrefixes {
			if strings.HasPrefix(e.Name, p) {
				return nil, fail(ReasonInvalidSpec, "runtime.env %s uses the reserved prefix %s", e.Name, p)
			}
		}
		if _, ok := set[e.Name]; ok {
			return nil, fail(ReasonInvalidSpec, "runtime.env %s would override a variable kars sets to keep the agent on its router", e.Name)
		}
		env = append(env, corev1.EnvVar{Name: e.Name, Value: e.Value})
	}
	return env, nil
}

// routerContainer runs kars-router as UID 1001. It alone mounts the admin
// Secret, provider keys and the workload identity token.
func routerContainer(in Input, names Names, a2a bool) corev1.Container {
	ports := []corev1.ContainerPort{
		{Name: "agent-api", ContainerPort: RouterAgentPort, Protocol: corev1.ProtocolTCP},
		{Name: "admin", ContainerPort: RouterAdminPort, Protocol: corev1.ProtocolTCP},
	}
	if a2a {
		ports = append(ports, corev1.ContainerPort{Name: "a2a", ContainerPort: RouterA2APort, Protocol: corev1.ProtocolTCP})
	}
	mounts := []corev1.VolumeMount{
		{Name: volRouterConfig, MountPath: RouterConfigDir, ReadOnly: true},
		{Name: volRouterAdmin, MountPath: RouterAdminDir, ReadOnly: true},
		{Name: volRouterState, MountPath: RouterStateRoot},
	}
	for i, ref := range providerSecrets(in.Inference) {
		mounts = append(mounts, corev1.VolumeMount{Name: providerVolume(i), MountPath: path.Join(RouterProviderDir, ref.Name), ReadOnly: true})
	}
	for i, sec := range mcpSecrets(in.Bindings.MCP) {
		mounts = append(mounts, corev1.VolumeMount{Name: "mcp-" + strconv.Itoa(i), MountPath: path.Join(RouterMcpDir, sec.name), ReadOnly: true})
	}
	for i, id := range mcpIdentities(in.Bindings.MCP) {
		mounts = append(mounts, corev1.VolumeMount{Name: "mcp-identity-" + strconv.Itoa(i), MountPath: path.Dir(McpIdentityTokenFile(id.server)), ReadOnly: true})
	}
	if ref := memorySecret(in.Bindings.Memory); ref != nil {
		mounts = append(mounts, corev1.VolumeMount{Name: "memory-key", MountPath: path.Join(RouterMemoryDir, ref.Name), ReadOnly: true})
	}
	if needsWorkloadIdentity(in.Inference) || memoryUsesWorkloadIdentity(in.Bindings.Memory) {
		mounts = append(mounts, corev1.VolumeMount{Name: volIdentityToken, MountPath: WorkloadIdentityTokenDir, ReadOnly: true})
	}
	if _, m := blocklistVolume(in.Env); m != nil {
		mounts = append(mounts, *m)
	}
	_, credMounts := credentialVolumes(in)
	mounts = append(mounts, credMounts...)
	probe := func(p string, period int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: p, Port: intOrString("admin"), Scheme: corev1.URISchemeHTTPS,
			}},
			PeriodSeconds: period, TimeoutSeconds: 2, FailureThreshold: 3,
		}
	}
	return corev1.Container{
		Name:  ContainerRouter,
		Image: in.Env.Catalog.Image("kars-router"),
		Args:  []string{"--config=" + RouterConfigPath},
		// The router sets Go's soft memory limit below its container's
		// limit, so the garbage collector works harder before the kernel
		// would kill it (docs/router.md).
		Env: []corev1.EnvVar{{Name: "KARS_ROUTER_MEMORY_LIMIT", ValueFrom: &corev1.EnvVarSource{
			ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: ContainerRouter, Resource: "limits.memory"}}}},
		Ports:           ports,
		VolumeMounts:    mounts,
		ReadinessProbe:  probe("/readyz", 5),
		LivenessProbe:   probe("/healthz", 10),
		SecurityContext: restricted(RouterUID, runtimeDefault()),
		Resources:       resources("50m", "64Mi", "512Mi"),
	}
}

func providerVolume(i int) string { return "provider-" + strconv.Itoa(i) }

// agentCodeContainer fetches git agent code with git-sync as UID 1002: not
// the agent's UID, so the egress guard does not confine it, and not the
// router's, so it cannot read the router's files. Its egress is bounded by
// the NetworkPolicy (the repository's port).
func agentCodeContainer(c Catalog, g *karsv1.GitAgentCode) corev1.Container {
	ref := g.Ref
	if ref == "" {
		ref = "main"
	}
	ctr := corev1.Container{
		Name:  ContainerAgentCode,
		Image: c.GitSyncImage,
		Args:  []string{"--repo=" + g.URL, "--ref=" + ref, "--root=/git", "--link=current", "--one-time", "--depth=1"},
		// Its own /tmp (its HOME): the agent's /tmp is the agent's to
		// write, and git-sync's credentials helper and known_hosts must
		// not be left where the agent reads or plants them.
		Env: []corev1.EnvVar{{Name: "HOME", Value: "/tmp"}},
		VolumeMounts: []corev1.VolumeMount{
			{Name: volAgentCode, MountPath: "/git"},
			{Name: volGitHome, MountPath: "/tmp"},
		},
		SecurityContext: restricted(AgentCodeUID, runtimeDefault()),
		Resources:       resources("50m", "64Mi", "512Mi"),
	}
	if g.SecretRef != nil {
		// kubernetes.io/basic-auth (username, password) for https and
		// kubernetes.io/ssh-auth (ssh-privatekey, known_hosts) for ssh.
		const dir = "/etc/git-secret"
		ctr.VolumeMounts = append(ctr.VolumeMounts, corev1.VolumeMount{Name: volGitSecret, MountPath: dir, ReadOnly: true})
		if strings.HasPrefix(g.URL, "https://") {
			ctr.Env = append(ctr.Env,
				corev1.EnvVar{Name: "GITSYNC_USERNAME", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: g.SecretRef.Name}, Key: "username"}}},
				corev1.EnvVar{Name: "GITSYNC_PASSWORD_FILE", Value: dir + "/password"})
		} else {
			ctr.Env = append(ctr.Env,
				corev1.EnvVar{Name: "GITSYNC_SSH_KEY_FILE", Value: dir + "/ssh-privatekey"},
				corev1.EnvVar{Name: "GITSYNC_SSH_KNOWN_HOSTS_FILE", Value: dir + "/known_hosts"})
		}
	}
	return ctr
}

func gitCode(rt *Runtime) *karsv1.GitAgentCode {
	if rt.Code == nil {
		return nil
	}
	return rt.Code.Git
}

// agentCodePath is where the agent finds its code: the image volume's root,
// or the git checkout's path inside git-sync's "current" link.
func agentCodePath(code *karsv1.AgentCode) string {
	if code.Git != nil {
		return path.Join(AgentCodeDir, "current", code.Git.Path)
	}
	return AgentCodeDir
}

func volumes(in Input, names Names, rt *Runtime) []corev1.Volume {
	emptyDir := func(name, limit string) corev1.Volume {
		q := resource.MustParse(limit)
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: &q}}}
	}
	pvc := func(name, claim string) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}
	}
	// The agent writes only to volumes that fill up rather than get the
	// pod evicted: an emptyDir on disk past its sizeLimit (or past the
	// node's ephemeral storage) makes the kubelet evict the pod, which an
	// agent could use to reset whatever lives in the pod's emptyDirs. The
	// workspace is a volume claim (ENOSPC when full) and /tmp a
	// memory-backed emptyDir, whose tmpfs the kubelet sizes to its limit
	// (and whose pages count against the agent's memory limit).
	tmp := emptyDir(volTmp, "256Mi")
	tmp.EmptyDir.Medium = corev1.StorageMediumMemory
	vs := []corev1.Volume{
		pvc(volWorkspace, names.Workspace),
		tmp,
		// The router's audit log, budget ledger, trust scores, quarantine
		// and checkpoint key outlive every pod of the sandbox.
		pvc(volRouterState, names.RouterState),
		{Name: volRouterConfig, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: names.RouterConfig},
			DefaultMode:          ptr(int32(0o444)),
		}}},
		// Secret files are root-owned unless fsGroup is set (which would
		// expose them to the agent's groups), so they are world-readable
		// inside the one container that mounts them: the router's.
		{Name: volRouterAdmin, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName:  names.RouterAdmin,
			DefaultMode: ptr(int32(0o444)),
		}}},
	}
	for i, ref := range providerSecrets(in.Inference) {
		vs = append(vs, corev1.Volume{Name: providerVolume(i), VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName:  ref.Name,
			Items:       []corev1.KeyToPath{{Key: ref.Key, Path: ref.Key}},
			DefaultMode: ptr(int32(0o444)),
		}}})
	}
	for i, sec := range mcpSecrets(in.Bindings.MCP) {
		items := make([]corev1.KeyToPath, len(sec.keys))
		for j, k := range sec.keys {
			items[j] = corev1.KeyToPath{Key: k, Path: k}
		}
		vs = append(vs, corev1.Volume{Name: "mcp-" + strconv.Itoa(i), VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: sec.name, Items: items, DefaultMode: ptr(int32(0o444)),
		}}})
	}
	for i, id := range mcpIdentities(in.Bindings.MCP) {
		// The sandbox's workload identity for a token exchange (RFC 8693),
		// bound to the pod and rotated by the kubelet; only the router
		// mounts it.
		vs = append(vs, corev1.Volume{Name: "mcp-identity-" + strconv.Itoa(i), VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			DefaultMode: ptr(int32(0o444)),
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: id.audience, ExpirationSeconds: ptr(int64(3600)), Path: "token",
			}}},
		}}})
	}
	if ref := memorySecret(in.Bindings.Memory); ref != nil {
		vs = append(vs, corev1.Volume{Name: "memory-key", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: ref.Name, Items: []corev1.KeyToPath{{Key: ref.Key, Path: ref.Key}}, DefaultMode: ptr(int32(0o444)),
		}}})
	}
	if needsWorkloadIdentity(in.Inference) || memoryUsesWorkloadIdentity(in.Bindings.Memory) {
		vs = append(vs, corev1.Volume{Name: volIdentityToken, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			DefaultMode: ptr(int32(0o444)),
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience:          WorkloadIdentityAudience,
				ExpirationSeconds: ptr(int64(3600)),
				Path:              path.Base(WorkloadIdentityTokenFile),
			}}},
		}}})
	}
	if rt.Code != nil {
		switch {
		case rt.Code.OCI != nil:
			// An image volume mounts the code image read-only without
			// running anything from it.
			vs = append(vs, corev1.Volume{Name: volAgentCode, VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{
				Reference: rt.Code.OCI.Image, PullPolicy: corev1.PullIfNotPresent,
			}}})
		case rt.Code.Git != nil:
			vs = append(vs, emptyDir(volAgentCode, "2Gi"), emptyDir(volGitHome, "64Mi"))
			if s := rt.Code.Git.SecretRef; s != nil {
				vs = append(vs, corev1.Volume{Name: volGitSecret, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
					SecretName: s.Name, DefaultMode: ptr(int32(0o444)),
				}}})
			}
		}
	}
	if v, _ := blocklistVolume(in.Env); v != nil {
		vs = append(vs, *v)
	}
	credVols, _ := credentialVolumes(in)
	vs = append(vs, credVols...)
	if rt.Config != nil {
		vs = append(vs, corev1.Volume{Name: volAgentConfig, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: names.AgentConfig},
			DefaultMode:          ptr(int32(0o444)),
		}}})
	}
	return vs
}

func resources(cpu, memRequest, memLimit string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(memRequest)},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(memLimit)},
	}
}

// urlPort returns the TCP port of an http(s) URL, or 0 when it has none
// that can be known.
func urlPort(raw string) int32 {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return 0
	}
	if p := u.Port(); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return 0
		}
		return int32(n)
	}
	switch u.Scheme {
	case "https":
		return 443
	case "http":
		return 80
	}
	return 0
}
