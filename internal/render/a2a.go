package render

import (
	"path"
	"strconv"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/routerconfig"
)

// A2AGateway describes the installation's kars-a2a-gateway.
type A2AGateway struct {
	// PublicURL is the gateway's public base URL
	// (https://a2a.example.com); a sandbox is published at
	// <PublicURL>/a2a/<namespace>/<name>. Empty: A2A exposure is not
	// available in this installation.
	PublicURL string
	// PodLabels select the gateway's pods in the system namespace: the
	// only peers the NetworkPolicy lets reach an exposed router's A2A
	// port. Empty means DefaultA2AGatewayLabels.
	PodLabels map[string]string
	// ServiceAccount is the gateway's, which a CiliumNetworkPolicy pins
	// the A2A port to; empty means DefaultA2AGatewayServiceAccount.
	ServiceAccount string
}

// Defaults of A2AGateway.
const DefaultA2AGatewayServiceAccount = "kars-a2a-gateway"

// DefaultA2AGatewayLabels are the gateway pods' labels.
var DefaultA2AGatewayLabels = map[string]string{"app.kubernetes.io/name": "kars-a2a-gateway"}

func (g A2AGateway) podLabels() map[string]string {
	if len(g.PodLabels) > 0 {
		return g.PodLabels
	}
	return DefaultA2AGatewayLabels
}

func (g A2AGateway) serviceAccount() string {
	if g.ServiceAccount != "" {
		return g.ServiceAccount
	}
	return DefaultA2AGatewayServiceAccount
}

// A2AInput is the controller's go-ahead for an exposure: set only when
// spec.a2a is enabled, its window is at most 30 days and the gateway is
// configured. Render still checks the window against Input.Now.
type A2AInput struct {
	// GatewayPins are the SPKI pins of the gateway's client
	// certificates, which the router requires on its A2A port.
	GatewayPins []string
}

// Defaults the router applies when the sandbox leaves them out (the CRD
// defaults them too; these cover objects stored before the defaults).
const (
	defaultA2ABodyCap      = 1 << 20
	defaultA2ASessionMax   = 60
	defaultA2AMinimumTrust = 500
)

// A2APath is a sandbox's path at the gateway.
func A2APath(sb *karsv1.KarsSandbox) string { return "/a2a/" + sb.Namespace + "/" + sb.Name }

// a2aSection is the router config's a2a section for an exposed sandbox.
func a2aSection(in Input, rt *Runtime) *routerconfig.A2A {
	sb, a := in.Sandbox, in.Sandbox.Spec.A2A
	out := &routerconfig.A2A{
		TLSCertFile:       path.Join(RouterAdminDir, AdminCertKey),
		TLSKeyFile:        path.Join(RouterAdminDir, AdminKeyKey),
		GatewayPins:       in.A2A.GatewayPins,
		PublicURL:         in.Env.A2AGateway.PublicURL + A2APath(sb),
		AgentURL:          "http://127.0.0.1:" + strconv.Itoa(int(rt.Port)),
		ExpiresAt:         a.ExpiresAt.UTC().Truncate(time.Second),
		MinimumTrustScore: defaultA2AMinimumTrust,
		BodyCapBytes:      a.BodyCapBytes,
		SessionMaxSeconds: int(a.SessionMaxSeconds),
		AllowStreaming:    a.AllowStreaming,
	}
	if a.MinimumTrustScore != nil {
		out.MinimumTrustScore = int(*a.MinimumTrustScore)
	}
	if out.BodyCapBytes == 0 {
		out.BodyCapBytes = defaultA2ABodyCap
	}
	if out.SessionMaxSeconds == 0 {
		out.SessionMaxSeconds = defaultA2ASessionMax
	}
	if rl := a.RateLimit; rl != nil {
		out.RateLimit = routerconfig.A2ARateLimit{RPM: int(rl.RPM), Burst: int(rl.Burst)}
	}
	for _, c := range a.AllowedCallers {
		out.Callers = append(out.Callers, routerconfig.A2ACaller{Thumbprint: string(c.JWSThumbprint), DisplayName: c.DisplayName, Issuer: c.Issuer})
	}
	for _, s := range a.AdvertisedSkills {
		out.Skills = append(out.Skills, routerconfig.A2ASkill{Name: s.Name, Description: s.Description})
	}
	return out
}

// CiliumNetworkPolicy of an exposed sandbox: the A2A port admits only
// endpoints running as the gateway's ServiceAccount in the system
// namespace. Rendered (and applied by the controller) only when the
// cilium.io CRD is installed; the NetworkPolicy says the same by pod
// labels on every cluster.
func CiliumNetworkPolicy(sb *karsv1.KarsSandbox, env Environment) (*unstructured.Unstructured, error) {
	names, err := NamesFor(sb)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("cilium.io/v2")
	u.SetKind("CiliumNetworkPolicy")
	m := meta(sb, names.Workload+"-a2a", "network")
	u.SetName(m.Name)
	u.SetNamespace(m.Namespace)
	u.SetLabels(m.Labels)
	u.SetOwnerReferences(m.OwnerReferences)
	sel := map[string]any{}
	for k, v := range Selector(sb) {
		sel[k] = v
	}
	u.Object["spec"] = map[string]any{
		"endpointSelector": map[string]any{"matchLabels": sel},
		"ingress": []any{map[string]any{
			"fromEndpoints": []any{map[string]any{"matchLabels": map[string]any{
				"k8s:io.kubernetes.pod.namespace":         env.SystemNamespace,
				"k8s:io.cilium.k8s.policy.serviceaccount": env.A2AGateway.serviceAccount(),
			}}},
			"toPorts": []any{map[string]any{"ports": []any{map[string]any{"port": strconv.Itoa(int(RouterA2APort)), "protocol": "TCP"}}}},
		}},
	}
	return u, nil
}
