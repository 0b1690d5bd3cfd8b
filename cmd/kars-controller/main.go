// Command kars-controller reconciles KarsSandboxes into governed pods and
// compiles InferencePolicies and ToolPolicies into each sandbox's router
// configuration. It is a controller-runtime manager with leader election,
// /healthz and /readyz probes, Prometheus metrics and JSON logs. See
// docs/controller.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "kars-controller:", err)
		os.Exit(1)
	}
}

// config is the parsed command line.
type config struct {
	kubeconfig       string
	metricsAddr      string
	probeAddr        string
	leaderElect      bool
	leaderElectionID string
	systemNamespace  string
	registry         string
	imageVersion     string
	gitSyncImage     string
	clusterDNS       string
	seccompProfile   string
	a2aGatewayURL    string
	concurrency      int
	qps              float64
	burst            int
	logLevel         string
	showVersion      bool
	signerKeys       string
	plainRegistries  string
	blocklist        string
	blocklistRefresh string
	mesh             bool
	deployMesh       bool
	offloadState     string
}

func parseFlags(args []string, getenv func(string) string, out io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("kars-controller", flag.ContinueOnError)
	fs.SetOutput(out)
	env := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	fs.StringVar(&c.kubeconfig, "kubeconfig", getenv("KUBECONFIG"), "kubeconfig file; empty means in-cluster (env KUBECONFIG)")
	fs.StringVar(&c.metricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint; 0 disables it")
	fs.StringVar(&c.probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.BoolVar(&c.leaderElect, "leader-elect", true, "elect a leader so that only one replica reconciles")
	fs.StringVar(&c.leaderElectionID, "leader-election-id", "kars-controller.kars.azure.com", "name of the leader election Lease")
	fs.StringVar(&c.systemNamespace, "system-namespace", env("POD_NAMESPACE", "kars-system"), "namespace of the controller, the mesh and the A2A gateway; holds the leader Lease (env POD_NAMESPACE)")
	fs.StringVar(&c.registry, "image-registry", env("KARS_IMAGE_REGISTRY", render.DefaultRegistry), "registry prefix of kars images (router, egress guard, runtime adapters) (env KARS_IMAGE_REGISTRY)")
	fs.StringVar(&c.imageVersion, "image-version", env("KARS_IMAGE_VERSION", version.Version), "tag of kars images (env KARS_IMAGE_VERSION)")
	fs.StringVar(&c.gitSyncImage, "git-sync-image", render.DefaultGitSyncImage, "image that fetches git agent code")
	fs.StringVar(&c.clusterDNS, "cluster-dns", "", "comma-separated cluster DNS IPs the agent may query; empty reads the kube-system/kube-dns Service")
	fs.StringVar(&c.seccompProfile, "seccomp-profile", render.DefaultSeccompProfile, "Localhost seccomp profile of enhanced isolation, relative to the kubelet's seccomp directory")
	fs.StringVar(&c.a2aGatewayURL, "a2a-gateway-url", env("KARS_A2A_GATEWAY_URL", ""), "public https:// base URL of the kars-a2a-gateway; empty: no sandbox can be exposed to A2A callers (env KARS_A2A_GATEWAY_URL)")
	fs.IntVar(&c.concurrency, "max-concurrent-reconciles", 4, "KarsSandboxes reconciled in parallel")
	fs.Float64Var(&c.qps, "kube-api-qps", 50, "sustained API requests per second (client-side limit)")
	fs.IntVar(&c.burst, "kube-api-burst", 100, "API request burst")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&c.showVersion, "version", false, "print the version and exit")
	fs.StringVar(&c.signerKeys, "egress-signer-keys", getenv("KARS_EGRESS_SIGNER_KEYS"), "PEM file of the public keys (cosign format) allowlist artifacts must be signed with; without it every allowlistRef fails closed (env KARS_EGRESS_SIGNER_KEYS)")
	fs.StringVar(&c.plainRegistries, "egress-plain-http-registries", "", "comma-separated registry hosts reached over plain HTTP (a local registry)")
	fs.StringVar(&c.blocklist, "egress-blocklist", getenv("KARS_EGRESS_BLOCKLIST"), "comma-separated blocklist sources every router enforces: https://… URLs, oci://REGISTRY/REPO:TAG artifacts, configmap:NAME[/KEY] (a ConfigMap in each sandbox's namespace) (env KARS_EGRESS_BLOCKLIST)")
	fs.StringVar(&c.blocklistRefresh, "egress-blocklist-refresh", "6h", "how often routers refetch the blocklist (they keep the last good list when a fetch fails)")
	fs.BoolVar(&c.mesh, "mesh", true, "make every router its agent's AgentMesh endpoint on kars-mesh in the system namespace, and reconcile KarsPairings and TrustGraphs")
	fs.BoolVar(&c.deployMesh, "deploy-mesh", true, "apply kars-mesh (Deployment, Service, volume claim, RBAC) into the system namespace")
	fs.StringVar(&c.offloadState, "offload-state", "", "folder of the offload broker's mesh sessions and audit log; set, with -mesh, it answers offload pairings' hosts (docs/offload.md)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return c, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	c, err := parseFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	if c.showVersion {
		fmt.Fprintln(stderr, version.Get().String())
		return nil
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.logLevel)); err != nil {
		return fmt.Errorf("-log-level %q: %w", c.logLevel, err)
	}
	// controller-runtime logs through logr; debug maps to its V(1).
	log := logr.FromSlogHandler(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	ctrl.SetLogger(log)
	klog.SetLogger(log)

	restCfg, err := restConfig(c.kubeconfig)
	if err != nil {
		return err
	}
	restCfg.QPS, restCfg.Burst = float32(c.qps), c.burst
	restCfg.UserAgent = "kars-controller/" + version.Version

	dns, err := clusterDNS(ctx, restCfg, c.clusterDNS)
	if err != nil {
		return err
	}
	if len(dns) == 0 {
		log.Info("no cluster DNS found (no kube-system/kube-dns Service and no --cluster-dns): agents will resolve nothing")
	}

	mgr, err := ctrl.NewManager(restCfg, manager.Options{
		Scheme:                        controller.Scheme(),
		Cache:                         controller.CacheOptions(),
		Metrics:                       metricsserver.Options{BindAddress: c.metricsAddr},
		HealthProbeBindAddress:        c.probeAddr,
		LeaderElection:                c.leaderElect,
		LeaderElectionID:              c.leaderElectionID,
		LeaderElectionNamespace:       c.systemNamespace,
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	signers, blocklist, blocklistCM, err := egressConfig(c)
	if err != nil {
		return err
	}
	env := render.Environment{
		Catalog:            render.Catalog{Registry: c.registry, Version: c.imageVersion, GitSyncImage: c.gitSyncImage},
		SystemNamespace:    c.systemNamespace,
		ClusterDNS:         dns,
		SeccompProfile:     c.seccompProfile,
		Blocklist:          blocklist,
		BlocklistConfigMap: blocklistCM,
		A2AGateway:         render.A2AGateway{PublicURL: strings.TrimSuffix(c.a2aGatewayURL, "/")},
	}
	if c.mesh {
		env.Mesh = render.ClusterMesh(c.systemNamespace)
	}
	err = controller.Setup(mgr, controller.Options{
		Env:                     env,
		MaxConcurrentReconciles: c.concurrency,
		Signers:                 signers,
		DeployMesh:              c.mesh && c.deployMesh,
		Offload:                 offloadOptions(c),
	})
	if err != nil {
		return fmt.Errorf("set up controllers: %w", err)
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	// Ready once the informer caches are filled: before that a reconcile
	// would see an empty cluster.
	if err := mgr.AddReadyzCheck("caches", func(req *http.Request) error {
		ctx, cancel := context.WithTimeout(req.Context(), time.Second)
		defer cancel()
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return errors.New("informer caches not synced yet")
		}
		return nil
	}); err != nil {
		return err
	}
	log.Info("kars-controller starting", "version", version.Get().String(), "systemNamespace", c.systemNamespace,
		"registry", c.registry, "imageVersion", c.imageVersion, "clusterDNS", dns, "leaderElect", c.leaderElect)
	return mgr.Start(ctx)
}

// offloadOptions turns the offload broker on when the mesh is on and it
// has a state folder.
func offloadOptions(c *config) *controller.OffloadOptions {
	if !c.mesh || c.offloadState == "" {
		return nil
	}
	return &controller.OffloadOptions{Dir: c.offloadState}
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("no kubeconfig and not in a cluster: %w", err)
	}
	return cfg, nil
}

// clusterDNS parses --cluster-dns, or reads the cluster IP of the
// kube-system/kube-dns Service (kube-dns and CoreDNS both use that name).
func clusterDNS(ctx context.Context, cfg *rest.Config, flagValue string) ([]netip.Addr, error) {
	var out []netip.Addr
	if flagValue != "" {
		for _, s := range strings.Split(flagValue, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil {
				return nil, fmt.Errorf("--cluster-dns %q: %w", s, err)
			}
			out = append(out, a)
		}
		return out, nil
	}
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		return nil, err
	}
	var svc corev1.Service
	if err := c.Get(ctx, client.ObjectKey{Namespace: "kube-system", Name: "kube-dns"}, &svc); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	for _, ip := range svc.Spec.ClusterIPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			out = append(out, a)
		}
	}
	return out, nil
}
