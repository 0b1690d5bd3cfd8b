package operator

import (
	"context"
	"fmt"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/scheme"
)

// watched are the kinds the operator shows, each with the list type used to
// check the user may list it before watching it.
var watched = []struct {
	kind string
	obj  client.Object
	list client.ObjectList
}{
	{"KarsSandbox", &karsv1.KarsSandbox{}, &karsv1.KarsSandboxList{}},
	{"InferencePolicy", &karsv1.InferencePolicy{}, &karsv1.InferencePolicyList{}},
	{"KarsSREAction", &karsv1.KarsSREAction{}, &karsv1.KarsSREActionList{}},
	{"EgressApproval", &karsv1.EgressApproval{}, &karsv1.EgressApprovalList{}},
	{"KarsPairing", &karsv1.KarsPairing{}, &karsv1.KarsPairingList{}},
	{"ToolPolicy", &karsv1.ToolPolicy{}, &karsv1.ToolPolicyList{}},
	{"McpServer", &karsv1.McpServer{}, &karsv1.McpServerList{}},
	{"KarsMemory", &karsv1.KarsMemory{}, &karsv1.KarsMemoryList{}},
	{"KarsEval", &karsv1.KarsEval{}, &karsv1.KarsEvalList{}},
	// Cluster scoped: with a namespace given, the client and the cache
	// list it cluster-wide all the same, and a namespaced user's RBAC
	// usually forbids that, which the panel then says.
	{"TrustGraph", &karsv1.TrustGraph{}, &karsv1.TrustGraphList{}},
	{"Event", &eventsv1.Event{}, &eventsv1.EventList{}},
}

// Watch starts informers (one list, then a watch) on the kinds the operator
// shows, in namespace ns (all when empty), and sends every change to send
// as an ObjectMsg, then a SyncedMsg once all have listed. Kinds the user
// may not list, or the cluster does not serve, are skipped and named in
// SyncedMsg.Unwatched. It returns once the informers run; they stop with
// ctx.
func Watch(ctx context.Context, cfg *rest.Config, ns string, send func(tea.Msg)) error {
	s := scheme.New()
	cl, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		return err
	}
	opts := cache.Options{Scheme: s}
	var listOpts []client.ListOption
	if ns != "" {
		opts.DefaultNamespaces = map[string]cache.Config{ns: {}}
		listOpts = append(listOpts, client.InNamespace(ns))
	}
	// The user's RBAC decides what can be shown: an informer on a kind the
	// user may not list would retry forever and never sync.
	unwatched := map[string]string{}
	var kinds []client.Object
	for _, w := range watched {
		err := cl.List(ctx, w.list, append(listOpts, client.Limit(1))...)
		switch {
		case err == nil:
			kinds = append(kinds, w.obj)
		case apierrors.IsForbidden(err):
			unwatched[w.kind] = "you may not list " + w.kind
		case meta.IsNoMatchError(err) || apierrors.IsNotFound(err):
			unwatched[w.kind] = "the cluster does not serve " + w.kind + " (kars CRDs not installed?)"
		default:
			return fmt.Errorf("list %s: %w", w.kind, err)
		}
	}
	c, err := cache.New(cfg, opts)
	if err != nil {
		return err
	}
	for _, obj := range kinds {
		inf, err := c.GetInformer(ctx, obj)
		if err != nil {
			return err
		}
		if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { forward(send, o, false) },
			UpdateFunc: func(_, o any) { forward(send, o, false) },
			DeleteFunc: func(o any) { forward(send, o, true) },
		}); err != nil {
			return err
		}
	}
	go func() {
		if err := c.Start(ctx); err != nil && ctx.Err() == nil {
			send(ErrMsg{Err: err})
		}
	}()
	go func() {
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if !c.WaitForCacheSync(sctx) {
			if ctx.Err() == nil {
				send(ErrMsg{Err: fmt.Errorf("the watches did not sync within a minute")})
			}
			return
		}
		send(SyncedMsg{Unwatched: unwatched})
	}()
	return nil
}

// forward sends one informer event; a deletion seen only after a relist
// arrives wrapped in DeletedFinalStateUnknown.
func forward(send func(tea.Msg), o any, deleted bool) {
	if d, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	if obj, ok := o.(client.Object); ok {
		send(ObjectMsg{Obj: obj, Deleted: deleted})
	}
}
