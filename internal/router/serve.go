package router

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	"github.com/kars-io/kars/internal/a2a/outbound"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/budget"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/trust"
)

// Listener is one address the router serves. kars-router starts with the
// agent API and the admin API; later features (A2A ingress on 8445, the
// egress forward proxy) append their own.
type Listener struct {
	Name    string
	Addr    string
	Handler http.Handler
	// TLS, when set, serves HTTPS.
	TLS *tls.Config
	// Listener, when set, is used instead of listening on Addr (the
	// rootless local substrate hands over a socket bound inside the
	// agent's network namespace).
	Listener net.Listener
}

// ServeOptions configure Serve.
type ServeOptions struct {
	// ConfigPath is the mounted router.json.
	ConfigPath string
	// Root, when set, prefixes ConfigPath, every file path in the config
	// and AZURE_FEDERATED_TOKEN_FILE (routerconfig.EnvRoot).
	Root   string
	Logger *slog.Logger
	// Listeners are sockets bound by the launcher, keyed by port number as
	// socket activation names them (ActivatedListeners). The agent and
	// admin APIs serve on the one named for their configured port instead
	// of binding; Serve closes the others. Serve owns them all.
	Listeners map[string]net.Listener
	// BufferBytes bounds the bytes buffered for calls at once
	// (Options.BufferBytes); zero means DefaultBufferBytes.
	BufferBytes int64
	// Ready, if set, is called with the bound addresses once serving.
	Ready func(addrs map[string]string)
	// NoEgressListeners skips the transparent proxy and DNS stub
	// listeners (env KARS_ROUTER_NO_EGRESS_LISTENERS=1): a router outside
	// its pod's network namespace (the rootless local substrate) must not
	// bind them on the host's loopback.
	NoEgressListeners bool
}

// EnvNoEgressListeners turns ServeOptions.NoEgressListeners on.
const EnvNoEgressListeners = "KARS_ROUTER_NO_EGRESS_LISTENERS"

// Serve runs kars-router until ctx is done: it loads and watches the
// config, opens the budget ledger and the audit log, and serves the agent
// and admin APIs. On shutdown it ends the calls held for approval, stops
// accepting, lets in-flight calls (streams included) finish for up to
// 30 s, then flushes the ledger and closes the audit log.
func Serve(ctx context.Context, o ServeOptions) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	// Whatever happens, no passed socket outlives Serve unserved.
	passed := maps.Clone(o.Listeners)
	defer func() {
		for _, l := range passed {
			l.Close()
		}
	}()
	watcher, err := routerconfig.NewWatcher(o.ConfigPath, o.Root)
	if err != nil {
		return err
	}
	snap := watcher.Current()
	cfg := snap.Config
	ledger, err := budget.Open(cfg.StateDir, budget.Limits{})
	if err != nil {
		return err
	}
	var key ed25519.PrivateKey
	if cfg.Audit.CheckpointKeyFile != "" {
		if key, err = loadSigningKey(cfg.Audit.CheckpointKeyFile); err != nil {
			return err
		}
	}
	sink, err := audit.Open(audit.Options{Dir: cfg.Audit.Dir, Sandbox: cfg.Sandbox.Namespace + "/" + cfg.Sandbox.Name, SigningKey: key})
	if err != nil {
		return err
	}
	defer sink.Close()
	// Before anything else is appended or served: the calls the previous
	// process held for approval ended with it (approvalrestart.go).
	closedOut, decided, err := closeOutApprovals(ctx, cfg.Audit.Dir, sink, log)
	if err != nil {
		return err
	}
	// Recovery read up to the last 16 MiB of the log; that buffer is
	// garbage now. Hand it back to the OS rather than carry it as the
	// router's resident baseline for hours.
	debug.FreeOSMemory()
	ts, err := trust.Open(filepath.Join(cfg.StateDir, "trust.json"), trust.DefaultConfig())
	if err != nil {
		return err
	}
	defer ts.Close()
	trustStore := TrustStore{Store: ts, Log: log}
	r, err := New(snap, Options{Audit: sink, Ledger: ledger, Logger: log, Trust: trustStore, Root: o.Root, BufferBytes: o.BufferBytes})
	if err != nil {
		return err
	}
	defer r.Wait() // before the trust store closes: no penalty is dropped
	r.approvals.Ended(append(decided, closedOut...)...)
	var resolvers []string
	if cfg.Egress != nil {
		resolvers = cfg.Egress.Resolvers
	}
	eg, err := NewEgress(r, cfg.StateDir, resolvers)
	if err != nil {
		return err
	}
	mesh, err := r.openMesh(cfg, o.Root, ts)
	if err != nil {
		return err
	}
	if mesh != nil {
		defer mesh.Close() // after its Run ends with the background work
	}
	watcher.OnChange = func(_, cur *routerconfig.Snapshot) {
		if err := r.Apply(cur); err != nil {
			log.Error("config reload rejected; the previous config stays in force", "digest", cur.Digest, "err", err)
			return
		}
		meshReloaded(mesh, cur.Config)
		if cur.Config.AgentListen() != cfg.AgentListen() || cur.Config.AdminListen() != cfg.AdminListen() {
			log.Warn("listen addresses changed in the config; they take effect on restart")
		}
		if cur.Config.A2A != nil && cfg.A2A == nil {
			log.Warn("A2A exposure enabled in the config; the A2A listener starts on restart")
		}
		log.Info("config reloaded", "digest", cur.Digest)
	}
	watcher.OnError = func(err error) { log.Error("config reload failed; the previous config stays in force", "err", err) }

	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { watcher.Run(bg) })
	wg.Go(func() {
		ledger.Run(bg, time.Second, func(err error) { log.Error("budget ledger write failed", "err", err) })
	})
	if mesh != nil {
		wg.Go(func() { mesh.Run(bg) })
	}
	defer func() {
		stopBG()
		wg.Wait() // the ledger's final flush happens here
	}()
	statePath := filepath.Join(filepath.Dir(routerconfig.UnderRoot(o.Root, o.ConfigPath)), routerconfig.EgressStateFile)
	eg.WatchState(bg, statePath, o.Root, &wg)
	egCfg := cfg
	if o.NoEgressListeners && cfg.Egress != nil {
		c, e := *cfg, *cfg.Egress
		e.TransparentListen, e.DNSListen = "", ""
		c.Egress = &e
		egCfg = &c
	}
	if err := eg.Start(bg, egCfg, &wg); err != nil {
		return err
	}

	agentAPI := r.AgentHandler()
	agentAPI.Handle(outbound.Prefix, r.A2AOutbound(cfg.StateDir))
	if mesh != nil {
		mesh.Mount(agentAPI)
	}
	relay, err := evalRelay(cfg.AgentChatURL(), agentAPI)
	if err != nil {
		return err
	}
	admin := Listener{Name: "admin", Addr: cfg.AdminListen(), Handler: r.AdminHandler(cfg.Admin.TokenFile, AdminBackends{
		AuditTail: func(_ context.Context, n int) (any, error) { return AuditTail(cfg.Audit.Dir, n) },
		AuditVerify: func(_ context.Context, opts audit.VerifyOptions) (any, error) {
			return audit.Verify(cfg.Audit.Dir, opts)
		},
		AuditHead: func() (any, error) { return NewAuditHead(sink.Head(), key), nil },
		Trust:     trustStore.View,
		Reload:    watcher.Reload,
		A2A:       r.a2aInfo(cfg.StateDir),
		Egress:    eg.AdminHandler(),
		Mesh:      meshAdmin(mesh),
		Eval:      relay,
	})}
	if cfg.Admin.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.Admin.TLSCertFile, cfg.Admin.TLSKeyFile)
		if err != nil {
			return fmt.Errorf("admin TLS: %w", err)
		}
		admin.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	listeners := []Listener{
		{Name: "agent", Addr: cfg.AgentListen(), Handler: eg.Wrap(agentAPI)},
		admin,
	}
	if a := cfg.A2A; a != nil {
		l, err := r.a2aListener(cfg.StateDir)
		if err != nil {
			return err
		}
		listeners = append(listeners, l)
	}
	// Take the passed sockets named for the configured ports; close the
	// rest, as a socket-activated service does with sockets it has no use
	// for.
	var activated []string
	for i := range listeners {
		port := portOf(listeners[i].Addr)
		if l, ok := passed[port]; ok && port != "" {
			listeners[i].Listener = l
			delete(passed, port)
			activated = append(activated, listeners[i].Name+"="+port)
		}
	}
	for name, l := range passed {
		log.Info("closing a passed socket no listener is configured for", "name", name)
		l.Close()
	}
	passed = nil
	log.Info("kars-router starting", "sandbox", cfg.Sandbox.Namespace+"/"+cfg.Sandbox.Name, "digest", snap.Digest,
		"agent", cfg.AgentListen(), "admin", cfg.AdminListen(), "activated", activated, "stages", r.Stages())
	// A held call would wait out its timeout (minutes) past the grace
	// period and be cut off with no outcome: as shutdown begins, each is
	// ended with its abandoned outcome (abandoned_because=router_stopping)
	// and the agent answered, and no more are held.
	err = ServeListeners(ctx, log, listeners, o.Ready, r.approvals.Stop)
	// Streams run on connections taken over from the HTTP servers
	// (streamWriter), which their Shutdown does not wait for: wait for the
	// calls themselves before the audit log and the ledger close.
	if !waitIdle(r, shutdownGrace) {
		log.Warn("calls still in flight after the shutdown grace period; they are cut off", "in_flight", r.InFlight())
	}
	return err
}

// shutdownGrace is how long shutdown waits for calls in flight.
const shutdownGrace = 30 * time.Second

// waitIdle waits until r has no call in flight, for at most d, and reports
// whether it got there.
func waitIdle(r *Router, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for r.InFlight() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// ServeListeners serves every listener until ctx is done or one fails, then
// shuts all down gracefully. stopping, if set, is called as shutdown
// begins, before the servers wait for their calls.
func ServeListeners(ctx context.Context, log *slog.Logger, ls []Listener, ready func(map[string]string), stopping func()) error {
	servers := make([]*http.Server, len(ls))
	errc := make(chan error, len(ls))
	addrs := map[string]string{}
	for i, l := range ls {
		ln := l.Listener
		if ln == nil {
			var err error
			if ln, err = net.Listen("tcp", l.Addr); err != nil {
				for _, s := range servers[:i] {
					s.Close()
				}
				return fmt.Errorf("%s listener: %w", l.Name, err)
			}
		}
		if l.TLS != nil {
			ln = tls.NewListener(ln, l.TLS)
		}
		addrs[l.Name] = ln.Addr().String()
		srv := &http.Server{Handler: l.Handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		servers[i] = srv
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s listener: %w", l.Name, err)
			}
		}()
	}
	if ready != nil {
		ready(addrs)
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	if stopping != nil {
		stopping()
	}
	shutdown, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Go(func() { s.Shutdown(shutdown) })
	}
	wg.Wait()
	return err
}
