package controller

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/builder"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
)

// Substrate realises a sandbox's pod somewhere and reports on it. The
// reconciler has already applied the sandbox's other objects (ServiceAccount,
// router and agent ConfigMaps, admin Secret, Service, NetworkPolicy) to the
// API server when it calls Realize; a substrate only runs the workload
// described by desired.Deployment — its PodSpec, and zero replicas while the
// sandbox is suspended.
//
// Implementations must be idempotent and cheap when nothing changed: the
// reconciler calls Realize on every reconcile of a runnable sandbox.
type Substrate interface {
	// Realize makes the sandbox's pod match desired and reports its state.
	Realize(ctx context.Context, sb *karsv1.KarsSandbox, desired *render.Sandbox) (Observation, error)
	// Stop removes the sandbox's workload, if any, because it must not run
	// (a missing policy, an unusable runtime). It is called on every
	// reconcile of a blocked sandbox and must do nothing when there is
	// nothing to stop.
	Stop(ctx context.Context, sb *karsv1.KarsSandbox) error
	// Finalizer names a finalizer the substrate needs because owner
	// references cannot clean up what it created (local processes, host
	// state). Empty means none; Cleanup is then never called.
	Finalizer() string
	// Cleanup releases everything the substrate holds for a deleted
	// sandbox. The reconciler removes Finalizer after it succeeds.
	Cleanup(ctx context.Context, sb *karsv1.KarsSandbox) error
	// Watch adds the substrate's event sources to the sandbox controller,
	// so that a change in the realised workload (a pod becoming ready, a
	// local process exiting) reconciles its sandbox.
	Watch(b *builder.Builder) *builder.Builder
}

// Observation is what a substrate reports about a sandbox's workload.
type Observation struct {
	// Ready is true when the pod runs and every container is ready.
	Ready bool
	// Message explains a workload that is not ready yet.
	Message string
	// Reason is RuntimeReady's reason while the workload is not ready,
	// when the substrate knows better than "Starting" (an environment
	// being prepared, or failing to be).
	Reason string
	// RouterAdmin is the base URL of the router's admin API, for example
	// "https://research-bot-router.kars-research-bot.svc:8444". The
	// controller verifies it against the sandbox's pinned admin
	// certificate, issued for desired.Names.RouterHostname whatever host
	// the URL names.
	RouterAdmin string
}
