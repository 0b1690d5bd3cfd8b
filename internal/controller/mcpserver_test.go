package controller

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/routerconfig"
)

// An McpServer with a url: its endpoint reaches the router config of each
// sandbox it lists (and only those), and its tools are what the routers'
// gateways discovered.
func TestMcpServerRemote(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "mcp-remote")
	sb := minimalSandbox(ns, "bot", karsv1.RuntimeOpenClaw)
	other := minimalSandbox(ns, "other", karsv1.RuntimeOpenClaw)
	withPolicies(t, sb)
	withPolicies(t, other)
	create(t, sb, other)
	waitRendered(t, sb)
	router := startRouter(t, sb)
	markDeploymentReady(t, sb)
	waitCondition(t, sb, karsv1.ConditionReady, metav1.ConditionTrue, ReasonReady)

	m := &karsv1.McpServer{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "github"},
		Spec: karsv1.McpServerSpec{URL: "https://mcp.github.example/mcp", Sandboxes: []string{"bot"}, Tools: []string{"search_issues"},
			AuthSecretRef: &karsv1.SecretKeyReference{Name: "github-mcp", Key: "token"}}}
	create(t, m)
	var cfg *routerconfig.Snapshot
	eventually(t, 20*time.Second, "the MCP server in the router config", func() error {
		names, _ := render.NamesFor(sb)
		var cm corev1.ConfigMap
		get(t, ns, names.RouterConfig, &cm)
		snap, err := routerconfig.Parse([]byte(cm.Data[routerconfig.FileName]))
		if err != nil {
			return err
		}
		if len(snap.Config.MCP) != 1 || snap.Config.MCP[0].URL != m.Spec.URL {
			return errorf("mcp section %+v", snap.Config.MCP)
		}
		cfg = snap
		return nil
	})
	if a := cfg.Config.MCP[0].Auth; a == nil || a.TokenFile != "/var/run/secrets/kars/mcp/github-mcp/token" {
		t.Fatalf("auth %+v", a)
	}
	names, _ := render.NamesFor(other)
	var cm corev1.ConfigMap
	get(t, ns, names.RouterConfig, &cm)
	if strings.Contains(cm.Data[routerconfig.FileName], "mcp.github.example") {
		t.Fatal("a sandbox the McpServer does not list got it")
	}
	// The new Secret mount rolls the pod; the router loads the new config
	// and its gateway lists the tools.
	router.mcp.Store(&[]McpGatewayServer{{Name: "github", Tools: []string{"search_issues", "delete_repo"}, Visible: []string{"search_issues"}}})
	rollOut(t, sb, router)
	eventually(t, 60*time.Second, "discovered tools", func() error {
		// Keep playing the kubelet: a template change that lands after
		// rollOut returned (the Secret mount once the endpoint is known)
		// needs the Deployment marked ready again.
		markDeploymentReady(t, sb)
		router.reload(t, sb)
		get(t, ns, m.Name, m)
		var cur karsv1.KarsSandbox
		get(t, ns, sb.Name, &cur)
		if cur.Status.Phase != karsv1.SandboxRunning {
			return errorf("sandbox %s: %+v", cur.Status.Phase, cur.Status.Conditions)
		}
		if m.Status.Endpoint != m.Spec.URL || m.Status.Phase != "Ready" || !slices.Equal(m.Status.DiscoveredTools, []string{"delete_repo", "search_issues"}) {
			return errorf("status %+v", m.Status)
		}
		return nil
	})
	// The router cannot get its credential: the conditions say so, with
	// the router's (token-free) reason.
	router.mcp.Store(&[]McpGatewayServer{{Name: "github", Tools: []string{}, Visible: []string{}, Reason: "credential",
		Error: "no credential for MCP server github: OAuth token exchange: HTTP 400 invalid_grant: the subject token has expired"}})
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(m), m); err != nil {
		t.Fatal(err)
	}
	m.Spec.Tools = []string{"search_issues", "list_prs"} // a change, so that the server is reconciled now
	if err := k8s.Update(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the credential failure in the conditions", func() error {
		markDeploymentReady(t, sb) // the new tool list rolls the router config
		router.reload(t, sb)
		get(t, ns, m.Name, m)
		c := meta.FindStatusCondition(m.Status.Conditions, karsv1.ConditionReady)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != ReasonCredentialUnavailable || !strings.Contains(c.Message, "invalid_grant") {
			return errorf("conditions %+v", m.Status.Conditions)
		}
		return nil
	})
	// Deleting the McpServer takes it out of the router config.
	if err := k8s.Delete(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the MCP server gone from the router config", func() error {
		names, _ := render.NamesFor(sb)
		get(t, ns, names.RouterConfig, &cm)
		if strings.Contains(cm.Data[routerconfig.FileName], "mcp.github.example") {
			return errNotYet
		}
		return nil
	})
}

// An McpServer with an image runs as a hardened Deployment behind a
// Service; the endpoint is the Service's, once the pod is available.
func TestMcpServerImage(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "mcp-image")
	m := &karsv1.McpServer{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "everything"},
		Spec: karsv1.McpServerSpec{Image: "ghcr.io/example/everything:1", Command: []string{"node", "index.js"}, Args: []string{"streamableHttp"},
			Port: 3001, Sandboxes: []string{"bot"}, Tools: []string{"echo"}}}
	create(t, m)
	var d appsv1.Deployment
	eventually(t, 20*time.Second, "the server's Deployment", func() error {
		return k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "mcp-everything"}, &d)
	})
	sc := d.Spec.Template.Spec.Containers[0].SecurityContext
	if *sc.RunAsUser != render.McpServerUID || !*sc.ReadOnlyRootFilesystem || *d.Spec.Template.Spec.AutomountServiceAccountToken {
		t.Fatalf("not hardened: %+v", sc)
	}
	var svc corev1.Service
	var np networkingv1.NetworkPolicy
	get(t, ns, "mcp-everything", &svc)
	get(t, ns, "mcp-everything", &np)
	if len(np.Spec.Ingress) != 1 || np.Spec.Ingress[0].From[0].PodSelector.MatchLabels[render.LabelSandbox] != "bot" {
		t.Fatalf("network policy %+v", np.Spec)
	}
	get(t, ns, m.Name, m)
	if m.Status.Phase != "Pending" {
		t.Fatalf("phase before the pod is available: %+v", m.Status)
	}
	mutateStatus(t, client.ObjectKeyFromObject(&d), &appsv1.Deployment{}, func(d *appsv1.Deployment) {
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, ReadyReplicas: 1, AvailableReplicas: 1, UpdatedReplicas: 1}
	})
	eventually(t, 20*time.Second, "endpoint", func() error {
		get(t, ns, m.Name, m)
		if m.Status.Endpoint != "http://mcp-everything."+ns+".svc:3001/mcp" {
			return errorf("status %+v", m.Status)
		}
		return nil
	})
}
