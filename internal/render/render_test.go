package render

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/router"
	"github.com/kars-io/kars/internal/routerconfig"
)

var runnableKinds = []karsv1.RuntimeKind{
	karsv1.RuntimeOpenClaw, karsv1.RuntimeOpenAIAgents, karsv1.RuntimeMicrosoftAgentFramework,
	karsv1.RuntimeLangGraph, karsv1.RuntimeAnthropic, karsv1.RuntimePydanticAi, karsv1.RuntimeBYO,
}

var isolations = []karsv1.IsolationLevel{karsv1.IsolationStandard, karsv1.IsolationEnhanced, karsv1.IsolationConfidential}

func findContainer(cs []corev1.Container, name string) *corev1.Container {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

// The trust boundary holds for every runtime at every isolation level: the
// agent runs as 1000 with nothing to escalate with and no credential in
// reach; only the router mounts secrets; only the egress guard has
// capabilities.
func TestTrustBoundaryEveryRuntimeAndIsolation(t *testing.T) {
	for _, kind := range runnableKinds {
		for _, iso := range isolations {
			t.Run(string(kind)+"/"+string(iso), func(t *testing.T) {
				out, err := Render(input(sandbox(kind, iso)))
				if err != nil {
					t.Fatal(err)
				}
				pod := out.Deployment.Spec.Template.Spec
				if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
					t.Error("pod automounts the ServiceAccount token")
				}
				if out.ServiceAccount.AutomountServiceAccountToken == nil || *out.ServiceAccount.AutomountServiceAccountToken {
					t.Error("ServiceAccount automounts its token")
				}
				if pod.SecurityContext.FSGroup != nil || len(pod.SecurityContext.SupplementalGroups) > 0 {
					t.Error("pod sets fsGroup or supplemental groups, which would reach the agent")
				}
				if pod.HostNetwork || pod.HostPID || pod.HostIPC || pod.ShareProcessNamespace == nil || *pod.ShareProcessNamespace {
					t.Error("pod shares a host or process namespace")
				}
				agent := &pod.Containers[0]
				router := findContainer(pod.Containers, ContainerRouter)
				if router == nil || len(pod.Containers) != 2 {
					t.Fatalf("want the runtime and the router containers, got %d", len(pod.Containers))
				}
				sc := agent.SecurityContext
				if *sc.RunAsUser != AgentUID || !*sc.RunAsNonRoot || !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation ||
					!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
					t.Errorf("agent security context too weak: %+v", sc)
				}
				if r := router.SecurityContext; *r.RunAsUser != RouterUID || !*r.ReadOnlyRootFilesystem || len(r.Capabilities.Add) != 0 {
					t.Errorf("router security context: %+v", r)
				}
				if !slices.Contains(router.Args, "--config="+RouterConfigPath) || !hasPort(router.Ports, RouterAgentPort) {
					t.Errorf("router does not serve 8443 from the mounted config: %v %v", router.Args, router.Ports)
				}
				// Credential volumes: Secret and projected volumes.
				creds := map[string]bool{}
				for _, v := range pod.Volumes {
					if v.Secret != nil || v.Projected != nil {
						creds[v.Name] = true
					}
				}
				if !creds[volRouterAdmin] {
					t.Error("router admin Secret is not mounted")
				}
				for _, m := range agent.VolumeMounts {
					if creds[m.Name] {
						t.Errorf("agent mounts credential volume %s", m.Name)
					}
					if m.MountPath != Workspace && m.MountPath != "/tmp" && !m.ReadOnly {
						t.Errorf("agent has writable mount %s outside /sandbox and /tmp", m.MountPath)
					}
				}
				for _, e := range agent.Env {
					if e.ValueFrom != nil {
						t.Errorf("agent env %s is read from an object", e.Name)
					}
					if strings.Contains(e.Value, "admin-token") {
						t.Errorf("agent env %s carries the admin token", e.Name)
					}
				}
				guard := findContainer(pod.InitContainers, ContainerEgressGuard)
				if guard == nil || pod.InitContainers[0].Name != ContainerEgressGuard {
					t.Fatal("egress guard is not the first init container")
				}
				if add := guard.SecurityContext.Capabilities.Add; !slices.Equal(add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
					t.Errorf("egress guard capabilities %v, want NET_ADMIN NET_RAW only", add)
				}
				for _, c := range pod.InitContainers[1:] {
					if c.SecurityContext.Capabilities == nil || len(c.SecurityContext.Capabilities.Add) != 0 || *c.SecurityContext.RunAsUser == AgentUID || *c.SecurityContext.RunAsUser == RouterUID {
						t.Errorf("init container %s: %+v", c.Name, c.SecurityContext)
					}
				}
				// Isolation.
				sp := sc.SeccompProfile
				switch iso {
				case karsv1.IsolationStandard:
					if sp.Type != corev1.SeccompProfileTypeRuntimeDefault || pod.RuntimeClassName != nil {
						t.Errorf("standard: seccomp %v runtimeClass %v", sp.Type, pod.RuntimeClassName)
					}
				case karsv1.IsolationEnhanced, karsv1.IsolationConfidential:
					if sp.Type != corev1.SeccompProfileTypeLocalhost || *sp.LocalhostProfile != DefaultSeccompProfile {
						t.Errorf("%s: seccomp %+v", iso, sp)
					}
					wantRC := iso == karsv1.IsolationConfidential
					if (pod.RuntimeClassName != nil) != wantRC || (wantRC && *pod.RuntimeClassName != ConfidentialRuntimeClass) {
						t.Errorf("%s: runtimeClassName %v", iso, pod.RuntimeClassName)
					}
				}
			})
		}
	}
}

func hasPort(ps []corev1.ContainerPort, p int32) bool {
	return slices.ContainsFunc(ps, func(c corev1.ContainerPort) bool { return c.ContainerPort == p })
}

func envOf(c *corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		m[e.Name] = e.Value
	}
	return m
}

// Every runtime's SDK is pointed at the router on loopback and gets the
// contract variables.
func TestRuntimeEnvironmentPointsAtRouter(t *testing.T) {
	for _, kind := range runnableKinds {
		out, err := Render(input(sandbox(kind, karsv1.IsolationEnhanced)))
		if err != nil {
			t.Fatal(kind, err)
		}
		env := envOf(&out.Deployment.Spec.Template.Spec.Containers[0])
		for k, v := range map[string]string{
			"OPENAI_BASE_URL":        "http://127.0.0.1:8443/v1",
			"AZURE_OPENAI_ENDPOINT":  "http://127.0.0.1:8443",
			"ANTHROPIC_BASE_URL":     "http://127.0.0.1:8443",
			"KARS_ROUTER_URL":        "http://127.0.0.1:8443",
			"KARS_CONTRACT_VERSION":  "v1",
			"KARS_SANDBOX_NAME":      "agent",
			"KARS_SANDBOX_NAMESPACE": "kars-agent",
			"KARS_RUNTIME_KIND":      string(kind),
			"KARS_WORKSPACE":         "/sandbox",
		} {
			if env[k] != v {
				t.Errorf("%s: %s=%q, want %q", kind, k, env[k], v)
			}
		}
		if _, ok := env["KARS_MODEL"]; ok {
			t.Errorf("%s: the model is in the pod template, so `kars model set` would restart the pod", kind)
		}
	}
}

func TestRuntimeCatalog(t *testing.T) {
	t.Run("byo runs the verified digest with its command", func(t *testing.T) {
		in := input(sandbox(karsv1.RuntimeBYO, karsv1.IsolationEnhanced))
		out, err := Render(in)
		if err != nil {
			t.Fatal(err)
		}
		c := out.Deployment.Spec.Template.Spec.Containers[0]
		if c.Image != in.BYOImage || !slices.Equal(c.Command, []string{"/app/agent"}) || !slices.Equal(c.Args, []string{"--mode", "production"}) {
			t.Errorf("byo container: image %s command %v args %v", c.Image, c.Command, c.Args)
		}
	})
	t.Run("openclaw image override", func(t *testing.T) {
		sb := sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationEnhanced)
		sb.Spec.Runtime.OpenClaw.Image = "mirror.example/openclaw:9"
		out, err := Render(input(sb))
		if err != nil || out.Deployment.Spec.Template.Spec.Containers[0].Image != "mirror.example/openclaw:9" {
			t.Fatalf("override ignored: %v", err)
		}
	})
	t.Run("registry prefix", func(t *testing.T) {
		in := input(sandbox(karsv1.RuntimePydanticAi, karsv1.IsolationEnhanced))
		in.Env.Catalog.Registry = "registry.internal:5000/kars/"
		out, err := Render(in)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range append(out.Deployment.Spec.Template.Spec.InitContainers, out.Deployment.Spec.Template.Spec.Containers...) {
			if !strings.HasPrefix(c.Image, "registry.internal:5000/kars/kars-") || strings.Contains(c.Image, "//") {
				t.Errorf("%s image %s ignores the registry", c.Name, c.Image)
			}
		}
	})
	for _, c := range []struct {
		name   string
		mutate func(*karsv1.KarsSandbox)
		kind   karsv1.RuntimeKind
		reason string
	}{
		{"semantic kernel has no adapter", nil, karsv1.RuntimeSemanticKernel, ReasonAdapterMissing},
		{"maf dotnet", func(sb *karsv1.KarsSandbox) { sb.Spec.Runtime.MicrosoftAgentFramework.Language = "dotnet" }, karsv1.RuntimeMicrosoftAgentFramework, ReasonShapeInvalid},
		{"reserved env prefix", func(sb *karsv1.KarsSandbox) {
			sb.Spec.Runtime.Env = []karsv1.RuntimeEnvVar{{Name: "AZURE_CLIENT_SECRET", Value: "x"}}
		}, karsv1.RuntimeOpenClaw, ReasonInvalidSpec},
		{"overriding the router URL", func(sb *karsv1.KarsSandbox) {
			sb.Spec.Runtime.Env = []karsv1.RuntimeEnvVar{{Name: "OPENAI_BASE_URL", Value: "https://api.openai.com/v1"}}
		}, karsv1.RuntimeOpenAIAgents, ReasonInvalidSpec},
		{"name too long for a Service", func(sb *karsv1.KarsSandbox) { sb.Name = strings.Repeat("a", 60) }, karsv1.RuntimeOpenClaw, ReasonInvalidSpec},
		{"dotted name", func(sb *karsv1.KarsSandbox) { sb.Name = "a.b" }, karsv1.RuntimeOpenClaw, ReasonInvalidSpec},
	} {
		t.Run(c.name, func(t *testing.T) {
			sb := sandbox(c.kind, karsv1.IsolationEnhanced)
			if c.mutate != nil {
				c.mutate(sb)
			}
			out, err := Render(input(sb))
			if ReasonOf(err) != c.reason || out != nil {
				t.Fatalf("got %v (reason %q), want reason %s and nothing rendered", err, ReasonOf(err), c.reason)
			}
		})
	}
	t.Run("user env passes through", func(t *testing.T) {
		sb := sandbox(karsv1.RuntimeLangGraph, karsv1.IsolationEnhanced)
		sb.Spec.Runtime.Env = []karsv1.RuntimeEnvVar{{Name: "LOG_LEVEL", Value: "debug"}}
		out, err := Render(input(sb))
		if err != nil || envOf(&out.Deployment.Spec.Template.Spec.Containers[0])["LOG_LEVEL"] != "debug" {
			t.Fatalf("user env lost: %v", err)
		}
	})
}

func TestSuspendedScalesToZero(t *testing.T) {
	sb := sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationEnhanced)
	sb.Spec.Suspended = true
	out, err := Render(input(sb))
	if err != nil || *out.Deployment.Spec.Replicas != 0 {
		t.Fatalf("suspended sandbox: %v replicas %v", err, out.Deployment.Spec.Replicas)
	}
	sb.Spec.Suspended = false
	out, _ = Render(input(sb))
	if *out.Deployment.Spec.Replicas != 1 {
		t.Fatal("resumed sandbox not scaled to one")
	}
}

// The projected token exists only when a target uses workload identity, and
// only the router mounts it, with the Entra exchange audience.
func TestWorkloadIdentityTokenOnlyWhenNeeded(t *testing.T) {
	in := input(sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationEnhanced))
	out, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	var aud string
	for _, v := range out.Deployment.Spec.Template.Spec.Volumes {
		if v.Projected != nil {
			aud = v.Projected.Sources[0].ServiceAccountToken.Audience
		}
	}
	if aud != WorkloadIdentityAudience {
		t.Errorf("projected token audience %q", aud)
	}
	if got := out.Config.Models.Primary.Auth.FederatedTokenFile; got != WorkloadIdentityTokenFile {
		t.Errorf("router config token file %q", got)
	}
	if got := out.Config.Models.Fallbacks[0].Auth.KeyFile; got != "/var/run/secrets/kars/providers/openai/api-key" {
		t.Errorf("API key file %q", got)
	}
	in.Inference = offlinePolicy()
	out, err = Render(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range out.Deployment.Spec.Template.Spec.Volumes {
		if v.Projected != nil || (v.Secret != nil && v.Name != volRouterAdmin) {
			t.Errorf("offline policy still renders credential volume %s", v.Name)
		}
	}
}

func TestNetworkPolicy(t *testing.T) {
	in := input(sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationEnhanced))
	out, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	np := out.NetworkPolicy.Spec
	if len(np.PolicyTypes) != 2 {
		t.Fatalf("policy types %v, want Ingress and Egress", np.PolicyTypes)
	}
	if from := np.Ingress[0].From[0].NamespaceSelector.MatchLabels[corev1.LabelMetadataName]; from != "kars-system" || len(np.Ingress) != 1 {
		t.Errorf("ingress from %q", from)
	}
	var ports []int32
	var metadataExcluded bool
	for _, r := range np.Egress {
		for _, p := range r.To {
			if p.IPBlock != nil && p.IPBlock.CIDR == "0.0.0.0/0" {
				metadataExcluded = slices.Contains(p.IPBlock.Except, metadataCIDR)
				for _, pp := range r.Ports {
					ports = append(ports, pp.Port.IntVal)
				}
			}
			if p.IPBlock != nil && p.IPBlock.CIDR == metadataCIDR {
				t.Error("metadata endpoint allowed without a managed identity")
			}
		}
	}
	// 443: Azure endpoint and public OpenAI; 8443: the ToolPolicy's egress rule.
	if !slices.Equal(ports, []int32{443, 8443}) || !metadataExcluded {
		t.Errorf("external egress ports %v (metadata excluded: %v), want [443 8443] without 169.254.169.254", ports, metadataExcluded)
	}

	in.Inference.Spec.ModelPreference.Fallbacks = nil
	in.Inference.Spec.ModelPreference.Primary.Auth = &karsv1.ProviderAuth{Mode: karsv1.AuthManagedIdentity}
	out, _ = Render(in)
	last := out.NetworkPolicy.Spec.Egress[len(out.NetworkPolicy.Spec.Egress)-1]
	if last.To[0].IPBlock == nil || last.To[0].IPBlock.CIDR != metadataCIDR || last.Ports[0].Port.IntVal != 80 {
		t.Errorf("managed identity: no IMDS egress rule: %+v", last)
	}

	in.Inference, in.Tools = offlinePolicy(), nil
	out, _ = Render(in)
	for _, r := range out.NetworkPolicy.Spec.Egress {
		for _, p := range r.To {
			if p.IPBlock != nil && p.IPBlock.CIDR == "0.0.0.0/0" {
				t.Error("offline sandbox may reach the internet")
			}
		}
	}
}

func TestA2AExposureWindow(t *testing.T) {
	sb := sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationEnhanced)
	sb.Spec.A2A = exposure(testNow.Add(time.Hour))
	in := input(sb)
	in.A2A = &A2AInput{GatewayPins: []string{testPin}}
	in.Env.A2AGateway.PublicURL = "https://a2a.example.com"
	out, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	if !out.A2AExposed || len(out.Service.Spec.Ports) != 2 || len(out.NetworkPolicy.Spec.Ingress) != 2 || out.Config.A2A == nil {
		t.Fatalf("open window: exposed=%v service ports %v", out.A2AExposed, out.Service.Spec.Ports)
	}
	in.Now = testNow.Add(2 * time.Hour)
	out, _ = Render(in)
	if out.A2AExposed || len(out.Service.Spec.Ports) != 1 || len(out.NetworkPolicy.Spec.Ingress) != 1 || out.Config.A2A != nil {
		t.Fatalf("expired window still exposed: %v", out.Service.Spec.Ports)
	}
	if out.Service.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Error("router Service is not headless")
	}
}

// The controller's digest must be the digest the router computes after
// reading the ConfigMap back, or the RouterEnforcing handshake never
// completes.
func TestRouterConfigDigestRoundTrips(t *testing.T) {
	for _, kind := range runnableKinds {
		out, err := Render(input(sandbox(kind, karsv1.IsolationEnhanced)))
		if err != nil {
			t.Fatal(err)
		}
		snap, err := routerconfig.Parse([]byte(out.RouterConfig.Data[routerconfig.FileName]))
		if err != nil {
			t.Fatalf("router refuses the rendered config: %v", err)
		}
		if snap.Digest != out.ConfigDigest || out.RouterConfig.Annotations[AnnotationConfigDigest] != out.ConfigDigest {
			t.Fatalf("digest: router %s, controller %s", snap.Digest, out.ConfigDigest)
		}
	}
}

func TestRouterConfigFromPolicies(t *testing.T) {
	sb := sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationEnhanced)
	c, err := RouterConfig(sb, inferencePolicy(), toolPolicy(), nil, Bindings{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Sandbox.AgentID != "kars-agent/agent" || c.Models.Primary.Deployment != "gpt-41" || c.Budget.Daily != 100000 || c.RateLimit.RPM != 60 {
		t.Errorf("config: %+v", c)
	}
	g := c.Governance
	if g == nil || len(g.Rules) != 3 || g.Rules[1].RateLimit.Requests != 30 || g.Rules[2].Conditions[0].Message != "no shell in this sandbox" ||
		g.RateLimit.Burst != 20 || g.Approval.Mode != "never" {
		t.Errorf("governance: %+v", g)
	}

	t.Run("foundry deployment defaults to the model", func(t *testing.T) {
		ip := offlinePolicy()
		ip.Spec.ModelPreference.Primary = karsv1.ModelTarget{Provider: karsv1.ProviderAzureAIFoundry, Model: "gpt-4.1", Endpoint: "https://x.services.ai.azure.com"}
		c, err := RouterConfig(sb, ip, nil, nil, Bindings{})
		if err != nil || c.Models.Primary.Deployment != "gpt-4.1" || c.Governance != nil {
			t.Fatalf("%v %+v", err, c)
		}
	})
	t.Run("invalid CEL is PolicyInvalid", func(t *testing.T) {
		tp := toolPolicy()
		tp.Spec.Rules[2].Conditions[0].Expression = "args.("
		_, err := RouterConfig(sb, inferencePolicy(), tp, nil, Bindings{})
		if ReasonOf(err) != ReasonPolicyInvalid {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("appliesTo", func(t *testing.T) {
		tp := toolPolicy()
		tp.Spec.AppliesTo.Sandboxes = []string{"someone-else"}
		if _, err := RouterConfig(sb, inferencePolicy(), tp, nil, Bindings{}); ReasonOf(err) != ReasonToolPolicyNotApplicable {
			t.Fatalf("got %v", err)
		}
		tp.Spec.AppliesTo.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"team": "research"}}
		sb.Labels = map[string]string{"team": "research"}
		if _, err := RouterConfig(sb, inferencePolicy(), tp, nil, Bindings{}); err != nil {
			t.Fatalf("selector match refused: %v", err)
		}
	})
}

func TestRenderIsDeterministic(t *testing.T) {
	for _, kind := range runnableKinds {
		a, err1 := Render(input(sandbox(kind, karsv1.IsolationConfidential)))
		b, err2 := Render(input(sandbox(kind, karsv1.IsolationConfidential)))
		if err1 != nil || err2 != nil || !reflect.DeepEqual(a, b) {
			t.Fatalf("%s: two renderings differ", kind)
		}
	}
}

func TestBehaviorMonitorIsAlwaysOn(t *testing.T) {
	sb := sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationEnhanced)
	c, err := RouterConfig(sb, inferencePolicy(), nil, nil, Bindings{})
	if err != nil {
		t.Fatal(err)
	}
	if b := c.Behavior; b == nil || b.MaxCallsPerMinute != 600 || b.MaxDenialsPerMinute != 20 || b.Quarantine {
		t.Fatalf("default behaviour monitor = %+v, want alerting at 600 calls / 20 denials a minute without quarantine", b)
	}
	sb.Spec.Governance.Behavior = &karsv1.BehaviorMonitor{MaxDenialsPerMinute: 3, Quarantine: true}
	c, err = RouterConfig(sb, inferencePolicy(), nil, nil, Bindings{})
	if err != nil {
		t.Fatal(err)
	}
	if b := c.Behavior; b.MaxCallsPerMinute != 600 || b.MaxDenialsPerMinute != 3 || !b.Quarantine {
		t.Fatalf("tuned behaviour monitor = %+v", b)
	}
}

// The router learns its container's memory limit from the downward API, in
// the variable kars-router reads.
func TestRouterGetsItsMemoryLimit(t *testing.T) {
	d, err := Render(input(sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationEnhanced)))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range d.Deployment.Spec.Template.Spec.Containers {
		if c.Name != ContainerRouter {
			continue
		}
		for _, e := range c.Env {
			if e.Name == router.EnvMemoryLimit && e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil &&
				e.ValueFrom.ResourceFieldRef.Resource == "limits.memory" && e.ValueFrom.ResourceFieldRef.ContainerName == ContainerRouter {
				return
			}
		}
		t.Fatalf("router env %+v lacks %s from limits.memory", c.Env, router.EnvMemoryLimit)
	}
	t.Fatal("no router container")
}
