package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/routerconfig"
)

// McpRunner runs the McpServers that have an image, wherever the substrate
// runs pods. The Kubernetes one applies a Deployment, a Service and a
// NetworkPolicy; the local substrate of `kars dev` runs the server's
// command as a process in the network namespace of each sandbox pod that
// uses it.
type McpRunner interface {
	// RunMcpServer makes m run and reports where routers reach it.
	RunMcpServer(ctx context.Context, m *karsv1.McpServer) (McpObservation, error)
}

// McpObservation is what a runner reports of an McpServer it runs.
type McpObservation struct {
	// Endpoint is the MCP endpoint as the sandboxes' routers reach it.
	Endpoint string
	Ready    bool
	Message  string
}

// McpToolsReader reads the MCP gateway's view of its servers from a
// router's admin API (GET /admin/v1/mcp). HTTPSProber implements it; the
// router is the MCP client toward every server and holds its credentials,
// so the controller learns the tools from it rather than calling servers
// itself.
type McpToolsReader interface {
	McpStatus(ctx context.Context, t RouterTarget) ([]McpGatewayServer, error)
}

// McpGatewayServer is one server as a router's gateway sees it.
type McpGatewayServer struct {
	Name    string   `json:"name"`
	Tools   []string `json:"tools"`
	Visible []string `json:"visible"`
	Error   string   `json:"error,omitempty"`
	// Reason is "credential" when the router could not obtain its
	// credential for the server.
	Reason string `json:"reason,omitempty"`
}

// McpStatusPath is the router admin endpoint of the gateway's servers.
const McpStatusPath = "/admin/v1/mcp"

// McpStatus implements McpToolsReader.
func (p *HTTPSProber) McpStatus(ctx context.Context, t RouterTarget) ([]McpGatewayServer, error) {
	var out struct {
		Servers []McpGatewayServer `json:"servers"`
	}
	_, err := p.get(ctx, t, McpStatusPath, &out)
	return out.Servers, err
}

// Conditions and reasons of McpServer.
const (
	ConditionToolsDiscovered   = "ToolsDiscovered"
	ReasonTransportUnsupported = "TransportUnsupported"
	ReasonWorkloadStarting     = "WorkloadStarting"
	ReasonNoSandbox            = "NoSandbox"
	ReasonDiscoveryPending     = "DiscoveryPending"
	ReasonDiscoveryFailed      = "DiscoveryFailed"
	// ReasonCredentialUnavailable: a router could not obtain its
	// credential for the server (an OAuth grant or token exchange refused,
	// a token file missing); the message says why, without the token.
	ReasonCredentialUnavailable = "CredentialUnavailable"
	ReasonDiscovered            = "Discovered"
)

// McpServerReconciler runs an McpServer (or takes its url), reports the
// endpoint the sandboxes' routers use, and the tools their gateways
// discovered: fetch → run → discover → report. The sandbox reconciler
// compiles the endpoint into each listed sandbox's router config.
type McpServerReconciler struct {
	client     client.Client
	runner     McpRunner
	prober     RouterProber
	now        func() time.Time
	rediscover time.Duration
}

// Reconcile implements reconcile.Reconciler.
func (r *McpServerReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var m karsv1.McpServer
	if err := r.client.Get(ctx, req.NamespacedName, &m); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !m.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil // owner references remove what kars runs
	}
	st := *m.Status.DeepCopy()
	st.ObservedGeneration = m.Generation
	now := metav1.NewTime(r.now().Truncate(time.Second))
	set := func(t string, ok bool, reason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		c := metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: m.Generation, LastTransitionTime: now}
		if prev := meta.FindStatusCondition(st.Conditions, t); prev != nil && prev.Status == s {
			c.LastTransitionTime = prev.LastTransitionTime
		}
		meta.SetStatusCondition(&st.Conditions, c)
	}
	requeue := r.rediscover
	var runErr error
	starting := false
	switch {
	case !routerconfig.ValidMCPServerName(m.Name):
		st.Phase, st.Endpoint = "Failed", ""
		set(karsv1.ConditionReady, false, render.ReasonInvalidSpec, "the name must be a DNS label: it is the server part of mcp:<server>.<tool>")
	case m.Spec.URL != "":
		st.Endpoint = m.Spec.URL
	case m.Spec.Transport == "stdio":
		st.Phase, st.Endpoint = "Failed", ""
		set(karsv1.ConditionReady, false, ReasonTransportUnsupported,
			"the router's gateway reaches servers over HTTP; run the server with transport streamable-http (or sse)")
	default:
		obs, err := r.runner.RunMcpServer(ctx, &m)
		if err != nil {
			runErr = err
			st.Phase = "Failed"
			set(karsv1.ConditionReady, false, ReasonApplyFailed, err.Error())
			break
		}
		st.Endpoint = obs.Endpoint
		if starting = !obs.Ready; starting {
			st.Phase = "Pending"
			set(karsv1.ConditionReady, false, ReasonWorkloadStarting, obs.Message)
			requeue = 5 * time.Second
		}
	}
	if st.Endpoint != "" && !starting {
		tools, reason, msg := r.discover(ctx, &m)
		st.DiscoveredTools = tools
		set(ConditionToolsDiscovered, reason == ReasonDiscovered, reason, msg)
		if reason == ReasonDiscovered {
			st.Phase = "Ready"
			set(karsv1.ConditionReady, true, ReasonDiscovered, msg)
		} else {
			st.Phase = "Pending"
			set(karsv1.ConditionReady, false, reason, msg)
			requeue = 10 * time.Second
		}
	}
	if !equality.Semantic.DeepEqual(st, m.Status) {
		patch := client.MergeFrom(m.DeepCopy())
		m.Status = st
		if err := r.client.Status().Patch(ctx, &m, patch); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{RequeueAfter: requeue}, runErr
}

// discover asks the routers of the listed sandboxes which tools their
// gateway sees on this server. It returns the union of the tools any of
// them listed.
func (r *McpServerReconciler) discover(ctx context.Context, m *karsv1.McpServer) ([]string, string, string) {
	if len(m.Spec.Sandboxes) == 0 {
		return nil, ReasonNoSandbox, "no sandbox is listed in spec.sandboxes, so no router uses the server"
	}
	reader, ok := r.prober.(McpToolsReader)
	if !ok {
		return nil, ReasonDiscoveryPending, "this controller cannot read routers' gateways"
	}
	var tools, problems []string
	asked := 0
	credential := false
	for _, name := range m.Spec.Sandboxes {
		var sb karsv1.KarsSandbox
		if err := r.client.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: name}, &sb); err != nil {
			problems = append(problems, fmt.Sprintf("sandbox %s: %v", name, client.IgnoreNotFound(err)))
			continue
		}
		if sb.Status.Phase != karsv1.SandboxRunning {
			problems = append(problems, fmt.Sprintf("sandbox %s is %s", name, sb.Status.Phase))
			continue
		}
		t, err := r.routerTarget(ctx, &sb)
		if err != nil {
			problems = append(problems, fmt.Sprintf("sandbox %s: %v", name, err))
			continue
		}
		servers, err := reader.McpStatus(ctx, t)
		asked++
		if err != nil {
			problems = append(problems, fmt.Sprintf("router of sandbox %s: %v", name, err))
			continue
		}
		i := slices.IndexFunc(servers, func(s McpGatewayServer) bool { return s.Name == m.Name })
		switch {
		case i < 0:
			problems = append(problems, fmt.Sprintf("the router of sandbox %s does not serve it yet", name))
		case servers[i].Error != "":
			problems = append(problems, fmt.Sprintf("the router of sandbox %s: %s", name, servers[i].Error))
			credential = credential || servers[i].Reason == "credential"
		default:
			for _, tool := range servers[i].Tools {
				if !slices.Contains(tools, tool) {
					tools = append(tools, tool)
				}
			}
			slices.Sort(tools)
			return tools, ReasonDiscovered, fmt.Sprintf("%d tools, listed by the router of sandbox %s", len(tools), name)
		}
	}
	reason := ReasonDiscoveryPending
	if asked > 0 {
		reason = ReasonDiscoveryFailed
	}
	if credential {
		reason = ReasonCredentialUnavailable
	}
	return tools, reason, strings.Join(problems, "; ")
}

// routerTarget is how to reach a sandbox's router admin API.
func (r *McpServerReconciler) routerTarget(ctx context.Context, sb *karsv1.KarsSandbox) (RouterTarget, error) {
	return adminTarget(ctx, r.client, sb)
}

// adminTarget is how to reach a sandbox's router admin API with the
// credentials in its admin Secret, before the sandbox's status names the
// endpoint too (it is the router's in-cluster name); it never creates
// the credentials.
func adminTarget(ctx context.Context, c client.Reader, sb *karsv1.KarsSandbox) (RouterTarget, error) {
	t, ok, err := routerTargetOf(ctx, c, sb)
	if err != nil || ok {
		return t, err
	}
	names, err := render.NamesFor(sb)
	if err != nil {
		return RouterTarget{}, err
	}
	var s corev1.Secret
	if err := c.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: names.RouterAdmin}, &s); err != nil {
		return RouterTarget{}, fmt.Errorf("admin Secret: %w", err)
	}
	if !ownedBy(&s, sb) {
		return RouterTarget{}, fmt.Errorf("admin Secret %s is not the sandbox's", names.RouterAdmin)
	}
	return RouterTarget{Endpoint: fmt.Sprintf("https://%s:%d", names.RouterHostname, render.RouterAdminPort),
		ServerName: names.RouterHostname, CertPEM: s.Data[render.AdminCertKey], Token: s.Data[render.AdminTokenKey]}, nil
}

// KubeMcpRunner runs McpServers as Deployments on a cluster.
type KubeMcpRunner struct {
	apply  *applier
	reader client.Reader
}

// RunMcpServer implements McpRunner.
func (k *KubeMcpRunner) RunMcpServer(ctx context.Context, m *karsv1.McpServer) (McpObservation, error) {
	w, err := render.RenderMcpServer(m)
	if err != nil {
		return McpObservation{}, err
	}
	for _, obj := range []client.Object{w.NetworkPolicy, w.Service, w.Deployment} {
		if _, err := k.apply.apply(ctx, obj); err != nil {
			return McpObservation{}, err
		}
	}
	obs := McpObservation{Endpoint: render.McpEndpointInCluster(m), Message: "waiting for the server's pod to be available"}
	var d appsv1.Deployment
	if err := k.reader.Get(ctx, client.ObjectKeyFromObject(w.Deployment), &d); err == nil && d.Status.AvailableReplicas > 0 {
		obs.Ready, obs.Message = true, ""
	}
	return obs, nil
}

// setupMcpServers registers the McpServer reconciler and makes McpServer
// changes (spec, endpoint, deletion) reconcile the sandboxes they list.
func setupMcpServers(mgr ctrl.Manager, o Options, b *builder.Builder) (*builder.Builder, error) {
	c := mgr.GetClient()
	runner := o.McpRunner
	if runner == nil {
		runner = &KubeMcpRunner{apply: &applier{c: c, live: mgr.GetAPIReader(), metrics: getMetrics()}, reader: c}
	}
	r := &McpServerReconciler{client: c, runner: runner, prober: o.Prober, now: o.Now, rediscover: 5 * time.Minute}
	err := ctrl.NewControllerManagedBy(mgr).
		Named("mcpserver").
		For(&karsv1.McpServer{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Owns(&appsv1.Deployment{}).
		Watches(&karsv1.KarsSandbox{}, handler.EnqueueRequestsFromMapFunc(mcpServersOf(c)), builder.WithPredicates(phaseChanged{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: o.MaxConcurrentReconciles}).
		Complete(r)
	if err != nil {
		return nil, err
	}
	return b.Watches(&karsv1.McpServer{}, handler.EnqueueRequestsFromMapFunc(sandboxesOfMcp),
		builder.WithPredicates(mcpBindingChanged{})), nil
}

// sandboxesOfMcp maps an McpServer to the sandboxes it lists.
func sandboxesOfMcp(_ context.Context, o client.Object) []reconcile.Request {
	m := o.(*karsv1.McpServer)
	out := make([]reconcile.Request, 0, len(m.Spec.Sandboxes))
	for _, s := range m.Spec.Sandboxes {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: m.Namespace, Name: s}})
	}
	return out
}

// mcpServersOf maps a sandbox to the McpServers of its namespace that list
// it: a sandbox becoming ready is when their tools can be discovered.
func mcpServersOf(c client.Reader) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		var list karsv1.McpServerList
		if err := c.List(ctx, &list, client.InNamespace(o.GetNamespace())); err != nil {
			return nil
		}
		var out []reconcile.Request
		for _, m := range list.Items {
			if slices.Contains(m.Spec.Sandboxes, o.GetName()) {
				out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&m)})
			}
		}
		return out
	}
}

// mcpBindingChanged passes McpServer events that change what a sandbox's
// router is given: the spec, the endpoint, or the server going away. The
// server's own discovery writes do not.
type mcpBindingChanged struct{ predicate.Funcs }

// Update implements predicate.Predicate.
func (mcpBindingChanged) Update(e event.UpdateEvent) bool {
	o, n := e.ObjectOld.(*karsv1.McpServer), e.ObjectNew.(*karsv1.McpServer)
	return o.Generation != n.Generation || o.Status.Endpoint != n.Status.Endpoint ||
		o.DeletionTimestamp.IsZero() != n.DeletionTimestamp.IsZero()
}

// Create implements predicate.Predicate.
func (mcpBindingChanged) Create(event.CreateEvent) bool { return true }

// Delete implements predicate.Predicate.
func (mcpBindingChanged) Delete(event.DeleteEvent) bool { return true }

// phaseChanged passes sandbox events that change its phase or enforced
// config (a router that now serves a server).
type phaseChanged struct{ predicate.Funcs }

// Update implements predicate.Predicate.
func (phaseChanged) Update(e event.UpdateEvent) bool {
	o, n := e.ObjectOld.(*karsv1.KarsSandbox), e.ObjectNew.(*karsv1.KarsSandbox)
	return o.Status.Phase != n.Status.Phase || o.Status.EnforcedDigest != n.Status.EnforcedDigest ||
		o.DeletionTimestamp.IsZero() != n.DeletionTimestamp.IsZero()
}

// bindings lists what besides the policies shapes sb's router: the
// McpServers of its namespace that list it and report an endpoint, and
// its KarsMemory.
func bindings(ctx context.Context, c client.Reader, sb *karsv1.KarsSandbox) (render.Bindings, error) {
	var list karsv1.McpServerList
	if err := c.List(ctx, &list, client.InNamespace(sb.Namespace)); err != nil {
		return render.Bindings{}, fmt.Errorf("list McpServers in %s: %w", sb.Namespace, err)
	}
	mem, err := memoryOf(ctx, c, sb)
	if err != nil {
		return render.Bindings{}, err
	}
	return render.Bindings{MCP: render.McpServersFor(sb, list.Items), Memory: mem}, nil
}
