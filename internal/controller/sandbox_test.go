package controller

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/ociimage"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/routerconfig"
)

// Every seed example, applied unchanged next to the policies it names,
// reconciles into the pod shape of scenario 1.
func TestSeedExamplesReconcile(t *testing.T) {
	requireController(t)
	files, err := filepath.Glob("../../api/v1alpha1/testdata/seed/*.yaml")
	if err != nil || len(files) != 8 {
		t.Fatalf("want the 8 seed examples, found %d: %v", len(files), err)
	}
	labelled := pushImage(t, "seed/custom-agent", "latest", map[string]string{ociimage.ContractLabel: "v1"})
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var sb karsv1.KarsSandbox
			if err := yaml.UnmarshalStrict(raw, &sb); err != nil {
				t.Fatal(err)
			}
			if sb.Spec.Runtime.Kind == karsv1.RuntimeBYO {
				// myacr.azurecr.io cannot be reached from here; the same
				// image, labelled, is in the test's own registry.
				sb.Spec.Runtime.BYO.Image = labelled
			}
			// Each seed example gets a namespace of its own (two share
			// kars-research-bot).
			sb.Namespace = newNamespace(t, "seed-"+strings.TrimSuffix(filepath.Base(f), ".yaml"))
			create(t, azureInference(sb.Namespace, sb.Spec.InferenceRef.Name), toolPolicy(sb.Namespace, sb.Spec.Governance.ToolPolicyRef.Name), &sb)

			cur := waitCondition(t, &sb, karsv1.ConditionRuntimeReady, metav1.ConditionFalse, ReasonStarting)
			r := waitRendered(t, cur)
			if cur.Status.Phase != karsv1.SandboxProvisioning || cur.Status.ConfigDigest == "" || cur.Status.Model != "gpt-4.1" {
				t.Errorf("status: %+v", cur.Status)
			}
			for _, o := range []client.Object{&r.sa, &r.admin, &r.config, &r.svc, &r.netpol, &r.deploy} {
				if !hasOwner(o, cur) {
					t.Errorf("%T %s is not controlled by the sandbox", o, o.GetName())
				}
			}
			if got := r.config.Annotations[render.AnnotationConfigDigest]; got != cur.Status.ConfigDigest {
				t.Errorf("ConfigMap digest %s, status %s", got, cur.Status.ConfigDigest)
			}
			if _, err := routerconfig.Parse([]byte(r.config.Data[routerconfig.FileName])); err != nil {
				t.Errorf("stored router config is refused by the router's parser: %v", err)
			}
			pod := r.deploy.Spec.Template.Spec
			if !slices.Equal(containerNames(pod.InitContainers), []string{render.ContainerEgressGuard}) && !slices.Equal(containerNames(pod.InitContainers), []string{render.ContainerEgressGuard, render.ContainerAgentCode}) {
				t.Errorf("init containers %v", containerNames(pod.InitContainers))
			}
			agent, routerC := pod.Containers[0], pod.Containers[1]
			if routerC.Name != render.ContainerRouter || *agent.SecurityContext.RunAsUser != 1000 || *routerC.SecurityContext.RunAsUser != 1001 {
				t.Errorf("containers %v", containerNames(pod.Containers))
			}
			if sp := agent.SecurityContext.SeccompProfile; sp.Type != corev1.SeccompProfileTypeLocalhost {
				t.Errorf("enhanced isolation: agent seccomp %v", sp.Type)
			}
			if *pod.AutomountServiceAccountToken || *r.sa.AutomountServiceAccountToken {
				t.Error("ServiceAccount token automounted")
			}
			if r.svc.Spec.ClusterIP != corev1.ClusterIPNone {
				t.Errorf("router Service clusterIP %q", r.svc.Spec.ClusterIP)
			}
			if sb.Spec.Runtime.Kind == karsv1.RuntimeBYO && !strings.Contains(agent.Image, "@sha256:") {
				t.Errorf("BYO image not pinned by digest: %s", agent.Image)
			}
		})
	}
}

// pushImage pushes an image with labels to the test registry and returns
// its tag reference.
func pushImage(t *testing.T, repo, tag string, labels map[string]string) string {
	t.Helper()
	return pushTo(t, hostOf(byoReg), repo, tag, labels)
}

func TestEveryRuntimeKind(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "runtimes")
	byo := pushImage(t, "runtimes/byo", "v1", map[string]string{ociimage.ContractLabel: "v1"})
	cases := []struct {
		kind      karsv1.RuntimeKind
		mutate    func(*karsv1.RuntimeSpec)
		container string
		image     string
		reason    string // RuntimeReady reason when the runtime cannot run
	}{
		{karsv1.RuntimeOpenClaw, nil, "openclaw", "ghcr.io/kars-io/kars-runtime-openclaw:v0.1.0", ""},
		{karsv1.RuntimeOpenAIAgents, nil, "openai-agents", "ghcr.io/kars-io/kars-runtime-openai-agents:v0.1.0-python3.12", ""},
		{karsv1.RuntimeMicrosoftAgentFramework, nil, "microsoft-agent-framework", "ghcr.io/kars-io/kars-runtime-microsoft-agent-framework:v0.1.0", ""},
		{karsv1.RuntimeLangGraph, func(r *karsv1.RuntimeSpec) { r.LangGraph = &karsv1.LangGraphRuntime{Language: "typescript"} },
			"langgraph", "ghcr.io/kars-io/kars-runtime-langgraph-typescript:v0.1.0", ""},
		{karsv1.RuntimeAnthropic, nil, "anthropic", "ghcr.io/kars-io/kars-runtime-anthropic:v0.1.0", ""},
		{karsv1.RuntimePydanticAi, nil, "pydantic-ai", "ghcr.io/kars-io/kars-runtime-pydantic-ai:v0.1.0", ""},
		{karsv1.RuntimeBYO, func(r *karsv1.RuntimeSpec) {
			r.BYO = &karsv1.BYORuntime{Image: byo, ContractVersion: "v1", Command: []string{"/agent"}}
		}, "agent", hostOf(byoReg) + "/runtimes/byo@sha256:", ""},
		{karsv1.RuntimeSemanticKernel, nil, "", "", render.ReasonAdapterMissing},
		{karsv1.RuntimeMicrosoftAgentFramework, func(r *karsv1.RuntimeSpec) {
			r.MicrosoftAgentFramework = &karsv1.MicrosoftAgentFrameworkRuntime{Language: "dotnet"}
		}, "", "", render.ReasonShapeInvalid},
	}
	for i, c := range cases {
		name := strings.ToLower(string(c.kind))
		if c.reason != "" {
			name += "-" + strings.ToLower(c.reason)
		}
		t.Run(name, func(t *testing.T) {
			sb := minimalSandbox(ns, name, c.kind)
			if c.mutate != nil {
				c.mutate(&sb.Spec.Runtime)
			}
			withPolicies(t, sb)
			create(t, sb)
			if c.reason != "" {
				cur := waitCondition(t, sb, karsv1.ConditionRuntimeReady, metav1.ConditionFalse, c.reason)
				if cur.Status.Phase != karsv1.SandboxFailed {
					t.Errorf("phase %s, want Failed", cur.Status.Phase)
				}
				if r := observe(t, cur); len(r.present) != 0 {
					t.Errorf("a sandbox whose runtime cannot run got objects: %v", r.present)
				}
				return
			}
			cur := waitCondition(t, sb, karsv1.ConditionRuntimeReady, metav1.ConditionFalse, ReasonStarting)
			r := waitRendered(t, cur)
			agent := r.deploy.Spec.Template.Spec.Containers[0]
			if agent.Name != c.container || !strings.HasPrefix(agent.Image, c.image) || cur.Status.RuntimeImage != agent.Image {
				t.Errorf("case %d: container %s image %s (status %s), want %s %s", i, agent.Name, agent.Image, cur.Status.RuntimeImage, c.container, c.image)
			}
		})
	}
}

func TestSuspendAndResume(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "suspend")
	sb := minimalSandbox(ns, "sleeper", karsv1.RuntimeOpenClaw)
	withPolicies(t, sb)
	create(t, sb)
	waitRendered(t, sb)

	setSuspended := func(v bool) {
		updateRetrying(t, client.ObjectKeyFromObject(sb), &karsv1.KarsSandbox{}, func(cur *karsv1.KarsSandbox) { cur.Spec.Suspended = v })
	}
	setSuspended(true)
	cur := waitCondition(t, sb, karsv1.ConditionSuspended, metav1.ConditionTrue, ReasonSuspended)
	if cur.Status.Phase != karsv1.SandboxSuspended {
		t.Errorf("phase %s", cur.Status.Phase)
	}
	eventually(t, 10*time.Second, "scaled to zero", func() error {
		if r := observe(t, sb); *r.deploy.Spec.Replicas != 0 || !r.present["ConfigMap"] {
			return errorf("replicas %d, objects %v", *r.deploy.Spec.Replicas, r.present)
		}
		return nil
	})
	setSuspended(false)
	waitCondition(t, sb, karsv1.ConditionSuspended, metav1.ConditionFalse, ReasonActive)
	eventually(t, 10*time.Second, "scaled back to one", func() error {
		if r := observe(t, sb); *r.deploy.Spec.Replicas != 1 {
			return errorf("replicas %d", *r.deploy.Spec.Replicas)
		}
		return nil
	})
}

// A sandbox whose policies are missing gets no workload and says which
// policy to create; it starts as soon as they exist.
func TestMissingPoliciesBlockThenRecover(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "missing")
	sb := minimalSandbox(ns, "orphan", karsv1.RuntimeOpenClaw)
	create(t, sb)
	cur := waitCondition(t, sb, karsv1.ConditionDegraded, metav1.ConditionTrue, ReasonInferencePolicyNotFound)
	if cur.Status.Phase != karsv1.SandboxDegraded || len(observe(t, sb).present) != 0 {
		t.Fatalf("phase %s objects %v", cur.Status.Phase, observe(t, sb).present)
	}
	create(t, offlineInference(ns, sb.Spec.InferenceRef.Name))
	waitCondition(t, sb, karsv1.ConditionDegraded, metav1.ConditionTrue, ReasonToolPolicyNotFound)
	if len(observe(t, sb).present) != 0 {
		t.Fatal("workload created without its ToolPolicy")
	}
	tp := toolPolicy(ns, sb.Spec.Governance.ToolPolicyRef.Name)
	create(t, tp)
	waitCondition(t, sb, karsv1.ConditionDegraded, metav1.ConditionFalse, ReasonAsExpected)
	waitRendered(t, sb)

	// Deleting a policy stops the workload again (fail closed).
	if err := k8s.Delete(context.Background(), tp); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, sb, karsv1.ConditionDegraded, metav1.ConditionTrue, ReasonToolPolicyNotFound)
	eventually(t, 10*time.Second, "workload removed", func() error {
		if observe(t, sb).present["Deployment"] {
			return errNotYet
		}
		return nil
	})
}

func TestInvalidToolPolicy(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "invalid")
	sb := minimalSandbox(ns, "strict", karsv1.RuntimeOpenClaw)
	tp := toolPolicy(ns, sb.Spec.Governance.ToolPolicyRef.Name)
	tp.Spec.Rules[1].Conditions = []karsv1.ToolCondition{{Expression: "args.("}}
	create(t, offlineInference(ns, sb.Spec.InferenceRef.Name), tp, sb)
	cur := waitCondition(t, sb, karsv1.ConditionDegraded, metav1.ConditionTrue, render.ReasonPolicyInvalid)
	if cur.Status.Phase != karsv1.SandboxFailed || len(observe(t, sb).present) != 0 {
		t.Errorf("phase %s, objects %v", cur.Status.Phase, observe(t, sb).present)
	}
	eventually(t, 10*time.Second, "ToolPolicy Invalid", func() error {
		var got karsv1.ToolPolicy
		get(t, ns, tp.Name, &got)
		if got.Status.Phase != karsv1.PolicyPhaseInvalid || !slices.Equal(got.Status.Sandboxes, []string{"strict"}) {
			return errorf("status %+v", got.Status)
		}
		return nil
	})
}

func conditionOf(sb *karsv1.KarsSandbox, t string) metav1.Condition {
	for _, c := range sb.Status.Conditions {
		if c.Type == t {
			return c
		}
	}
	return metav1.Condition{}
}

// Deleting a sandbox leaves none of its objects behind: they are all owned
// by it, and the garbage collector (kube-controller-manager) removes them.
func TestDeletionLeavesNothing(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "deletion")
	sb := minimalSandbox(ns, "ephemeral", karsv1.RuntimeOpenClaw)
	sb.Spec.Runtime.OpenClaw = &karsv1.OpenClawRuntime{}
	withPolicies(t, sb)
	create(t, sb)
	waitRendered(t, sb)
	if err := k8s.Delete(context.Background(), sb); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "everything garbage-collected", func() error {
		sel := client.MatchingLabels{render.LabelSandbox: sb.Name}
		left := 0
		for _, l := range []client.ObjectList{&corev1.ServiceAccountList{}, &corev1.SecretList{}, &corev1.ConfigMapList{},
			&corev1.ServiceList{}, &networkingv1.NetworkPolicyList{}, &appsv1.DeploymentList{}} {
			if err := k8s.List(context.Background(), l, client.InNamespace(ns), sel); err != nil {
				return err
			}
			left += len(mustItems(l))
		}
		if left > 0 {
			return errorf("%d objects left", left)
		}
		return nil
	})
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(sb), &karsv1.KarsSandbox{}); !apierrors.IsNotFound(err) {
		t.Errorf("sandbox still there (a finalizer?): %v", err)
	}
}

func mustItems(l client.ObjectList) []any {
	switch x := l.(type) {
	case *corev1.ServiceAccountList:
		return anySlice(x.Items)
	case *corev1.SecretList:
		return anySlice(x.Items)
	case *corev1.ConfigMapList:
		return anySlice(x.Items)
	case *corev1.ServiceList:
		return anySlice(x.Items)
	case *networkingv1.NetworkPolicyList:
		return anySlice(x.Items)
	case *appsv1.DeploymentList:
		return anySlice(x.Items)
	}
	panic("unknown list")
}

func anySlice[T any](s []T) []any {
	out := make([]any, len(s))
	for i := range s {
		out[i] = s[i]
	}
	return out
}

// Editing a policy changes the router's ConfigMap in place and never the
// pod template; the policy reports AwaitingRouterEnforcement until the
// router serves the new digest, then RouterEnforcing.
func TestPolicyEditReloadsWithoutRestart(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "hotreload")
	sb := minimalSandbox(ns, "analyst", karsv1.RuntimeOpenClaw)
	withPolicies(t, sb)
	create(t, sb)
	r := waitRendered(t, sb)
	router := startRouter(t, sb)
	markDeploymentReady(t, sb)

	cur := waitCondition(t, sb, karsv1.ConditionReady, metav1.ConditionTrue, ReasonReady)
	first := cur.Status.ConfigDigest
	if cur.Status.EnforcedDigest != first || cur.Status.Phase != karsv1.SandboxRunning ||
		cur.Status.RouterEndpoint != "https://analyst-router.hotreload.svc:8444" {
		t.Fatalf("status %+v", cur.Status)
	}
	waitPolicyPhase(t, &karsv1.InferencePolicy{}, ns, sb.Spec.InferenceRef.Name, karsv1.PolicyPhaseRouterEnforcing)
	waitPolicyPhase(t, &karsv1.ToolPolicy{}, ns, sb.Spec.Governance.ToolPolicyRef.Name, karsv1.PolicyPhaseRouterEnforcing)

	// `kars model set analyst offline-large`: a new model in the policy.
	updateRetrying(t, client.ObjectKey{Namespace: ns, Name: sb.Spec.InferenceRef.Name}, &karsv1.InferencePolicy{}, func(ip *karsv1.InferencePolicy) {
		ip.Spec.ModelPreference.Primary.Model = "offline-large"
	})
	var cm corev1.ConfigMap
	eventually(t, 10*time.Second, "ConfigMap recompiled", func() error {
		get(t, ns, r.config.Name, &cm)
		if cm.Annotations[render.AnnotationConfigDigest] == first {
			return errNotYet
		}
		return nil
	})
	if !strings.Contains(cm.Data[routerconfig.FileName], `"offline-large"`) {
		t.Error("new model not in the router config")
	}
	waitPolicyPhase(t, &karsv1.InferencePolicy{}, ns, sb.Spec.InferenceRef.Name, karsv1.PolicyPhaseAwaitingRouterEnforcement)
	cur = waitCondition(t, sb, karsv1.ConditionRouterEnforcing, metav1.ConditionFalse, ReasonAwaitingRouter)
	if cur.Status.Model != "offline-large" || cur.Status.ConfigDigest == first {
		t.Errorf("status after edit: %+v", cur.Status)
	}
	var after appsv1.Deployment
	get(t, ns, sb.Name, &after)
	if after.Generation != r.deploy.Generation || !equality.Semantic.DeepEqual(after.Spec.Template, r.deploy.Spec.Template) {
		t.Fatal("a policy edit changed the pod template: the pod would restart")
	}

	router.reload(t, sb) // the kubelet updates the mounted file; the router reloads
	cur = waitCondition(t, sb, karsv1.ConditionReady, metav1.ConditionTrue, ReasonReady)
	if cur.Status.EnforcedDigest != cur.Status.ConfigDigest {
		t.Errorf("enforced %s, compiled %s", cur.Status.EnforcedDigest, cur.Status.ConfigDigest)
	}
	waitPolicyPhase(t, &karsv1.InferencePolicy{}, ns, sb.Spec.InferenceRef.Name, karsv1.PolicyPhaseRouterEnforcing)
}

func waitPolicyPhase(t *testing.T, obj client.Object, ns, name, phase string) {
	t.Helper()
	eventually(t, 20*time.Second, name+" "+phase, func() error {
		get(t, ns, name, obj)
		var st karsv1.PolicyStatus
		switch p := obj.(type) {
		case *karsv1.InferencePolicy:
			st = p.Status
		case *karsv1.ToolPolicy:
			st = p.Status
		}
		if st.Phase != phase || st.ObservedGeneration != obj.GetGeneration() {
			return errorf("phase %s (generation %d observed %d)", st.Phase, obj.GetGeneration(), st.ObservedGeneration)
		}
		return nil
	})
}

// Someone edits a field kars owns: the next reconcile puts it back.
func TestDriftIsRepaired(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "drift")
	sb := minimalSandbox(ns, "steady", karsv1.RuntimeOpenClaw)
	withPolicies(t, sb)
	create(t, sb)
	r := waitRendered(t, sb)
	updateRetrying(t, client.ObjectKeyFromObject(&r.deploy), &appsv1.Deployment{}, func(d *appsv1.Deployment) {
		d.Spec.Template.Spec.Containers[0].SecurityContext.RunAsUser = ptrTo(int64(0))
		d.Spec.Template.Spec.AutomountServiceAccountToken = ptrTo(true)
	})
	eventually(t, 10*time.Second, "drift repaired", func() error {
		var cur appsv1.Deployment
		get(t, ns, sb.Name, &cur)
		p := cur.Spec.Template.Spec
		if *p.Containers[0].SecurityContext.RunAsUser != 1000 || *p.AutomountServiceAccountToken {
			return errorf("runAsUser %d automount %v", *p.Containers[0].SecurityContext.RunAsUser, *p.AutomountServiceAccountToken)
		}
		return nil
	})
}

func ptrTo[T any](v T) *T { return &v }

// Once converged, the controller makes no API requests at all: nothing
// wakes it, and a reconcile forced by a label change finds nothing to
// write (no resourceVersion moves).
func TestIdleMakesNoWrites(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "idle")
	sb := minimalSandbox(ns, "quiet", karsv1.RuntimeLangGraph)
	withPolicies(t, sb)
	create(t, sb)
	waitRendered(t, sb)
	startRouter(t, sb)
	markDeploymentReady(t, sb)
	waitCondition(t, sb, karsv1.ConditionReady, metav1.ConditionTrue, ReasonReady)
	waitPolicyPhase(t, &karsv1.InferencePolicy{}, ns, sb.Spec.InferenceRef.Name, karsv1.PolicyPhaseRouterEnforcing)

	before := observe(t, sb)
	// Other tests' namespaces are being deleted, which is not idle: wait
	// until they are gone.
	eventually(t, 60*time.Second, "other test namespaces deleted", func() error {
		var list corev1.NamespaceList
		if err := k8s.List(context.Background(), &list); err != nil {
			return err
		}
		for _, n := range list.Items {
			if n.Status.Phase == corev1.NamespaceTerminating {
				return errorf("namespace %s terminating", n.Name)
			}
		}
		return nil
	})
	time.Sleep(time.Second)
	writes := counter.writes.Load()
	time.Sleep(5 * time.Second)
	if n := counter.writes.Load() - writes; n != 0 {
		t.Fatalf("%d writes while idle: %v", n, counter.recentWrites())
	}

	writes, requests := counter.writes.Load(), counter.requests.Load()
	updateRetrying(t, client.ObjectKeyFromObject(sb), &karsv1.KarsSandbox{}, func(cur *karsv1.KarsSandbox) {
		cur.Labels = map[string]string{"touched": "yes"}
	})
	time.Sleep(3 * time.Second)
	if n := counter.writes.Load() - writes; n != 0 {
		t.Errorf("a no-op reconcile wrote %d times: %v", n, counter.recentWrites())
	}
	t.Logf("requests during the forced reconcile: %d", counter.requests.Load()-requests)
	after := observe(t, sb)
	for kind, pair := range map[string][2]client.Object{
		"ServiceAccount": {&before.sa, &after.sa}, "Secret": {&before.admin, &after.admin}, "ConfigMap": {&before.config, &after.config},
		"Service": {&before.svc, &after.svc}, "NetworkPolicy": {&before.netpol, &after.netpol}, "Deployment": {&before.deploy, &after.deploy},
	} {
		if pair[0].GetResourceVersion() != pair[1].GetResourceVersion() {
			t.Errorf("%s resourceVersion moved from %s to %s", kind, pair[0].GetResourceVersion(), pair[1].GetResourceVersion())
		}
	}
}

// The runtime's own configuration lives in its ConfigMap; dropping it from
// the spec deletes the ConfigMap and its mount.
func TestAgentConfigFollowsSpec(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "agentconfig")
	sb := minimalSandbox(ns, "claw", karsv1.RuntimeOpenClaw)
	sb.Spec.Runtime.OpenClaw = &karsv1.OpenClawRuntime{Config: &runtime.RawExtension{Raw: []byte(`{"channels":{"telegram":{"enabled":true}}}`)}}
	withPolicies(t, sb)
	create(t, sb)
	waitRendered(t, sb)
	var cm corev1.ConfigMap
	eventually(t, 10*time.Second, "agent ConfigMap", func() error {
		return k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "claw-agent"}, &cm)
	})
	if !strings.Contains(cm.Data["openclaw.json"], "telegram") {
		t.Errorf("agent config %q", cm.Data)
	}
	updateRetrying(t, client.ObjectKeyFromObject(sb), &karsv1.KarsSandbox{}, func(cur *karsv1.KarsSandbox) {
		cur.Spec.Runtime.OpenClaw.Config = nil
	})
	eventually(t, 10*time.Second, "agent ConfigMap and its mount removed", func() error {
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "claw-agent"}, &cm); !apierrors.IsNotFound(err) {
			return errorf("ConfigMap still there (%v)", err)
		}
		r := observe(t, sb)
		for _, v := range r.deploy.Spec.Template.Spec.Volumes {
			if v.ConfigMap != nil && v.ConfigMap.Name == "claw-agent" {
				return errorf("pod still mounts it")
			}
		}
		if _, ok := r.deploy.Spec.Template.Annotations[render.AnnotationAgentConfigDigest]; ok {
			return errorf("template keeps the agent config digest")
		}
		return nil
	})
}
