package controller

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/a2a/routes"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/routerconfig"
)

var partnerThumbprint = "sha256:" + strings.Repeat("ab12", 16)

// seedPatch is scenario 5's patch payload (use-cases.md, "Enable inbound
// A2A"), with a well-formed thumbprint in place of the elided one.
func seedPatch(expiresAt string) []byte {
	return []byte(`{
    "spec": {
      "a2a": {
        "enabled": true,
        "allowedCallers": [
          {
            "jwsThumbprint": "` + partnerThumbprint + `",
            "displayName": "partner-planner",
            "issuer": "https://partner.example.com/.well-known/agent.json"
          }
        ],
        "expiresAt": "` + expiresAt + `",
        "advertisedSkills": [
          {"name": "search.web", "description": "Web search via Bing grounding"},
          {"name": "summarize.text", "description": "Summarise documents"}
        ],
        "minimumTrustScore": 700,
        "rateLimit": {"rpm": 30, "burst": 5},
        "bodyCapBytes": 1048576,
        "sessionMaxSeconds": 60
      }
    }
  }`)
}

func routeTable(t *testing.T) *routes.Table {
	t.Helper()
	var cm corev1.ConfigMap
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: "kars-system", Name: routes.ConfigMapName}, &cm); err != nil {
		return &routes.Table{}
	}
	tab, err := routes.Parse([]byte(cm.Data[routes.Key]))
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

func routed(t *testing.T, sb *karsv1.KarsSandbox) (*routes.Route, bool) {
	return routeTable(t).Lookup(sb.Namespace+"/"+sb.Name, time.Now())
}

// TestA2AExposureLifecycle follows scenario 5 against the real API server:
// the seed's patch applies with server-side dry run (changing nothing) and
// for real; an open window renders the router's a2a section, the A2A port
// for the gateway's pods only and the gateway's route; disabling removes
// them; a window beyond 30 days is refused with a clear condition.
func TestA2AExposureLifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the control plane")
	}
	ctx := context.Background()
	installCiliumPolicyCRD(t)
	ns := newNamespace(t, "kars-research-bot")
	sb := minimalSandbox(ns, "research-bot", karsv1.RuntimeOpenClaw)
	withPolicies(t, sb)
	create(t, sb)
	waitRendered(t, sb)
	markDeploymentReady(t, sb)
	waitCondition(t, sb, karsv1.ConditionA2AExposed, metav1.ConditionFalse, ReasonA2ADisabled)

	// The seed's payload: dry run first, then for real. Its expiresAt
	// (2026-05-30) has passed, so the controller reports Expired.
	if err := k8s.Patch(ctx, sb, client.RawPatch(types.MergePatchType, seedPatch("2026-05-30T00:00:00Z")), client.DryRunAll); err != nil {
		t.Fatalf("seed patch, --dry-run=server: %v", err)
	}
	var cur karsv1.KarsSandbox
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(sb), &cur); err != nil || cur.Spec.A2A.Enabled {
		t.Fatalf("the dry run changed the sandbox: %v", err)
	}
	if err := k8s.Patch(ctx, sb, client.RawPatch(types.MergePatchType, seedPatch("2026-05-30T00:00:00Z"))); err != nil {
		t.Fatalf("seed patch: %v", err)
	}
	if time.Now().Before(time.Date(2026, 5, 30, 0, 0, 0, 0, time.UTC)) {
		t.Skip("the seed's window has not passed yet on this clock")
	}
	waitCondition(t, sb, karsv1.ConditionA2AExposed, metav1.ConditionFalse, ReasonA2AExpired)

	// A window a week ahead exposes the sandbox.
	expires := time.Now().Add(7 * 24 * time.Hour).UTC().Truncate(time.Second)
	if err := k8s.Patch(ctx, sb, client.RawPatch(types.MergePatchType, seedPatch(expires.Format(time.RFC3339)))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the router's A2A port in the pod template", func() error {
		r := observe(t, sb)
		for _, c := range r.deploy.Spec.Template.Spec.Containers {
			for _, p := range c.Ports {
				if p.ContainerPort == render.RouterA2APort {
					return nil
				}
			}
		}
		return errNotYet
	})
	markDeploymentReady(t, sb)
	got := waitCondition(t, sb, karsv1.ConditionA2AExposed, metav1.ConditionTrue, ReasonA2AExposed)
	if got.Status.A2AExpiresAt == nil || !got.Status.A2AExpiresAt.Time.Equal(expires) {
		t.Fatalf("status.a2aExpiresAt %v, want %v", got.Status.A2AExpiresAt, expires)
	}
	r := observe(t, sb)
	var cfg routerconfig.Config
	if err := json.Unmarshal([]byte(r.config.Data[routerconfig.FileName]), &cfg); err != nil {
		t.Fatal(err)
	}
	if a := cfg.A2A; a == nil || a.PublicURL != "https://a2a.kars.test/a2a/"+ns+"/research-bot" || len(a.GatewayPins) != 1 ||
		a.MinimumTrustScore != 700 || a.Callers[0].Thumbprint != partnerThumbprint || len(a.Skills) != 2 {
		t.Fatalf("router a2a section %+v", cfg.A2A)
	}
	if len(r.netpol.Spec.Ingress) != 2 || r.netpol.Spec.Ingress[1].Ports[0].Port.IntVal != render.RouterA2APort ||
		r.netpol.Spec.Ingress[1].From[0].PodSelector == nil {
		t.Fatalf("network policy ingress %+v", r.netpol.Spec.Ingress)
	}
	// On a cluster with Cilium's CRD, the A2A port is also pinned to the
	// gateway's ServiceAccount.
	cnp := &unstructured.Unstructured{}
	cnp.SetGroupVersionKind(ciliumPolicyGVK)
	eventually(t, 20*time.Second, "the CiliumNetworkPolicy", func() error {
		return k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "research-bot-a2a"}, cnp)
	})
	if !strings.Contains(fmt.Sprint(cnp.Object["spec"]), "k8s:io.cilium.k8s.policy.serviceaccount:kars-a2a-gateway") {
		t.Fatalf("cnp spec %v", cnp.Object["spec"])
	}
	var route *routes.Route
	eventually(t, 10*time.Second, "the gateway route", func() error {
		var ok bool
		if route, ok = routed(t, sb); !ok {
			return errorf("no route in %+v", routeTable(t))
		}
		return nil
	})
	if route.Router != "research-bot-router."+ns+".svc:8445" || route.RouterCertPEM != string(r.admin.Data[render.AdminCertKey]) ||
		!route.Allows(partnerThumbprint) || route.MinimumTrustScore != 700 || route.RateLimit.RPM != 30 {
		t.Fatalf("route %+v", route)
	}

	// The sandbox namespace takes no Ingress, LoadBalancer or NodePort
	// Service, nor a NetworkPolicy admitting an IP block; a ClusterIP
	// Service is fine.
	lb := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "public"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Port: 8445}}}}
	eventually(t, 10*time.Second, "admission policy in force", func() error {
		if err := k8s.Create(ctx, lb.DeepCopy(), client.DryRunAll); err == nil || !strings.Contains(err.Error(), "only public A2A endpoint") {
			return errorf("LoadBalancer Service: %v", err)
		}
		return nil
	})
	np := lb.DeepCopy()
	np.Spec.Type = corev1.ServiceTypeNodePort
	tcp := corev1.ProtocolTCP
	for name, obj := range map[string]client.Object{
		"NodePort Service": np,
		"Ingress": &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "in"},
			Spec: networkingv1.IngressSpec{DefaultBackend: &networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "x", Port: networkingv1.ServiceBackendPort{Number: 80}}}}},
		"ipBlock NetworkPolicy": &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "open"},
			Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0"}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: ptrTo(intstr.FromInt32(8445))}}}}}},
	} {
		if err := k8s.Create(ctx, obj, client.DryRunAll); err == nil || !strings.Contains(err.Error(), "kars sandbox namespaces") {
			t.Errorf("%s admitted: %v", name, err)
		}
	}
	if err := k8s.Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "internal"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}, client.DryRunAll); err != nil {
		t.Errorf("ClusterIP Service refused: %v", err)
	}

	// Revocation: enabled false drops the route, the port and the section.
	start := time.Now()
	if err := k8s.Patch(ctx, sb, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"a2a":{"enabled":false}}}`))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "route removed", func() error {
		if _, ok := routed(t, sb); ok {
			return errNotYet
		}
		return nil
	})
	t.Logf("route removed %s after the patch", time.Since(start).Round(time.Millisecond))
	waitCondition(t, sb, karsv1.ConditionA2AExposed, metav1.ConditionFalse, ReasonA2ADisabled)
	eventually(t, 10*time.Second, "the CiliumNetworkPolicy removed", func() error {
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "research-bot-a2a"}, cnp); !apierrors.IsNotFound(err) {
			return errorf("still there (%v)", err)
		}
		return nil
	})
	eventually(t, 10*time.Second, "exposure rendered away", func() error {
		r := observe(t, sb)
		if len(r.netpol.Spec.Ingress) != 1 || len(r.svc.Spec.Ports) != 1 || strings.Contains(r.config.Data[routerconfig.FileName], `"a2a"`) {
			return errorf("still exposed: %d ingress rules, %d ports", len(r.netpol.Spec.Ingress), len(r.svc.Spec.Ports))
		}
		return nil
	})

	// 31 days ahead is refused, and stays refused while the spec stands.
	far := time.Now().Add(31 * 24 * time.Hour).UTC().Format(time.RFC3339)
	if err := k8s.Patch(ctx, sb, client.RawPatch(types.MergePatchType, seedPatch(far))); err != nil {
		t.Fatal(err)
	}
	refused := waitCondition(t, sb, karsv1.ConditionA2AExposed, metav1.ConditionFalse, ReasonA2AExpiryTooFar)
	if c := meta.FindStatusCondition(refused.Status.Conditions, karsv1.ConditionA2AExposed); !strings.Contains(c.Message, "capped at 30 days") {
		t.Fatalf("condition message %q", c.Message)
	}
	time.Sleep(time.Second)
	if _, ok := routed(t, sb); ok {
		t.Fatal("a 31-day window was routed")
	}
}

// installCiliumPolicyCRD installs a minimal CiliumNetworkPolicy CRD (the
// kind only, schema open), as a Cilium cluster has it.
func installCiliumPolicyCRD(t *testing.T) {
	t.Helper()
	crd := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": "ciliumnetworkpolicies.cilium.io"},
		"spec": map[string]any{
			"group": "cilium.io", "scope": "Namespaced",
			"names": map[string]any{"kind": "CiliumNetworkPolicy", "plural": "ciliumnetworkpolicies", "singular": "ciliumnetworkpolicy", "listKind": "CiliumNetworkPolicyList"},
			"versions": []any{map[string]any{"name": "v2", "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
		},
	}}
	if err := k8s.Create(context.Background(), crd); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the CiliumNetworkPolicy CRD served", func() error {
		l := &unstructured.UnstructuredList{}
		l.SetGroupVersionKind(ciliumPolicyGVK.GroupVersion().WithKind("CiliumNetworkPolicyList"))
		return k8s.List(context.Background(), l)
	})
}
