package render

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

var testPin = "sha256:" + strings.Repeat("ab", 32)

func exposure(expires time.Time) karsv1.A2AExposure {
	min := karsv1.TrustScore(700)
	return karsv1.A2AExposure{
		Enabled:           true,
		ExpiresAt:         &metav1.Time{Time: expires},
		AllowedCallers:    []karsv1.A2ACaller{{JWSThumbprint: karsv1.Digest("sha256:" + strings.Repeat("cd", 32)), DisplayName: "partner-planner"}},
		AdvertisedSkills:  []karsv1.A2ASkill{{Name: "search.web", Description: "Web search"}},
		MinimumTrustScore: &min,
		RateLimit:         &karsv1.RequestRateLimit{RPM: 30, Burst: 5},
		BodyCapBytes:      1 << 20, SessionMaxSeconds: 60,
	}
}

// TestA2AExposureRendered: an exposed sandbox's router config carries the
// a2a section; its A2A port admits the gateway's pods only; nothing is
// exposed without the controller's go-ahead.
func TestA2AExposureRendered(t *testing.T) {
	sb := sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationEnhanced)
	sb.Spec.A2A = exposure(testNow.Add(24 * time.Hour))
	in := input(sb)
	out, err := Render(in)
	if err != nil || out.A2AExposed || out.Config.A2A != nil {
		t.Fatalf("exposed without the controller's go-ahead: %v", err)
	}
	in.A2A = &A2AInput{GatewayPins: []string{testPin}}
	in.Env.A2AGateway.PublicURL = "https://a2a.example.com"
	out, err = Render(in)
	if err != nil {
		t.Fatal(err)
	}
	a := out.Config.A2A
	if a == nil || a.PublicURL != "https://a2a.example.com/a2a/"+sb.Namespace+"/"+sb.Name || a.MinimumTrustScore != 700 ||
		a.RateLimit.RPM != 30 || a.Callers[0].Thumbprint != "sha256:"+strings.Repeat("cd", 32) || a.GatewayPins[0] != testPin ||
		a.AgentURL != "http://127.0.0.1:18789" || !a.ExpiresAt.Equal(testNow.Add(24*time.Hour).Truncate(time.Second)) {
		t.Fatalf("a2a section %+v", a)
	}
	rule := out.NetworkPolicy.Spec.Ingress[1]
	if len(rule.Ports) != 1 || rule.Ports[0].Port.IntVal != RouterA2APort || rule.From[0].PodSelector == nil ||
		rule.From[0].PodSelector.MatchLabels["app.kubernetes.io/name"] != "kars-a2a-gateway" {
		t.Fatalf("a2a ingress rule %+v", rule)
	}
	if admin := out.NetworkPolicy.Spec.Ingress[0]; len(admin.Ports) != 1 || admin.Ports[0].Port.IntVal != RouterAdminPort {
		t.Fatalf("admin rule %+v", admin)
	}
	cnp, err := CiliumNetworkPolicy(sb, in.Env)
	if err != nil {
		t.Fatal(err)
	}
	spec := cnp.Object["spec"].(map[string]any)
	from := spec["ingress"].([]any)[0].(map[string]any)["fromEndpoints"].([]any)[0].(map[string]any)["matchLabels"].(map[string]any)
	if cnp.GetKind() != "CiliumNetworkPolicy" || from["k8s:io.cilium.k8s.policy.serviceaccount"] != "kars-a2a-gateway" ||
		from["k8s:io.kubernetes.pod.namespace"] != in.Env.SystemNamespace || len(cnp.GetOwnerReferences()) != 1 {
		t.Fatalf("cnp %+v", cnp.Object)
	}
}
