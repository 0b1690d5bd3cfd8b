package controller

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
)

// offlineInference is an InferencePolicy the stand-in router can load
// without credentials.
func offlineInference(ns, name string) *karsv1.InferencePolicy {
	return &karsv1.InferencePolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: karsv1.InferencePolicySpec{
			ModelPreference: karsv1.ModelPreference{Primary: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "offline-small"}},
			TokenBudget:     &karsv1.TokenBudget{Daily: 100000},
		},
	}
}

// azureInference uses Azure OpenAI through workload identity, as scenario 1.
func azureInference(ns, name string) *karsv1.InferencePolicy {
	return &karsv1.InferencePolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: karsv1.InferencePolicySpec{
			ModelPreference: karsv1.ModelPreference{Primary: karsv1.ModelTarget{
				Provider: karsv1.ProviderAzureOpenAI, Model: "gpt-4.1", Deployment: "gpt-41",
				Endpoint: "https://research.openai.azure.com",
				Auth:     &karsv1.ProviderAuth{Mode: karsv1.AuthWorkloadIdentity, ClientID: "11111111-2222-3333-4444-555555555555", TenantID: "66666666-7777-8888-9999-000000000000"},
			}},
		},
	}
}

func toolPolicy(ns, name string) *karsv1.ToolPolicy {
	return &karsv1.ToolPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: karsv1.ToolPolicySpec{Rules: []karsv1.ToolRule{
			{Name: "inference", Effect: karsv1.EffectAllow, Actions: []string{"inference:*"}},
			{Name: "search", Effect: karsv1.EffectAllow, Actions: []string{"tool:web_search"}},
		}},
	}
}

// minimalSandbox is a sandbox of the given kind with the blocks the schema
// requires.
func minimalSandbox(ns, name string, kind karsv1.RuntimeKind) *karsv1.KarsSandbox {
	sb := &karsv1.KarsSandbox{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: karsv1.KarsSandboxSpec{
			Runtime:      karsv1.RuntimeSpec{Kind: kind},
			InferenceRef: karsv1.LocalObjectReference{Name: name + "-inference"},
			Governance:   karsv1.GovernanceSpec{ToolPolicyRef: &karsv1.LocalObjectReference{Name: name + "-policy"}},
		},
	}
	if kind == karsv1.RuntimeBYO {
		sb.Spec.Runtime.BYO = &karsv1.BYORuntime{Image: "example.invalid/agent:1", ContractVersion: "v1"}
	}
	return sb
}

func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := k8s.Create(context.Background(), o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
}

// withPolicies creates the sandbox's two policies (offline inference).
func withPolicies(t *testing.T, sb *karsv1.KarsSandbox) {
	t.Helper()
	create(t, offlineInference(sb.Namespace, sb.Spec.InferenceRef.Name), toolPolicy(sb.Namespace, sb.Spec.Governance.ToolPolicyRef.Name))
}

// waitCondition waits until the sandbox's status describes its current
// generation and condition t has the given status and reason.
func waitCondition(t *testing.T, sb *karsv1.KarsSandbox, typ string, status metav1.ConditionStatus, reason string) *karsv1.KarsSandbox {
	t.Helper()
	var cur karsv1.KarsSandbox
	eventually(t, 20*time.Second, fmt.Sprintf("%s/%s %s=%s/%s", sb.Namespace, sb.Name, typ, status, reason), func() error {
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(sb), &cur); err != nil {
			return err
		}
		c := meta.FindStatusCondition(cur.Status.Conditions, typ)
		if cur.Status.ObservedGeneration != cur.Generation || c == nil || c.ObservedGeneration != cur.Generation {
			return errorf("status of generation %d not reported (observed %d)", cur.Generation, cur.Status.ObservedGeneration)
		}
		if c.Status != status || c.Reason != reason {
			return errorf("%s is %s/%s: %s", typ, c.Status, c.Reason, c.Message)
		}
		return nil
	})
	return &cur
}

// rendered are the objects the controller keeps for one sandbox.
type rendered struct {
	sa      corev1.ServiceAccount
	admin   corev1.Secret
	config  corev1.ConfigMap
	svc     corev1.Service
	netpol  networkingv1.NetworkPolicy
	deploy  appsv1.Deployment
	present map[string]bool
}

// observe reads whichever of the sandbox's objects exist.
func observe(t *testing.T, sb *karsv1.KarsSandbox) *rendered {
	t.Helper()
	names, err := render.NamesFor(sb)
	if err != nil {
		t.Fatal(err)
	}
	r := &rendered{present: map[string]bool{}}
	for kind, o := range map[string]struct {
		name string
		obj  client.Object
	}{
		"ServiceAccount": {names.Workload, &r.sa}, "Secret": {names.RouterAdmin, &r.admin}, "ConfigMap": {names.RouterConfig, &r.config},
		"Service": {names.RouterService, &r.svc}, "NetworkPolicy": {names.Workload, &r.netpol}, "Deployment": {names.Workload, &r.deploy},
	} {
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: sb.Namespace, Name: o.name}, o.obj)
		switch {
		case err == nil:
			r.present[kind] = true
		case !apierrors.IsNotFound(err):
			t.Fatal(err)
		}
	}
	return r
}

// waitRendered waits until every object of a runnable sandbox exists.
func waitRendered(t *testing.T, sb *karsv1.KarsSandbox) *rendered {
	t.Helper()
	var r *rendered
	eventually(t, 20*time.Second, "objects of "+sb.Name, func() error {
		r = observe(t, sb)
		if len(r.present) != 6 {
			return errorf("present: %v", r.present)
		}
		return nil
	})
	return r
}

// markDeploymentReady plays the Deployment controller and the kubelet: the
// one pod of the current template is ready.
func markDeploymentReady(t *testing.T, sb *karsv1.KarsSandbox) {
	t.Helper()
	mutateStatus(t, client.ObjectKey{Namespace: sb.Namespace, Name: sb.Name}, &appsv1.Deployment{}, func(d *appsv1.Deployment) {
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	})
}

func containerNames(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func hasOwner(o client.Object, sb *karsv1.KarsSandbox) bool {
	return slices.ContainsFunc(o.GetOwnerReferences(), func(r metav1.OwnerReference) bool {
		return r.UID == sb.UID && r.Controller != nil && *r.Controller
	})
}

// updateRetrying reads the object at key into obj, applies fn and updates it,
// retrying on a conflict: the controller writes the same objects (status,
// its own fields) concurrently, so a read-modify-write by the test can race
// it on a loaded machine.
func updateRetrying[T client.Object](t *testing.T, key client.ObjectKey, obj T, fn func(T)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		if err := k8s.Get(context.Background(), key, obj); err != nil {
			return err
		}
		fn(obj)
		return k8s.Update(context.Background(), obj)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// mutateStatus is updateRetrying for the status subresource.
func mutateStatus[T client.Object](t *testing.T, key client.ObjectKey, obj T, fn func(T)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		if err := k8s.Get(context.Background(), key, obj); err != nil {
			return err
		}
		fn(obj)
		return k8s.Status().Update(context.Background(), obj)
	})
	if err != nil {
		t.Fatal(err)
	}
}
