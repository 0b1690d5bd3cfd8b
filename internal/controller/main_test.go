package controller

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-containerregistry/pkg/authn"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/a2a/peer"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/controlplane"
	"github.com/kars-io/kars/internal/eval"
	"github.com/kars-io/kars/internal/mesh/bridge"
	"github.com/kars-io/kars/internal/ociimage"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/testenv"
)

// One control plane and one running controller serve every integration
// test of the package (starting a control plane costs ~5 s).
var (
	k8s     client.Client
	counter *requestCounter
	routers *routerFarm
	byoReg  *httptest.Server
	// partnerCards serves foreign agents' cards (A2AAgent tests) over TLS.
	partnerCards *cardServer
	inspector    *countingInspector
	// evalTargets are the sandboxes KarsEvals reach, registered by tests.
	evalTargets = &targetFarm{targets: map[string]eval.Target{}}
	startErr    error
	// testMesh is a real kars-mesh (registry, relay, redemption) on
	// loopback, which the offload broker and the offload tests' hosts
	// and routers connect to.
	testMesh *httptest.Server
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	if os.Getenv("KARS_TEST_VERBOSE") != "" {
		ctrl.SetLogger(logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, nil)))
	} else {
		ctrl.SetLogger(logr.Discard())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cp, err := controlplane.Start(ctx, controlplane.Options{ControllerManager: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start control plane:", err)
		os.Exit(1)
	}
	code := func() int {
		defer cp.Stop()
		defer cancel()
		if err := startController(ctx, cp.Config); err != nil {
			fmt.Fprintln(os.Stderr, "start controller:", err)
			return 1
		}
		return m.Run()
	}()
	if testMeshDir != "" {
		os.RemoveAll(testMeshDir)
	}
	os.Exit(code)
}

func startController(ctx context.Context, base *rest.Config) error {
	scheme := testenv.Scheme()
	var err error
	if k8s, err = client.New(base, client.Options{Scheme: scheme}); err != nil {
		return err
	}
	counter = &requestCounter{}
	cfg := rest.CopyConfig(base)
	cfg.QPS, cfg.Burst = -1, 0
	cfg.WrapTransport = counter.wrap
	mgr, err := ctrl.NewManager(cfg, manager.Options{
		Scheme:                 scheme,
		Cache:                  CacheOptions(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		return err
	}
	routers = &routerFarm{servers: map[string]*standInRouter{}}
	// The system namespace holds the A2A gateway's routing table and
	// identity.
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kars-system"}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	byoReg = httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	inspector = &countingInspector{inner: &ociimage.Checker{}}
	partnerCards = newCardServer()
	offloadOpts, err := startTestMesh(ctx)
	if err != nil {
		return err
	}
	err = Setup(mgr, Options{
		Env: render.Environment{
			Catalog:         render.Catalog{Registry: "ghcr.io/kars-io", Version: "v0.1.0", GitSyncImage: render.DefaultGitSyncImage},
			SystemNamespace: "kars-system",
			ClusterDNS:      []netip.Addr{netip.MustParseAddr("10.96.0.10")},
			A2AGateway:      render.A2AGateway{PublicURL: "https://a2a.kars.test"},
			Mesh:            render.ClusterMesh("kars-system"),
		},
		Prober:              &HTTPSProber{DialContext: routers.dial, Timeout: 2 * time.Second},
		Signers:             egressTestSigners(),
		Images:              inspector,
		AuditAnchorInterval: time.Second,
		EvalRunner:          evalTargets,
		A2ACards:            &peer.Fetcher{AllowPrivate: true, RootCAs: partnerCards.pool()},
		Offload:             offloadOpts,
	})
	if err != nil {
		return err
	}
	go func() {
		if err := mgr.Start(ctx); err != nil {
			startErr = err
		}
	}()
	return nil
}

// requestCounter counts the controller's API requests, and its writes
// separately.
type requestCounter struct {
	requests, writes atomic.Int64
	mu               sync.Mutex
	lastWrites       []string
}

func (c *requestCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		c.requests.Add(1)
		switch req.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
			c.writes.Add(1)
			c.mu.Lock()
			c.lastWrites = append(c.lastWrites, req.Method+" "+req.URL.Path)
			if len(c.lastWrites) > 50 {
				c.lastWrites = c.lastWrites[1:]
			}
			c.mu.Unlock()
		}
		return rt.RoundTrip(req)
	})
}

func (c *requestCounter) recentWrites() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lastWrites...)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// countingInspector counts registry inspections, to show that an
// unreachable registry is retried with backoff and not in a hot loop.
type countingInspector struct {
	inner ImageInspector
	mu    sync.Mutex
	calls map[string]int
}

func (c *countingInspector) Inspect(ctx context.Context, ref string, kc authn.Keychain) (ociimage.Image, error) {
	c.mu.Lock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[ref]++
	c.mu.Unlock()
	return c.inner.Inspect(ctx, ref, kc)
}

func (c *countingInspector) count(ref string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[ref]
}

// routerFarm plays the pods' network: the prober's dials to a router's
// Service name reach the stand-in router registered for that sandbox.
type routerFarm struct {
	mu      sync.Mutex
	servers map[string]*standInRouter // "host:port" → router
}

func (f *routerFarm) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	f.mu.Lock()
	r, ok := f.servers[addr]
	f.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("dial %s: no such router (connection refused)", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, r.srv.Listener.Addr().String())
}

// standInRouter plays a sandbox's kars-router for the handshake: it
// serves the router's admin digest endpoint (same path, bearer token, TLS
// certificate and JSON answer as internal/router) for the config it loaded
// from the rendered ConfigMap with routerconfig.Parse, the function the
// router loads its config with. The kubelet's part (mounting the ConfigMap
// and the admin Secret) is played by the test.
type standInRouter struct {
	snap  atomic.Pointer[routerconfig.Snapshot]
	token []byte
	srv   *httptest.Server
	key   string
	// audit, when set, is served as the router's audit head.
	audit atomic.Pointer[AuditHead]
	// mcp, when set, is served as the router's MCP gateway view.
	mcp atomic.Pointer[[]McpGatewayServer]
	// memory, when set, is served as the router's memory binding status;
	// forgets counts POST /admin/v1/memory/forget.
	memory  atomic.Pointer[RouterMemory]
	forgets atomic.Int64
	// egress is the egress state the router loaded (egress.json).
	egress atomic.Pointer[routerconfig.EgressState]
	// mesh is a real mesh bridge (not connected to any relay) serving
	// the admin API's mesh endpoints, so the controller's policy pushes
	// land where a router keeps them.
	mesh *bridge.Bridge
	// other, when set, answers the admin endpoints besides the digest and
	// the audit head (tests of SRE actions).
	other atomic.Pointer[http.HandlerFunc]
	// lifetime, when set, is served as the router's token ledger
	// (GET /admin/v1/budget).
	lifetime atomic.Pointer[int64]
	// tail, when set, is served as the router's audit tail
	// (GET /admin/v1/audit/tail).
	tail atomic.Pointer[[]audit.Entry]
}

func (s *standInRouter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), s.token) != 1 {
		http.Error(w, `{"error":"admin API requires the router's admin bearer token"}`, http.StatusUnauthorized)
		return
	}
	if r.Method == http.MethodGet && r.URL.Path == EgressPath {
		serveEgressStatus(w, s.egress.Load())
		return
	}
	if strings.HasPrefix(r.URL.Path, MeshStatusPath) && s.mesh != nil {
		s.mesh.AdminHandler().ServeHTTP(w, r)
		return
	}
	if n := s.lifetime.Load(); n != nil && r.Method == http.MethodGet && r.URL.Path == "/admin/v1/budget" {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"ledger":{"lifetime":%d}}`, *n)
		return
	}
	if es := s.tail.Load(); es != nil && r.Method == http.MethodGet && r.URL.Path == "/admin/v1/audit/tail" {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(*es)
		return
	}
	if h := s.audit.Load(); h != nil && r.Method == http.MethodGet && r.URL.Path == AuditHeadPath {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(h)
		return
	}
	if m := s.memory.Load(); m != nil && r.URL.Path == MemoryStatusPath && r.Method == http.MethodGet {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(m)
		return
	}
	if r.URL.Path == MemoryForgetPath && r.Method == http.MethodPost {
		s.forgets.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"deletedScopes":1}`)
		return
	}
	if m := s.mcp.Load(); m != nil && r.Method == http.MethodGet && r.URL.Path == McpStatusPath {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"servers": *m})
		return
	}
	if h := s.other.Load(); h != nil && r.URL.Path != DigestPath {
		(*h)(w, r)
		return
	}
	if r.Method != http.MethodGet || r.URL.Path != DigestPath {
		http.NotFound(w, r)
		return
	}
	snap := s.snap.Load()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"digest": snap.Digest, "schemaVersion": snap.Config.SchemaVersion, "sandbox": snap.Config.Sandbox})
}

// startRouter starts the stand-in router of a sandbox from its admin Secret
// and router ConfigMap, as a pod would.
func startRouter(t *testing.T, sb *karsv1.KarsSandbox) *standInRouter {
	t.Helper()
	names, err := render.NamesFor(sb)
	if err != nil {
		t.Fatal(err)
	}
	var sec corev1.Secret
	get(t, sb.Namespace, names.RouterAdmin, &sec)
	sr := &standInRouter{token: sec.Data[render.AdminTokenKey], key: fmt.Sprintf("%s:%d", names.RouterHostname, render.RouterAdminPort)}
	sr.snap.Store(loadRouterConfig(t, sb, names))
	sr.egress.Store(loadEgressState(t, sb, names))
	sr.mesh = standInBridge(t, sr.snap.Load().Config)
	cert, err := tls.X509KeyPair(sec.Data[render.AdminCertKey], sec.Data[render.AdminKeyKey])
	if err != nil {
		t.Fatal(err)
	}
	sr.srv = httptest.NewUnstartedServer(sr)
	sr.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	sr.srv.StartTLS()
	routers.mu.Lock()
	routers.servers[sr.key] = sr
	routers.mu.Unlock()
	t.Cleanup(func() {
		routers.mu.Lock()
		delete(routers.servers, sr.key)
		routers.mu.Unlock()
		sr.srv.Close()
	})
	return sr
}

// reload plays the kubelet updating the mounted ConfigMap and the router's
// watcher swapping the new config in.
func (s *standInRouter) reload(t *testing.T, sb *karsv1.KarsSandbox) {
	t.Helper()
	names, _ := render.NamesFor(sb)
	s.snap.Store(loadRouterConfig(t, sb, names))
	s.egress.Store(loadEgressState(t, sb, names))
}

func loadRouterConfig(t *testing.T, sb *karsv1.KarsSandbox, names render.Names) *routerconfig.Snapshot {
	t.Helper()
	var cm corev1.ConfigMap
	get(t, sb.Namespace, names.RouterConfig, &cm)
	snap, err := routerconfig.Parse([]byte(cm.Data[routerconfig.FileName]))
	if err != nil {
		t.Fatalf("the router refuses the rendered config: %v", err)
	}
	return snap
}

// requireController skips under -short and fails when the shared
// controller could not start.
func requireController(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs a control plane (run without -short)")
	}
	if startErr != nil {
		t.Fatalf("controller manager stopped: %v", startErr)
	}
}

func get(t *testing.T, ns, name string, obj client.Object) {
	t.Helper()
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, obj); err != nil {
		t.Fatalf("get %T %s/%s: %v", obj, ns, name, err)
	}
}

// eventually retries f until it succeeds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func newNamespace(t *testing.T, name string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), ns) })
	return name
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

var errNotYet = errors.New("not yet")

// hostOf returns the registry host of the test registry.
func hostOf(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }
