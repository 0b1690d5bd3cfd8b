package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/routerconfig"
)

// A KarsMemory reaches its sandbox's router config with the sandbox's
// partition; it is Bound when the router reaches the store, Failed with
// the router's reason when it cannot; deleting it with
// deleteOnSandboxDelete makes the router forget the memories first.
func TestKarsMemoryBinding(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "memory-binding")
	sb := minimalSandbox(ns, "bot", karsv1.RuntimeOpenClaw)
	withPolicies(t, sb)
	create(t, sb)
	waitRendered(t, sb)
	router := startRouter(t, sb)
	markDeploymentReady(t, sb)
	waitCondition(t, sb, karsv1.ConditionReady, metav1.ConditionTrue, ReasonReady)

	m := &karsv1.KarsMemory{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bot-memory"}, Spec: karsv1.KarsMemorySpec{
		SandboxRef: karsv1.LocalObjectReference{Name: "bot"},
		Foundry:    karsv1.FoundryMemoryStore{Endpoint: "https://contoso.services.ai.azure.com/api/projects/agents", StoreName: "bot-memories"},
		Scope:      "user", RetentionDays: 90, DeleteOnSandboxDelete: true}}
	create(t, m)
	names, _ := render.NamesFor(sb)
	eventually(t, 20*time.Second, "the memory section in the router config", func() error {
		snap := loadRouterConfig(t, sb, names)
		if mem := snap.Config.Memory; mem == nil || mem.Partition != ns+"/bot" || mem.Scope != "user" || mem.RetentionDays != 90 ||
			mem.Auth.Mode != routerconfig.AuthWorkloadIdentity {
			return errorf("memory %+v", snap.Config.Memory)
		}
		return nil
	})
	// The workload identity token now reaches the router: the pod rolls.
	rollOut(t, sb, router)
	router.memory.Store(&RouterMemory{Store: "bot-memories", Problem: "StoreMissing", Error: "memory store \"bot-memories\" not found"})
	eventually(t, 60*time.Second, "StoreMissing", func() error {
		kubelet(t, sb, router)
		get(t, ns, m.Name, m)
		if c := meta.FindStatusCondition(m.Status.Conditions, karsv1.ConditionReady); c == nil || c.Reason != ReasonStoreMissing || m.Status.Phase != "Failed" {
			return errorf("status %+v", m.Status)
		}
		return nil
	})
	router.memory.Store(&RouterMemory{Store: "bot-memories", Reachable: true})
	updateRetrying(t, client.ObjectKeyFromObject(m), &karsv1.KarsMemory{}, func(x *karsv1.KarsMemory) { x.Spec.RetentionDays = 60 })
	rollOut(t, sb, router)
	eventually(t, 60*time.Second, "Bound", func() error {
		kubelet(t, sb, router)
		get(t, ns, m.Name, m)
		if m.Status.Phase != "Bound" {
			return errorf("status %+v", m.Status)
		}
		return nil
	})
	if !strings.Contains(strings.Join(m.Finalizers, ","), MemoryFinalizer) {
		t.Fatalf("finalizers %v", m.Finalizers)
	}
	if err := k8s.Delete(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the binding gone", func() error {
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(m), &karsv1.KarsMemory{}); err == nil {
			return errNotYet
		}
		return nil
	})
	if router.forgets.Load() != 1 {
		t.Fatalf("the router was asked to forget %d times, want 1", router.forgets.Load())
	}
}

// kubelet plays the kubelet and the router's config watcher once: the pod
// of the current template is ready and the router loaded the current
// ConfigMap.
func kubelet(t *testing.T, sb *karsv1.KarsSandbox, router *standInRouter) {
	t.Helper()
	markDeploymentReady(t, sb)
	router.reload(t, sb)
	time.Sleep(200 * time.Millisecond)
}

// rollOut plays the kubelet until the sandbox runs its current config:
// the pod of the latest template is ready and the router loaded the
// latest ConfigMap.
func rollOut(t *testing.T, sb *karsv1.KarsSandbox, router *standInRouter) {
	t.Helper()
	eventually(t, 30*time.Second, "sandbox running its config", func() error {
		markDeploymentReady(t, sb)
		router.reload(t, sb)
		var cur karsv1.KarsSandbox
		get(t, sb.Namespace, sb.Name, &cur)
		if cur.Status.Phase != karsv1.SandboxRunning || cur.Status.EnforcedDigest != cur.Status.ConfigDigest {
			time.Sleep(300 * time.Millisecond)
			return errorf("sandbox %s", cur.Status.Phase)
		}
		return nil
	})
}
