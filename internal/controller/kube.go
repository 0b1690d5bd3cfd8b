package controller

import (
	"context"
	"fmt"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
)

// KubeSubstrate runs sandboxes as Deployments in their namespace: the
// kubelet starts the pod, the egress guard, the agent and the router. It
// needs no finalizer: every object it creates is owned by the sandbox, so
// the garbage collector removes them with it.
type KubeSubstrate struct {
	c     client.Client
	apply *applier
}

// NewKubeSubstrate returns the Kubernetes substrate. c should read from the
// manager's cache (built with CacheOptions); live reads the API server
// directly (the manager's API reader), for objects the cache cannot see.
func NewKubeSubstrate(c client.Client, live client.Reader) *KubeSubstrate {
	return &KubeSubstrate{c: c, apply: &applier{c: c, live: live, metrics: getMetrics()}}
}

// Realize implements Substrate: it applies the Deployment (only if it
// differs) and reports the rollout from the Deployment's status.
func (k *KubeSubstrate) Realize(ctx context.Context, sb *karsv1.KarsSandbox, d *render.Sandbox) (Observation, error) {
	if _, err := k.apply.apply(ctx, d.Deployment); err != nil {
		return Observation{}, err
	}
	obs := Observation{RouterAdmin: "https://" + d.Names.RouterHostname + ":" + strconv.Itoa(int(render.RouterAdminPort))}
	var dep appsv1.Deployment
	if err := k.c.Get(ctx, client.ObjectKeyFromObject(d.Deployment), &dep); err != nil {
		if apierrors.IsNotFound(err) {
			obs.Message = "Deployment created; waiting for it to be observed"
			return obs, nil
		}
		return Observation{}, err
	}
	obs.Ready, obs.Message = deploymentReady(&dep)
	return obs, nil
}

// deploymentReady reports whether the Deployment's one pod runs the current
// template and is ready, the way `kubectl rollout status` decides.
func deploymentReady(dep *appsv1.Deployment) (bool, string) {
	want := int32(1)
	if dep.Spec.Replicas != nil {
		want = *dep.Spec.Replicas
	}
	st := dep.Status
	switch {
	case want == 0:
		return false, "scaled to zero"
	case st.ObservedGeneration < dep.Generation:
		return false, "waiting for the Deployment controller to observe the new pod template"
	case st.UpdatedReplicas < want:
		return false, fmt.Sprintf("rolling out: %d of %d pods run the current template", st.UpdatedReplicas, want)
	case st.Replicas > st.UpdatedReplicas:
		return false, fmt.Sprintf("rolling out: %d old pods still terminating", st.Replicas-st.UpdatedReplicas)
	case st.AvailableReplicas < want:
		return false, fmt.Sprintf("waiting for the pod to be ready: %d of %d available", st.AvailableReplicas, want)
	}
	return true, "pod ready"
}

// Stop implements Substrate by deleting the sandbox's Deployment.
func (k *KubeSubstrate) Stop(ctx context.Context, sb *karsv1.KarsSandbox) error {
	names, err := render.NamesFor(sb)
	if err != nil {
		return nil // nothing could have been created under an invalid name
	}
	var dep appsv1.Deployment
	if err := k.c.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: names.Workload}, &dep); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !ownedBy(&dep, sb) {
		return nil
	}
	return client.IgnoreNotFound(k.c.Delete(ctx, &dep, client.Preconditions{UID: &dep.UID}, client.PropagationPolicy("Background")))
}

// Finalizer implements Substrate: owner references cover everything.
func (k *KubeSubstrate) Finalizer() string { return "" }

// Cleanup implements Substrate; never called since Finalizer is empty.
func (k *KubeSubstrate) Cleanup(context.Context, *karsv1.KarsSandbox) error { return nil }

// Watch implements Substrate: a Deployment's status change (the pod
// becoming ready) reconciles its sandbox.
func (k *KubeSubstrate) Watch(b *builder.Builder) *builder.Builder {
	return b.Owns(&appsv1.Deployment{})
}
