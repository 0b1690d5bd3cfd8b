// Package daemon runs kars-a2a-gateway as a process: the public TLS
// listener, the routing table kept equal to the controller's ConfigMap
// (the process's only use of the Kubernetes API: get, list and watch on
// that one ConfigMap), and the gateway's state — callers' trust scores and
// its audit log — in a state directory. cmd/kars-a2a-gateway and `kars dev`
// run it.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/kars-io/kars/internal/a2a/gateway"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/trust"
)

// Options configure Serve.
type Options struct {
	// Addr is the public listen address; Listener, when set, is used
	// instead.
	Addr     string
	Listener net.Listener
	// PublicCert serves the public endpoint.
	PublicCert tls.Certificate
	// ClientCert is the gateway's identity towards the routers.
	ClientCert tls.Certificate
	// StateDir holds trust.json and the audit log.
	StateDir string
	// Kube reads the routing table's ConfigMap in Namespace.
	Kube      kubernetes.Interface
	Namespace string
	// Dial reaches routers; nil means the network.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// InitialTrust is a new caller's score (0..1000); zero means the
	// trust package's default (500).
	InitialTrust int
	Logger       *slog.Logger
	// Ready, when set, is called with the bound address once the routing
	// table has synced and the listener serves.
	Ready func(addr string)
}

// Serve runs the gateway until ctx ends, then stops accepting and lets
// calls in flight finish for up to 30 s.
func Serve(ctx context.Context, o Options) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	tc := trust.DefaultConfig()
	if o.InitialTrust > 0 {
		tc.Initial = o.InitialTrust
	}
	ts, err := trust.Open(filepath.Join(o.StateDir, "trust.json"), tc)
	if err != nil {
		return err
	}
	defer ts.Close()
	sink, err := audit.Open(audit.Options{Dir: filepath.Join(o.StateDir, "audit"), Sandbox: "kars-a2a-gateway"})
	if err != nil {
		return err
	}
	defer sink.Close()
	g, err := gateway.New(gateway.Options{ClientCert: o.ClientCert, Dial: o.Dial, Trust: ts, Audit: sink, Logger: log})
	if err != nil {
		return err
	}
	ln := o.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", o.Addr); err != nil {
			return fmt.Errorf("kars-a2a-gateway: %w", err)
		}
	}
	bg, stop := context.WithCancel(ctx)
	defer stop()
	synced := make(chan struct{})
	var wg sync.WaitGroup
	watchErr := make(chan error, 1)
	wg.Go(func() {
		watchErr <- WatchRoutes(bg, o.Kube, o.Namespace, g, log, func() { close(synced) })
	})
	defer wg.Wait()
	select {
	case <-synced:
	case err := <-watchErr:
		ln.Close()
		return err
	case <-ctx.Done():
		ln.Close()
		return nil
	}
	srv := &http.Server{Handler: g, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		TLSConfig: gateway.TLSConfig(o.PublicCert), ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	log.Info("kars-a2a-gateway serving", "addr", ln.Addr().String(), "routes", len(g.Routes().Routes))
	if o.Ready != nil {
		o.Ready(ln.Addr().String())
	}
	select {
	case <-ctx.Done():
	case err = <-served:
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv.Shutdown(shutdown)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
