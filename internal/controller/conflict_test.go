package controller

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// An object with a name kars needs, created by someone else, is never
// taken over: the sandbox reports Conflict and runs no workload, the object
// is left exactly as it was, and deleting the sandbox does not delete it.
// (Before, the controller force-applied over it, added its owner reference
// and garbage-collected it with the sandbox.)
func TestForeignObjectIsNotAdopted(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "conflict")
	sb := minimalSandbox(ns, "bot", karsv1.RuntimeOpenClaw)
	foreign := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bot", Labels: map[string]string{"team": "platform"}},
		// Allow everything: what kars must not silently replace, nor
		// silently run a sandbox next to.
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{}}, Egress: []networkingv1.NetworkPolicyEgressRule{{}}},
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bot-router"}, Data: map[string]string{"owner": "someone else"}}
	create(t, foreign, cm)
	withPolicies(t, sb)
	create(t, sb)

	cur := waitCondition(t, sb, karsv1.ConditionReady, metav1.ConditionFalse, ReasonConflict)
	var got corev1.ConfigMap
	get(t, ns, "bot-router", &got)
	if got.Data["owner"] != "someone else" || len(got.OwnerReferences) != 0 || got.Annotations[AnnotationAppliedHash] != "" {
		t.Fatalf("the foreign ConfigMap was changed: %+v", got.ObjectMeta)
	}
	var np networkingv1.NetworkPolicy
	get(t, ns, "bot", &np)
	if len(np.OwnerReferences) != 0 || np.Labels["team"] != "platform" {
		t.Fatalf("the foreign NetworkPolicy was changed: %+v", np.ObjectMeta)
	}
	var d appsv1.Deployment
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "bot"}, &d); !apierrors.IsNotFound(err) {
		t.Fatalf("a workload exists while an object conflicts: %v", err)
	}

	// The owner renames theirs away: the sandbox comes up on its own
	// objects without a spec change.
	if err := k8s.Delete(context.Background(), cm); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Delete(context.Background(), foreign); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*conflictRetry, "sandbox past the conflict", func() error {
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(sb), cur); err != nil {
			return err
		}
		for _, c := range cur.Status.Conditions {
			if c.Type == karsv1.ConditionReady && c.Reason == ReasonConflict {
				return errorf("still %s: %s", c.Reason, c.Message)
			}
		}
		return nil
	})
	get(t, ns, "bot-router", &got)
	if !hasOwner(&got, cur) {
		t.Fatal("kars's own ConfigMap is not controlled by the sandbox")
	}
}

// A foreign object survives the sandbox's deletion.
func TestForeignObjectSurvivesSandboxDeletion(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "conflict-gc")
	sb := minimalSandbox(ns, "bot", karsv1.RuntimeOpenClaw)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bot"}}
	create(t, sa)
	withPolicies(t, sb)
	create(t, sb)
	waitCondition(t, sb, karsv1.ConditionReady, metav1.ConditionFalse, ReasonConflict)
	if err := k8s.Delete(context.Background(), sb); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "sandbox gone", func() error {
		err := k8s.Get(context.Background(), client.ObjectKeyFromObject(sb), &karsv1.KarsSandbox{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return errorf("still there: %v", err)
	})
	time.Sleep(2 * time.Second) // give the garbage collector its chance
	var got corev1.ServiceAccount
	get(t, ns, "bot", &got)
	if len(got.OwnerReferences) != 0 {
		t.Fatalf("foreign ServiceAccount adopted: %+v", got.OwnerReferences)
	}
}
