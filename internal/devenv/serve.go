package devenv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/blueprint"
	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/devcluster"
	"github.com/kars-io/kars/internal/localsubstrate"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/runtimeenv"
	"github.com/kars-io/kars/internal/sandbox/local"
	"github.com/kars-io/kars/internal/version"
)

// DefaultSandbox is the sandbox `kars dev` brings up.
const DefaultSandbox = "dev-agent"

// SystemNamespace is the kars system namespace of the dev cluster.
const SystemNamespace = "kars-system"

// ServeOptions configure the daemon.
type ServeOptions struct {
	Paths  Paths
	Assets string
	BinDir string
	// RegistryAddr is where the local OCI registry listens.
	RegistryAddr string
	Getenv       func(string) string
}

// Serve is the daemon: it brings the stack up, reports progress, and runs
// until ctx ends, then tears every sandbox and the control plane down.
func Serve(ctx context.Context, o ServeOptions) (err error) {
	if o.RegistryAddr == "" {
		o.RegistryAddr = RegistryAddr
	}
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	for _, d := range []string{o.Paths.Dir, filepath.Dir(o.Paths.Log()), o.Paths.Sandboxes(), o.Paths.Workspaces()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// The router (UID 1001) and the agent (UID 1000) must traverse to
	// their folders under here.
	for _, d := range []string{filepath.Dir(o.Paths.Sandboxes()), o.Paths.Sandboxes(), o.Paths.Workspaces()} {
		_ = os.Chmod(d, 0o711)
	}
	release, err := lockDaemon(o.Paths)
	if err != nil {
		return err
	}
	defer release()
	pr, err := os.OpenFile(o.Paths.Progress(), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer pr.Close()
	step := func(format string, a ...any) { fmt.Fprintf(pr, progressStep+format+"\n", a...) }
	defer func() {
		if err != nil {
			fmt.Fprintf(pr, progressFail+"%s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		}
	}()
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	log.SetLogger(logr.FromSlogHandler(logger.Handler()))
	_ = os.Remove(summaryPath(o.Paths))

	if cleaned, err := local.CleanupStale(o.Paths.Sandboxes()); err != nil {
		return fmt.Errorf("clean up sandboxes left by an earlier run: %w", err)
	} else if len(cleaned) > 0 {
		step("cleaned up %d sandbox(es) left by an earlier crash", len(cleaned))
	}
	binDir := o.BinDir
	if binDir == "" {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		binDir = filepath.Dir(self)
	}
	if binDir, err = stageBinaries(binDir, "kars-router", "kars-agent"); err != nil {
		return err
	}

	cluster, err := devcluster.Start(ctx, devcluster.Options{Dir: o.Paths.Cluster(), Assets: o.Assets, Progress: func(s string) { step("%s", s) }})
	if err != nil {
		return err
	}
	defer cluster.Stop()
	step("API server ready at %s (kubeconfig %s)", cluster.Server, cluster.Kubeconfig)

	reg, err := startRegistry(o.RegistryAddr)
	if err != nil {
		return err
	}
	defer reg.close()
	agentImage, err := reg.pushBinaryImage(ctx, "kars/kars-agent", version.Version, filepath.Join(binDir, "kars-agent"))
	if err != nil {
		return err
	}
	step("local OCI registry on %s holds %s (label %s=v1)", reg.host, agentImage, ContractLabel)

	mgr, err := ctrl.NewManager(cluster.Config, ctrl.Options{
		Scheme:                 controller.Scheme(),
		Cache:                  controller.CacheOptions(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		return err
	}
	routerState := o.Paths.RouterStates()
	if err := os.MkdirAll(routerState, 0o711); err != nil {
		return err
	}
	upstreamRoots, err := devUpstreamRoots()
	if err != nil {
		return err
	}
	sub := localsubstrate.New(localsubstrate.Options{
		Client: mgr.GetAPIReader(), StateRoot: o.Paths.Sandboxes(), WorkspaceRoot: o.Paths.Workspaces(), BinDir: binDir,
		// The runtime environments are read by the agents in place (read-only
		// by mode and by the pod's read-only root), so they stay visible.
		RouterStateRoot: routerState, Hide: o.Paths.HiddenFromPods(binDir, runtimeenv.DefaultRoot()),
		SocketDir: o.Paths.Sockets, Log: logger, MeshAddr: MeshAddr, UpstreamRoots: upstreamRoots,
	})
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = sub.Shutdown(stopCtx)
	}()
	env := render.Environment{
		Catalog:         render.Catalog{Registry: reg.host + "/kars", Version: version.Version, GitSyncImage: render.DefaultGitSyncImage},
		SystemNamespace: SystemNamespace,
		A2AGateway:      render.A2AGateway{PublicURL: A2AGatewayURL},
		Mesh:            MeshEndpoints(),
	}
	signers, err := devSigners()
	if err != nil {
		return err
	}
	// The offload broker runs in the daemon too and reaches kars-mesh on
	// loopback, as the hosts do.
	offload := &controller.OffloadOptions{Dir: o.Paths.Offload(), Logger: logger}
	if err := controller.Setup(mgr, controller.Options{Env: env, Substrate: sub, Prober: &controller.HTTPSProber{DialContext: sub.DialContext}, Signers: signers, Offload: offload, McpRunner: sub, EvalRunner: sub}); err != nil {
		return err
	}
	mgrCtx, stopMgr := context.WithCancel(ctx)
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- mgr.Start(mgrCtx) }()
	defer func() { stopMgr(); <-mgrDone }()
	step("controller running with the local sandbox substrate (pods under %s)", o.Paths.Sandboxes())

	cl, err := client.New(cluster.Config, client.Options{Scheme: controller.Scheme()})
	if err != nil {
		return err
	}
	go runA2AGateway(mgrCtx, o.Paths, cluster.Config, cl, sub.DialContext, logger)
	stopMesh, err := startMesh(o.Paths.Mesh(), cl, logger)
	if err != nil {
		return err
	}
	defer stopMesh()
	step("kars-mesh (registry and relay) on %s; routers reach it through a socket in their folder", MeshAddr)
	provider, err := DetectProvider(o.Getenv)
	if err != nil {
		return err
	}
	if err := ensureDefaults(ctx, cl, provider, agentImage, step); err != nil {
		return err
	}
	sb, err := waitReady(ctx, cl, DefaultSandbox, "kars-"+DefaultSandbox, 3*time.Minute, mgrDone)
	if err != nil {
		return err
	}
	if err := os.WriteFile(summaryPath(o.Paths), []byte(summary(o.Paths, cluster, sb, provider)), 0o600); err != nil {
		return err
	}
	fmt.Fprintln(pr, progressReady+DefaultSandbox)

	select {
	case <-ctx.Done():
		return nil
	case err := <-mgrDone:
		mgrDone <- err
		if err != nil {
			return fmt.Errorf("controller stopped: %w", err)
		}
		return nil
	}
}

// ensureDefaults creates the default sandbox's objects unless they exist:
// a resumed environment keeps whatever the user changed.
func ensureDefaults(ctx context.Context, cl client.Client, p Provider, agentImage string, step func(string, ...any)) error {
	for _, ns := range []string{SystemNamespace} {
		if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	// Enhanced isolation refuses to start without every layer, which
	// rootless mode cannot give; say so rather than fail.
	isolation := karsv1.IsolationEnhanced
	if os.Geteuid() != 0 {
		isolation = karsv1.IsolationStandard
		step("not root: %s gets isolation standard (rootless: fewer guarantees, see docs/local-sandbox.md)", DefaultSandbox)
	}
	objs, err := blueprint.Build(blueprint.Options{
		Name: DefaultSandbox, Runtime: "byo", BYOImage: agentImage, Target: p.Target, APIKey: p.Key,
		TokenBudgetDaily: 200000, Isolation: isolation,
		Instructions: "You are kars's reference agent, running in a governed local sandbox. Be brief.",
	})
	if err != nil {
		return err
	}
	created := 0
	for _, obj := range objs {
		err := cl.Create(ctx, obj)
		switch {
		case apierrors.IsAlreadyExists(err):
			if sb, ok := obj.(*karsv1.KarsSandbox); ok {
				// Resumed: keep the user's spec but run this build's agent.
				cur := &karsv1.KarsSandbox{}
				if err := cl.Get(ctx, client.ObjectKeyFromObject(sb), cur); err != nil {
					return err
				}
				if cur.Spec.Runtime.BYO != nil && cur.Spec.Runtime.BYO.Image != agentImage && strings.Contains(cur.Spec.Runtime.BYO.Image, "/kars/kars-agent") {
					patch := client.MergeFrom(cur.DeepCopy())
					cur.Spec.Runtime.BYO.Image = agentImage
					if err := cl.Patch(ctx, cur, patch); err != nil {
						return err
					}
				}
			}
		case err != nil:
			return fmt.Errorf("create %T %s: %w", obj, obj.GetName(), err)
		default:
			created++
		}
	}
	if created > 0 {
		model := p.Target.Model
		if p.Offline() {
			model += " (the built-in OFFLINE model: deterministic replies, no network)"
		}
		step("created sandbox %s in namespace kars-%s: %s %s, daily budget 200000 tokens, isolation %s", DefaultSandbox, DefaultSandbox, p.Target.Provider, model, isolation)
	} else {
		step("resumed sandbox %s", DefaultSandbox)
	}
	return nil
}

func waitReady(ctx context.Context, cl client.Client, name, ns string, timeout time.Duration, mgrDone chan error) (*karsv1.KarsSandbox, error) {
	deadline := time.Now().Add(timeout)
	sb := &karsv1.KarsSandbox{}
	for {
		if err := cl.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, sb); err == nil {
			if c := meta.FindStatusCondition(sb.Status.Conditions, karsv1.ConditionReady); c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == sb.Generation {
				return sb, nil
			}
		}
		if time.Now().After(deadline) {
			msg := "no status yet"
			if c := meta.FindStatusCondition(sb.Status.Conditions, karsv1.ConditionReady); c != nil {
				msg = c.Reason + ": " + c.Message
			}
			return nil, fmt.Errorf("sandbox %s/%s not ready after %s (%s)", ns, name, timeout, msg)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case err := <-mgrDone:
			mgrDone <- err
			return nil, errors.Join(errors.New("the controller stopped"), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func summary(p Paths, c *devcluster.Cluster, sb *karsv1.KarsSandbox, prov Provider) string {
	var b strings.Builder
	fmt.Fprintf(&b, "kars dev is running.\n\n")
	fmt.Fprintf(&b, "  API server   %s (Kubernetes %s)\n", c.Server, "v1.37.2")
	fmt.Fprintf(&b, "  kubeconfig   %s   (export KUBECONFIG=%s for kubectl)\n", c.Kubeconfig, c.Kubeconfig)
	fmt.Fprintf(&b, "  state        %s\n", p.Dir)
	fmt.Fprintf(&b, "  logs         %s\n", filepath.Dir(p.Log()))
	model := sb.Status.Model
	if prov.Offline() {
		model += "  ← OFFLINE model: set a provider with `kars credentials set`"
	}
	fmt.Fprintf(&b, "  sandbox      %s/%s: %s, model %s\n", sb.Namespace, sb.Name, sb.Status.Phase, model)
	fmt.Fprintf(&b, "  A2A gateway  %s   (certificate %s; expose a sandbox with kars a2a expose)\n\n", A2AGatewayURL, p.A2AGatewayCert())
	fmt.Fprintf(&b, "Talk to it:    kars connect %s    (or: kars connect %s -m \"hello\")\n", sb.Name, sb.Name)
	fmt.Fprintf(&b, "Inspect:       kars status %s  ·  kars audit tail %s\n", sb.Name, sb.Name)
	fmt.Fprintf(&b, "Stop:          kars dev down\n")
	return b.String()
}

// devUpstreamRoots is the bundle of SSL_CERT_FILE when kars dev runs with
// it set: the routers then verify upstream hosts with the roots the
// developer's own programs use (localsubstrate.Options.UpstreamRoots).
func devUpstreamRoots() ([]byte, error) {
	f := os.Getenv("SSL_CERT_FILE")
	if f == "" {
		return nil, nil
	}
	b, err := os.ReadFile(f)
	if err != nil {
		return nil, fmt.Errorf("SSL_CERT_FILE: %w", err)
	}
	return b, nil
}
