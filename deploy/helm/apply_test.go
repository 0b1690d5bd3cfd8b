package helm

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/testenv"
)

const ns = "kars-system"

// applyRendered server-side applies every rendered object, CRDs first, and
// waits for the CRDs to be established.
func applyRendered(t *testing.T, c client.Client, vals map[string]any) []*unstructured.Unstructured {
	t.Helper()
	m, err := Render(vals, RenderOptions{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := Objects(m)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
	for _, o := range objs {
		if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(o), client.FieldOwner("kars-test"), client.ForceOwnership); err != nil {
			t.Fatalf("API server refused %s %s: %v", o.GetKind(), o.GetName(), err)
		}
		if o.GetKind() == "CustomResourceDefinition" {
			waitEstablished(t, c, o.GetName())
		}
	}
	return objs
}

func waitEstablished(t *testing.T, c client.Client, name string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		crd := &unstructured.Unstructured{}
		crd.SetAPIVersion("apiextensions.k8s.io/v1")
		crd.SetKind("CustomResourceDefinition")
		err := c.Get(context.Background(), client.ObjectKey{Name: name}, crd)
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, cond := range conds {
			if m, _ := cond.(map[string]any); m["type"] == "Established" && m["status"] == "True" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("CRD %s not established: %v %v", name, err, conds)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// as returns a client that impersonates user (with groups).
func as(t *testing.T, cfg *rest.Config, user string, groups ...string) client.Client {
	t.Helper()
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	cl, err := client.New(c, client.Options{Scheme: testenv.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func bind(t *testing.T, c client.Client, namespace, user, clusterRole string) {
	t.Helper()
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user + "-" + clusterRole, Namespace: namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: clusterRole},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: user}},
	}
	if err := c.Create(context.Background(), rb); err != nil {
		t.Fatal(err)
	}
}

// eventually retries f until it returns nil: a new admission policy takes a
// moment to reach the API server's policy cache.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func wantDenied(err error, msg string) error {
	if err == nil {
		return fmt.Errorf("allowed, want denied with %q", msg)
	}
	if !strings.Contains(err.Error(), msg) {
		return fmt.Errorf("err = %v, want %q", err, msg)
	}
	return nil
}

// The rendered chart applies to the real API server, and its admission
// policies and RBAC do what they say, for the users they name.
func TestRenderedChartOnAPIServer(t *testing.T) {
	env := testenv.Start(t, testenv.Options{SkipCRDs: true})
	ctx := context.Background()
	admin := env.Client
	objs := applyRendered(t, admin, allFeatures())
	if len(objs) < 30 {
		t.Fatalf("applied only %d objects", len(objs))
	}
	// Applying the same render again changes nothing.
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" {
			continue
		}
		got := o.DeepCopy()
		if err := admin.Get(ctx, client.ObjectKeyFromObject(o), got); err != nil {
			t.Fatalf("%s %s not stored: %v", o.GetKind(), o.GetName(), err)
		}
	}

	tenantNS := "kars-t"
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: tenantNS, Labels: map[string]string{"kars.io/sandbox-namespace": "true"}}}); err != nil {
		t.Fatal(err)
	}
	// A tenant who may edit ConfigMaps and exec into pods in the namespace
	// (what the aggregated "edit" role grants; its aggregation needs
	// kube-controller-manager, which this test does not run).
	tenant := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "tenant", Namespace: tenantNS}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "create", "update", "patch", "delete"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"pods/exec", "pods/attach"}, Verbs: []string{"create", "get"}},
	}}
	if err := admin.Create(ctx, tenant); err != nil {
		t.Fatal(err)
	}
	if err := admin.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "alice-tenant", Namespace: tenantNS},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "tenant"},
		Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: "alice"}}}); err != nil {
		t.Fatal(err)
	}
	bind(t, admin, tenantNS, "alice", "kars-operator")
	bind(t, admin, tenantNS, "bob", "kars-operator")
	proposer := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "sre-proposer", Namespace: tenantNS},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"kars.azure.com"}, Resources: []string{"karssreactions"}, Verbs: []string{"create"}}}}
	if err := admin.Create(ctx, proposer); err != nil {
		t.Fatal(err)
	}
	if err := admin.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "bob-proposer", Namespace: tenantNS},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "sre-proposer"},
		Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: "bob"}}}); err != nil {
		t.Fatal(err)
	}
	alice, bob := as(t, env.Config, "alice"), as(t, env.Config, "bob")
	controllerSA := as(t, env.Config, "system:serviceaccount:"+ns+":kars-controller", "system:serviceaccounts", "system:serviceaccounts:"+ns)

	t.Run("managed-objects", func(t *testing.T) {
		// The controller's ServiceAccount may create it: the chart's
		// ClusterRole grants it, and the policy lets it through.
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "bot-router", Namespace: tenantNS,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "kars-controller"}}, Data: map[string]string{"router.json": `{"strict":true}`}}
		if err := controllerSA.Create(ctx, cm); err != nil {
			t.Fatalf("controller could not create its ConfigMap: %v", err)
		}
		loosen := func(c client.Client, mutate func(*corev1.ConfigMap)) error {
			var got corev1.ConfigMap
			if err := c.Get(ctx, client.ObjectKeyFromObject(cm), &got); err != nil {
				return err
			}
			before := got.DeepCopy()
			mutate(&got)
			// The controller writes with patches (its RBAC has no update).
			return c.Patch(ctx, &got, client.MergeFrom(before))
		}
		const msg = "only kars-controller writes objects labelled"
		eventually(t, "tenant edits the router config", func() error {
			return wantDenied(loosen(alice, func(c *corev1.ConfigMap) { c.Data["router.json"] = `{"strict":false}` }), msg)
		})
		if err := wantDenied(loosen(alice, func(c *corev1.ConfigMap) { delete(c.Labels, "app.kubernetes.io/managed-by") }), msg); err != nil {
			t.Errorf("tenant strips the label: %v", err)
		}
		if err := wantDenied(alice.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "fake", Namespace: tenantNS,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "kars-controller"}}}), msg); err != nil {
			t.Errorf("tenant creates a look-alike: %v", err)
		}
		// Control: the same tenant may write its own ConfigMaps, and the
		// controller and a system:masters admin may write the managed one.
		if err := alice.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "mine", Namespace: tenantNS}}); err != nil {
			t.Errorf("tenant's own ConfigMap refused: %v", err)
		}
		if err := loosen(controllerSA, func(c *corev1.ConfigMap) { c.Data["router.json"] = `{"strict":true,"v":2}` }); err != nil {
			t.Errorf("controller's update refused: %v", err)
		}
		if err := loosen(admin, func(c *corev1.ConfigMap) { c.Annotations = map[string]string{"break-glass": "yes"} }); err != nil {
			t.Errorf("system:masters update refused: %v", err)
		}
		var got corev1.ConfigMap
		if err := admin.Get(ctx, client.ObjectKeyFromObject(cm), &got); err != nil || got.Data["router.json"] != `{"strict":true,"v":2}` {
			t.Errorf("router config = %v (%v)", got.Data, err)
		}
	})

	t.Run("sre-decisions", func(t *testing.T) {
		action := func(name, proposedBy, state, decidedBy string) *karsv1.KarsSREAction {
			return &karsv1.KarsSREAction{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: tenantNS},
				Spec: karsv1.KarsSREActionSpec{Action: karsv1.SRESuspendSandbox, Target: karsv1.SREActionTarget{Kind: "KarsSandbox", Name: "bot"},
					Reason: "runaway spend", ProposedBy: proposedBy, Approval: karsv1.SREApproval{State: state, DecidedBy: decidedBy}}}
		}
		eventually(t, "pre-approved proposal", func() error {
			return wantDenied(bob.Create(ctx, action("pre", "bob", "Approved", "bob")), "is created Pending")
		})
		if err := wantDenied(bob.Create(ctx, action("forged", "alice", "Pending", "")), "spec.proposedBy must be your own user name, bob"); err != nil {
			t.Error(err)
		}
		a := action("suspend-bot", "bob", "Pending", "")
		if err := bob.Create(ctx, a); err != nil {
			t.Fatalf("bob's proposal refused: %v", err)
		}
		decide := func(c client.Client, state, decidedBy string) error {
			var got karsv1.KarsSREAction
			if err := c.Get(ctx, client.ObjectKeyFromObject(a), &got); err != nil {
				return err
			}
			got.Spec.Approval = karsv1.SREApproval{State: state, DecidedBy: decidedBy}
			return c.Update(ctx, &got)
		}
		if err := wantDenied(decide(bob, "Approved", "bob"), "someone else must approve it"); err != nil {
			t.Errorf("self-approval: %v", err)
		}
		if err := wantDenied(decide(alice, "Approved", "carol"), "approval.decidedBy must be your own user name, alice"); err != nil {
			t.Errorf("approval under another name: %v", err)
		}
		if err := decide(alice, "Approved", "alice"); err != nil {
			t.Fatalf("alice's approval refused: %v", err)
		}
		// Control: the proposer may reject their own proposal.
		b := action("restart-bot", "bob", "Pending", "")
		if err := bob.Create(ctx, b); err != nil {
			t.Fatal(err)
		}
		a = b
		if err := decide(bob, "Rejected", "bob"); err != nil {
			t.Errorf("withdrawing one's own proposal refused: %v", err)
		}
	})

	t.Run("router-exec", func(t *testing.T) {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "bot", Namespace: tenantNS}, Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "agent", Image: "agent"}, {Name: "inference-router", Image: "router"}}}}
		if err := admin.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		cfg := rest.CopyConfig(env.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: "alice"}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		exec := func(container string) error {
			req := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(tenantNS).Name("bot").SubResource("exec").
				Param("command", "cat").Param("stdout", "true")
			if container != "" {
				req = req.Param("container", container)
			}
			res := req.Do(ctx)
			var code int
			res.StatusCode(&code)
			if code == http.StatusOK {
				return nil
			}
			return res.Error()
		}
		const msg = "exec and attach into a sandbox's inference-router container are not allowed"
		eventually(t, "exec into the router", func() error { return wantDenied(exec("inference-router"), msg) })
		if err := wantDenied(exec(""), msg); err != nil {
			t.Errorf("exec without a container: %v", err)
		}
		// Control: exec into the agent passes admission and fails only
		// because no kubelet runs the pod.
		if err := exec("agent"); err == nil || strings.Contains(err.Error(), msg) {
			t.Errorf("exec into the agent: %v, want a non-admission error", err)
		}
	})
}
