package localsubstrate

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/source"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/ociroot"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/runtimeenv"
	"github.com/kars-io/kars/internal/sandbox/local"
)

// ReasonRuntimePreparing is RuntimeReady's reason while a runtime
// adapter's environment is installed on first use.
const ReasonRuntimePreparing = "RuntimePreparing"

// Finalizer keeps a deleted sandbox until its local pod is gone: owner
// references cannot reach processes and namespaces on this machine.
const Finalizer = "kars.io/local-pod"

// Options configure the substrate.
type Options struct {
	// Client reads the Secrets and ConfigMaps the pod mounts. Use an
	// uncached reader (the manager's API reader): the controller's cache
	// holds only the objects kars renders, not the user's credential
	// Secrets.
	Client client.Reader
	// StateRoot holds the local pods (local.Spec.StateRoot).
	StateRoot string
	// WorkspaceRoot holds each sandbox's /sandbox, kept across restarts,
	// as <root>/<namespace>/<name>.
	WorkspaceRoot string
	// BinDir holds kars-agent and kars-router.
	BinDir string
	// RouterStateRoot holds each sandbox's router state (audit log, budget
	// ledger, trust, quarantine, checkpoint key) as <root>/<namespace>/
	// <name>: the local counterpart of the router-state volume claim,
	// kept across pod restarts and removed with the sandbox. It and the
	// folders above it must be traversable by UID 1001.
	RouterStateRoot string
	// Hide are host paths no pod may read (local.Spec.Hide): the kars
	// folders, home directories, other sandboxes' files.
	Hide []string
	// WorkspaceQuota bounds each workspace (local.Spec.WorkspaceQuota);
	// zero means DefaultWorkspaceQuota, negative means none.
	WorkspaceQuota int64
	// SocketDir returns where a sandbox's agent.sock and admin.sock go.
	SocketDir func(namespace, name string) string
	// Log receives events; nil discards.
	Log *slog.Logger
	// RestartBackoff is the wait before restarting a pod whose process
	// exited; zero means 2 seconds, doubling to a minute.
	RestartBackoff time.Duration
	// Runtimes configures where runtime adapters' environments are
	// prepared and cached (runtimeenv.DefaultRoot when Root is empty).
	Runtimes runtimeenv.Options
	// ImageCache holds images unpacked for BYO agents and agentCode.oci,
	// one directory per digest; default: "images" beside StateRoot.
	ImageCache string
	// MeshAddr, when set, is kars-mesh's TCP address on the host;
	// routers reach it through MeshSocket.
	MeshAddr string
	// UpstreamRoots, when set, is a PEM bundle the routers verify
	// upstream hosts' certificates with in place of the system's roots
	// (their SSL_CERT_FILE): kars dev passes its own SSL_CERT_FILE, so a
	// router on a developer's machine trusts what the machine's programs
	// trust — a TLS-inspecting corporate proxy's CA, a private API's CA.
	UpstreamRoots []byte
}

// Substrate implements controller.Substrate with local pods.
type Substrate struct {
	o      Options
	mu     sync.Mutex
	pods   map[types.NamespacedName]*entry
	events chan event.GenericEvent
	envs   *envs
	trust  trustCache
	images *images
}

type entry struct {
	pod       *local.Pod
	hash      string
	hostname  string
	config    []byte
	hot       map[string][]byte
	cfgPath   string
	agentPort uint16
	sockets   []net.Listener
	failures  int
	nextStart time.Time
	lastErr   string
	watchStop chan struct{}
	// sidecars are the McpServers running in the pod, by name.
	sidecars map[string]*sidecar
}

var _ controller.Substrate = (*Substrate)(nil)

// DefaultWorkspaceQuota matches the workspace volume claim rendered for a
// cluster (render.WorkspaceSize).
const DefaultWorkspaceQuota = 10 << 30

// New returns a substrate. Call Shutdown when the process ends.
func New(o Options) *Substrate {
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.RestartBackoff == 0 {
		o.RestartBackoff = 2 * time.Second
	}
	if o.WorkspaceQuota == 0 {
		o.WorkspaceQuota = DefaultWorkspaceQuota
	}
	if o.ImageCache == "" {
		o.ImageCache = filepath.Join(filepath.Dir(o.StateRoot), "images")
	}
	return &Substrate{o: o, pods: map[types.NamespacedName]*entry{}, events: make(chan event.GenericEvent, 64),
		envs: newEnvs(o.Runtimes), images: newImages(o.ImageCache)}
}

// Finalizer implements controller.Substrate.
func (s *Substrate) Finalizer() string { return Finalizer }

// Watch implements controller.Substrate: a pod whose process exits
// reconciles its sandbox.
func (s *Substrate) Watch(b *builder.Builder) *builder.Builder {
	return b.WatchesRawSource(source.Channel(s.events, &handler.EnqueueRequestForObject{}))
}

// Realize implements controller.Substrate.
func (s *Substrate) Realize(ctx context.Context, sb *karsv1.KarsSandbox, desired *render.Sandbox) (controller.Observation, error) {
	key := client.ObjectKeyFromObject(sb)
	obs := controller.Observation{RouterAdmin: fmt.Sprintf("https://%s:%d", desired.Names.RouterHostname, render.RouterAdminPort)}
	if suspended(desired.Deployment) {
		return controller.Observation{Message: "suspended"}, s.Stop(ctx, sb)
	}
	ws := filepath.Join(s.o.WorkspaceRoot, sb.Namespace, sb.Name)
	if err := os.MkdirAll(ws, 0o700); err != nil {
		return obs, err
	}
	if err := os.Chown(ws, local.AgentUID, local.AgentUID); err != nil && !errors.Is(err, syscall.EPERM) {
		return obs, err
	}
	built, err := buildSpec(buildInput{
		sb: sb, desired: desired, stateRoot: s.o.StateRoot, workspace: ws, binDir: s.o.BinDir,
		routerState: s.routerState(sb), hide: s.o.Hide, quota: max(s.o.WorkspaceQuota, 0), mesh: s.o.MeshAddr != "",
		upstreamRoots: s.o.UpstreamRoots,
		secret: func(name string) (*corev1.Secret, error) {
			sec := &corev1.Secret{}
			return sec, s.o.Client.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: name}, sec)
		},
		configMap: func(name string) (*corev1.ConfigMap, error) {
			cm := &corev1.ConfigMap{}
			return cm, s.o.Client.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: name}, cm)
		},
		runtimeEnv: func(id string) (*runtimeenv.Env, error) {
			return s.envs.get(id, func() { s.nudgeAt(sb, time.Now()) })
		},
		trust: func(routerBin string, hosts []string) (map[string][]byte, error) {
			return s.trust.files(routerBin, s.routerState(sb), hosts)
		},
		image: func(ref, contract string, kc authn.Keychain) (*ociroot.Root, error) {
			return s.images.get(ref, contract, kc, func() { s.nudgeAt(sb, time.Now()) })
		},
	})
	if err != nil {
		_ = s.Stop(ctx, sb)
		obs.Message = err.Error()
		var prep *errPreparing
		if errors.As(err, &prep) {
			obs.Reason = ReasonRuntimePreparing
			if prep.failure != nil {
				obs.Reason = prep.reason
			}
		}
		return obs, nil
	}

	s.mu.Lock()
	e := s.pods[key]
	var current, waiting bool
	var wait time.Time
	var lastErr string
	if e != nil {
		current = e.hash == built.hash && e.pod != nil && running(e.pod)
		wait, lastErr = e.nextStart, e.lastErr
		waiting = time.Now().Before(wait)
	}
	s.mu.Unlock()
	if current {
		if string(e.config) != string(built.routerConfig) {
			if err := writeRouterFile(built.routerDir, built.routerConfigRelPath, built.routerConfig); err != nil {
				return obs, fmt.Errorf("update router config: %w", err)
			}
			e.config = built.routerConfig
			s.o.Log.Info("router config updated in place", "sandbox", key, "bytes", len(built.routerConfig))
		}
		for rel, data := range built.hotFiles {
			if string(e.hot[rel]) == string(data) {
				continue
			}
			if err := writeRouterFile(built.routerDir, rel, data); err != nil {
				return obs, fmt.Errorf("update %s: %w", rel, err)
			}
			if e.hot == nil {
				e.hot = map[string][]byte{}
			}
			e.hot[rel] = data
		}
		if err := s.syncSidecars(ctx, sb, e, desired); err != nil {
			s.o.Log.Warn("MCP servers of the pod", "sandbox", key, "err", err)
		}
		obs.Ready, obs.Message = s.probe(ctx, e)
		if !obs.Ready {
			// Runtimes take seconds to start (Python imports, OpenClaw's
			// gateway): look again until the agent answers.
			go s.nudgeAt(sb, time.Now().Add(time.Second))
		}
		return obs, nil
	}
	if e != nil && waiting {
		obs.Message = fmt.Sprintf("restarting after a failure (%s); next attempt in %s", lastErr, time.Until(wait).Round(time.Second))
		go s.nudgeAt(sb, wait)
		return obs, nil
	}
	if e != nil {
		s.stopEntry(ctx, key, e)
	}
	ne := &entry{hash: built.hash, hostname: desired.Names.RouterHostname, config: built.routerConfig, hot: built.hotFiles,
		cfgPath: filepath.Join(built.routerDir, built.routerConfigRelPath), agentPort: built.agentPort}
	if e != nil {
		ne.failures = e.failures
	}
	pod, err := local.Start(ctx, built.spec)
	if err != nil {
		ne.failures++
		ne.lastErr = err.Error()
		ne.nextStart = time.Now().Add(s.backoff(ne.failures))
		s.mu.Lock()
		s.pods[key] = ne
		s.mu.Unlock()
		obs.Message = "local pod failed to start: " + err.Error()
		go s.nudgeAt(sb, ne.nextStart)
		return obs, nil
	}
	ne.pod = pod
	if err := s.openSockets(sb, ne); err != nil {
		_ = pod.Stop(ctx)
		return obs, err
	}
	if err := s.openMeshSocket(built.routerDir, ne); err != nil {
		_ = pod.Stop(ctx)
		return obs, fmt.Errorf("mesh socket: %w", err)
	}
	ne.watchStop = make(chan struct{})
	go s.watch(sb, ne, pod, ne.watchStop)
	s.mu.Lock()
	s.pods[key] = ne
	s.mu.Unlock()
	s.o.Log.Info("local pod started", "sandbox", key, "pod", pod.ID, "missing", pod.Guarantees.Notes)
	if err := s.syncSidecars(ctx, sb, ne, desired); err != nil {
		s.o.Log.Warn("MCP servers of the pod", "sandbox", key, "err", err)
	}
	obs.Ready, obs.Message = s.probe(ctx, ne)
	if !obs.Ready {
		go s.nudgeAt(sb, time.Now().Add(500*time.Millisecond))
	}
	return obs, nil
}

func (s *Substrate) backoff(failures int) time.Duration {
	d := s.o.RestartBackoff
	for i := 1; i < failures && d < time.Minute; i++ {
		d *= 2
	}
	return min(d, time.Minute)
}

func running(p *local.Pod) bool {
	st := p.Status()
	return st.Agent.Running && st.Router.Running
}

// probe checks the router's readiness and the agent's health through the
// pod's network namespace.
func (s *Substrate) probe(ctx context.Context, e *entry) (bool, string) {
	if !running(e.pod) {
		return false, "a process of the local pod exited"
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	dial := func(port uint16) func(context.Context, string, string) (net.Conn, error) {
		return func(ctx context.Context, _, _ string) (net.Conn, error) {
			return e.pod.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
		}
	}
	// The admin certificate is verified by the controller's prober; this
	// probe only asks whether the router serves.
	admin := &http.Client{Transport: &http.Transport{DialContext: dial(uint16(render.RouterAdminPort)),
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // readiness only
	if err := get(ctx, admin, "https://router/readyz"); err != nil {
		return false, "router not ready: " + err.Error()
	}
	agent := &http.Client{Transport: &http.Transport{DialContext: dial(e.agentPort)}}
	if err := agentReady(ctx, agent); err != nil {
		return false, "agent not ready: " + err.Error()
	}
	return true, ""
}

func get(ctx context.Context, c *http.Client, url string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %d", url, resp.StatusCode)
	}
	return nil
}

// watch reconciles the sandbox when a process of its pod exits.
func (s *Substrate) watch(sb *karsv1.KarsSandbox, e *entry, pod *local.Pod, stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-pod.Done():
		case <-t.C:
			if running(pod) {
				continue
			}
		}
		st := pod.Status()
		s.mu.Lock()
		e.failures++
		e.lastErr = fmt.Sprintf("agent exit %d, router running %v", st.Agent.ExitCode, st.Router.Running)
		e.nextStart = time.Now().Add(s.backoff(e.failures))
		e.hash = "" // force a restart on the next reconcile
		s.mu.Unlock()
		s.o.Log.Warn("local pod process exited", "sandbox", client.ObjectKeyFromObject(sb), "status", fmt.Sprintf("%+v", st))
		s.nudgeAt(sb, time.Now())
		return
	}
}

// nudgeAt reconciles sb at t.
func (s *Substrate) nudgeAt(sb *karsv1.KarsSandbox, t time.Time) {
	time.Sleep(time.Until(t))
	obj := &karsv1.KarsSandbox{}
	obj.Namespace, obj.Name = sb.Namespace, sb.Name
	select {
	case s.events <- event.GenericEvent{Object: obj}:
	default: // a reconcile is already queued
	}
}

// Stop implements controller.Substrate.
func (s *Substrate) Stop(ctx context.Context, sb *karsv1.KarsSandbox) error {
	key := client.ObjectKeyFromObject(sb)
	s.mu.Lock()
	e := s.pods[key]
	delete(s.pods, key)
	s.mu.Unlock()
	if e == nil {
		return nil
	}
	return s.stopEntry(ctx, key, e)
}

func (s *Substrate) stopEntry(ctx context.Context, key types.NamespacedName, e *entry) error {
	if e.watchStop != nil {
		close(e.watchStop)
		e.watchStop = nil
	}
	for _, l := range e.sockets {
		_ = l.Close()
	}
	e.sockets = nil
	if e.pod == nil {
		return nil
	}
	err := e.pod.Stop(ctx)
	e.pod = nil
	s.o.Log.Info("local pod stopped", "sandbox", key, "err", err)
	return err
}

// Cleanup implements controller.Substrate: the pod and the workspace go.
func (s *Substrate) Cleanup(ctx context.Context, sb *karsv1.KarsSandbox) error {
	if err := s.Stop(ctx, sb); err != nil {
		return err
	}
	if s.o.SocketDir != nil {
		_ = os.RemoveAll(s.o.SocketDir(sb.Namespace, sb.Name))
	}
	ws := filepath.Join(s.o.WorkspaceRoot, sb.Namespace, sb.Name)
	var errs []error
	for _, p := range []string{ws, local.WorkspaceImage(ws), s.routerState(sb)} {
		if p != "" {
			errs = append(errs, os.RemoveAll(p))
		}
	}
	return errors.Join(errs...)
}

// routerState is the sandbox's router state folder, or "" without a
// RouterStateRoot.
func (s *Substrate) routerState(sb *karsv1.KarsSandbox) string {
	if s.o.RouterStateRoot == "" {
		return ""
	}
	return filepath.Join(s.o.RouterStateRoot, sb.Namespace, sb.Name)
}

// Shutdown stops every pod, for the end of `kars dev`.
func (s *Substrate) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	pods := s.pods
	s.pods = map[types.NamespacedName]*entry{}
	s.mu.Unlock()
	var errs []error
	for key, e := range pods {
		errs = append(errs, s.stopEntry(ctx, key, e))
	}
	return errors.Join(errs...)
}

// DialContext dials the router admin port of the pod whose router Service
// name addr names: the controller's prober uses it in place of cluster DNS.
func (s *Substrate) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	var pod *local.Pod
	for _, e := range s.pods {
		if e.hostname == host && e.pod != nil {
			pod = e.pod
		}
	}
	s.mu.Unlock()
	if pod == nil {
		return nil, fmt.Errorf("no local pod serves %s", host)
	}
	return pod.DialContext(ctx, network, "127.0.0.1:"+port)
}

func writeRouterFile(routerDir, rel string, data []byte) error {
	p := filepath.Join(routerDir, rel)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Chown(tmp, local.RouterUID, local.RouterUID); err != nil && !errors.Is(err, syscall.EPERM) {
		return err
	}
	return os.Rename(tmp, p)
}
