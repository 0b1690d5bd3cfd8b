package controller

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/a2a/peer"
	"github.com/kars-io/kars/internal/ociimage"
	"github.com/kars-io/kars/internal/render"
)

// Scheme returns a scheme with the built-in kinds and the kars kinds, which
// is what the manager passed to Setup needs.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(karsv1.AddToScheme(s))
	return s
}

// Options configure Setup. Only Env is required.
type Options struct {
	// Env describes the installation: image catalog, system namespace,
	// cluster DNS, seccomp profile.
	Env render.Environment
	// Substrate runs the pods; nil means the Kubernetes substrate.
	Substrate Substrate
	// Prober reads the digest a router enforces; nil means HTTPSProber.
	Prober RouterProber
	// Images reads BYO image labels; nil means an ociimage.Checker.
	Images ImageInspector
	// MaxConcurrentReconciles of each controller; zero means 4.
	// Reconciles mostly wait on the API server, so a few in parallel
	// keep a 2-core control plane busy.
	MaxConcurrentReconciles int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// AuditAnchorInterval is how often the controller copies a running
	// router's audit head into the sandbox's status; zero means 5 minutes.
	AuditAnchorInterval time.Duration
	// McpRunner runs McpServers that have an image; nil means Deployments
	// on the cluster (KubeMcpRunner).
	McpRunner McpRunner
	// EvalRunner reaches sandboxes to run KarsEvals; nil means through
	// their routers' admin API (AdminEvalRunner).
	EvalRunner EvalRunner
	// A2ACards fetches registered A2A agents' cards; nil means a Fetcher
	// that connects to public addresses only.
	A2ACards *peer.Fetcher
	// Signers are the keys allowlist artifacts must be signed with;
	// nil trusts none, so every allowlistRef fails closed.
	Signers *SignerPolicy
	// DeployMesh applies kars-mesh (render.MeshSystem) into the system
	// namespace at start. The local substrate runs kars-mesh in the dev
	// daemon instead.
	DeployMesh bool
	// Offload, with the mesh on, runs the offload broker and reconciles
	// offload pairings and their sandboxes (docs/offload.md).
	Offload *OffloadOptions
}

// CacheOptions returns the cache configuration Setup expects of its
// manager: the kinds kars renders are cached only when they carry
// app.kubernetes.io/managed-by=kars-controller, so the controller neither
// holds nor needs permission to watch every Secret and ConfigMap in the
// cluster. Pass it as manager.Options.Cache.
func CacheOptions() cache.Options {
	mine := cache.ByObject{Label: labels.SelectorFromSet(labels.Set{render.LabelManagedBy: render.ManagedBy})}
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Secret{}:                mine,
		&corev1.ConfigMap{}:             mine,
		&corev1.ServiceAccount{}:        mine,
		&corev1.Service{}:               mine,
		&corev1.PersistentVolumeClaim{}: mine,
		&appsv1.Deployment{}:            mine,
		&networkingv1.NetworkPolicy{}:   mine,
	}}
}

// Setup registers the KarsSandbox, InferencePolicy and ToolPolicy
// controllers on mgr. `kars-controller` calls it; so can `kars dev`, with
// its local Substrate.
func Setup(mgr ctrl.Manager, o Options) error {
	if err := o.Env.Catalog.Validate(); err != nil {
		return err
	}
	if o.Env.SystemNamespace == "" {
		return fmt.Errorf("controller: Env.SystemNamespace is required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Substrate == nil {
		o.Substrate = NewKubeSubstrate(mgr.GetClient(), mgr.GetAPIReader())
	}
	if o.Prober == nil {
		o.Prober = &HTTPSProber{}
	}
	if o.EvalRunner == nil {
		// On a cluster, evaluations go through the routers' admin API.
		ar := &AdminEvalRunner{Reader: mgr.GetAPIReader()}
		if hp, ok := o.Prober.(*HTTPSProber); ok {
			ar.DialContext = hp.DialContext
		}
		o.EvalRunner = ar
	}
	if o.Images == nil {
		o.Images = &ociimage.Checker{}
	}
	if o.MaxConcurrentReconciles == 0 {
		o.MaxConcurrentReconciles = 4
	}
	if err := setupIndexes(context.Background(), mgr.GetFieldIndexer()); err != nil {
		return err
	}
	m := getMetrics()
	c := mgr.GetClient()
	sr := &SandboxReconciler{
		client:          c,
		apiReader:       mgr.GetAPIReader(),
		apply:           &applier{c: c, live: mgr.GetAPIReader(), metrics: m},
		substrate:       o.Substrate,
		prober:          o.Prober,
		images:          o.Images,
		env:             o.Env,
		now:             o.Now,
		events:          mgr.GetEventRecorder(render.ManagedBy),
		metrics:         m,
		registryBackoff: newBackoff(2*time.Second, 5*time.Minute),
		routerBackoff:   newBackoff(time.Second, 30*time.Second),
		anchorEvery:     o.AuditAnchorInterval,
		egress:          newEgressInputs(o.Signers),
	}
	if sr.anchorEvery <= 0 {
		sr.anchorEvery = 5 * time.Minute
	}
	// Our own status writes change neither generation nor labels, so they
	// do not wake the sandbox up again.
	specChanged := predicate.Or(predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{})
	b := ctrl.NewControllerManagedBy(mgr).
		Named("karssandbox").
		For(&karsv1.KarsSandbox{}, builder.WithPredicates(specChanged)).
		Owns(&corev1.ServiceAccount{}).
		Owns(&corev1.Secret{}).
		Owns(&corev1.ConfigMap{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.PersistentVolumeClaim{}).
		Owns(&networkingv1.NetworkPolicy{}).
		Watches(&karsv1.InferencePolicy{}, handler.EnqueueRequestsFromMapFunc(sandboxesUsing(c, indexInferenceRef)),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&karsv1.ToolPolicy{}, handler.EnqueueRequestsFromMapFunc(sandboxesUsing(c, indexToolPolicyRef)),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&karsv1.A2AAgent{}, handler.EnqueueRequestsFromMapFunc(sandboxesOfAgent)).
		Watches(&karsv1.EgressApproval{}, handler.EnqueueRequestsFromMapFunc(approvedSandbox),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&karsv1.CredentialBinding{}, handler.EnqueueRequestsFromMapFunc(boundSandbox),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: o.MaxConcurrentReconciles})
	b, err := setupMcpServers(mgr, o, b)
	if err != nil {
		return err
	}
	if b, err = setupKarsMemories(mgr, o, b); err != nil {
		return err
	}
	if err := setupKarsEvals(mgr, o); err != nil {
		return err
	}
	if err := watchUpstream(mgr, o.Substrate.Watch(b), c).Complete(sr); err != nil {
		return err
	}
	if err := setupA2ARoutes(mgr, c, sr.apply, o.Env, o.Now); err != nil {
		return err
	}
	if o.A2ACards == nil {
		o.A2ACards = &peer.Fetcher{}
	}
	if err := setupA2AAgents(mgr, c, o.A2ACards, o.Now); err != nil {
		return err
	}
	if err := setupEgressApprovals(mgr, o); err != nil {
		return err
	}
	if err := setupCredentialBindings(mgr, o); err != nil {
		return err
	}
	for _, k := range []policyKind{inferencePolicyKind, toolPolicyKind} {
		pr := &PolicyReconciler{client: c, kind: k, now: o.Now, mesh: o.Env.Mesh}
		err := ctrl.NewControllerManagedBy(mgr).
			Named(k.kind).
			For(k.newObj(), builder.WithPredicates(predicate.GenerationChangedPredicate{})).
			Watches(&karsv1.KarsSandbox{}, handler.EnqueueRequestsFromMapFunc(policiesOf(k)),
				builder.WithPredicates(enforcementChanged{})).
			WithOptions(controller.Options{MaxConcurrentReconciles: o.MaxConcurrentReconciles}).
			Complete(pr)
		if err != nil {
			return err
		}
	}
	if o.Env.Mesh != nil {
		if err := setupMeshControllers(mgr, o); err != nil {
			return err
		}
		if o.Offload != nil {
			if err := setupOffload(mgr, o); err != nil {
				return err
			}
		}
	}
	return setupSREActions(mgr, o)
}

func setupIndexes(ctx context.Context, fi client.FieldIndexer) error {
	if err := fi.IndexField(ctx, &karsv1.KarsSandbox{}, indexInferenceRef, func(o client.Object) []string {
		return []string{o.(*karsv1.KarsSandbox).Spec.InferenceRef.Name}
	}); err != nil {
		return err
	}
	return fi.IndexField(ctx, &karsv1.KarsSandbox{}, indexToolPolicyRef, func(o client.Object) []string {
		sb := o.(*karsv1.KarsSandbox)
		if ref := sb.Spec.Governance.ToolPolicyRef; ref != nil && sb.Spec.GovernanceEnabled() {
			return []string{ref.Name}
		}
		return nil
	})
}

// sandboxesUsing maps a policy to the sandboxes in its namespace that
// reference it, so that a policy that appears, changes or disappears
// reconciles them.
func sandboxesUsing(c client.Reader, index string) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		var list karsv1.KarsSandboxList
		if err := c.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{index: o.GetName()}); err != nil {
			return nil
		}
		out := make([]reconcile.Request, len(list.Items))
		for i, sb := range list.Items {
			out[i] = reconcile.Request{NamespacedName: types.NamespacedName{Namespace: sb.Namespace, Name: sb.Name}}
		}
		return out
	}
}

// policiesOf maps a sandbox to the policy of kind k it references.
func policiesOf(k policyKind) handler.MapFunc {
	return func(_ context.Context, o client.Object) []reconcile.Request {
		sb := o.(*karsv1.KarsSandbox)
		name := sb.Spec.InferenceRef.Name
		if k.index == indexToolPolicyRef {
			ref := sb.Spec.Governance.ToolPolicyRef
			if ref == nil || !sb.Spec.GovernanceEnabled() {
				return nil
			}
			name = ref.Name
		}
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: sb.Namespace, Name: name}}}
	}
}

// enforcementChanged passes sandbox events that can change a policy's
// status: creation, deletion, a spec change, or a change of the sandbox's
// phase or digests.
type enforcementChanged struct{ predicate.Funcs }

// Update implements predicate.Predicate.
func (enforcementChanged) Update(e event.UpdateEvent) bool {
	o, n := e.ObjectOld.(*karsv1.KarsSandbox), e.ObjectNew.(*karsv1.KarsSandbox)
	return o.Generation != n.Generation || o.Status.Phase != n.Status.Phase ||
		o.Status.EnforcedDigest != n.Status.EnforcedDigest || o.Status.ConfigDigest != n.Status.ConfigDigest ||
		o.DeletionTimestamp.IsZero() != n.DeletionTimestamp.IsZero()
}

// Create implements predicate.Predicate.
func (enforcementChanged) Create(event.CreateEvent) bool { return true }

// Delete implements predicate.Predicate.
func (enforcementChanged) Delete(event.DeleteEvent) bool { return true }
