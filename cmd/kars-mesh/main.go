// Command kars-mesh runs the AgentMesh registry and relay: the registry
// API under /v1 and /health, the relay's WebSocket at /ws. Both keep
// their state in journals under -state, so a restart loses no
// registration, one-time prekey consumption or unacknowledged message.
//
// With -redeem it also redeems pairing tokens (POST /v1/pairings/redeem)
// against the cluster's KarsPairings; with -federation-listen it links
// to other clusters' kars-mesh over mutual TLS (docs/mesh.md).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kars-io/kars/internal/mesh/federation"
	"github.com/kars-io/kars/internal/mesh/relay"
	"github.com/kars-io/kars/internal/mesh/server"
	"github.com/kars-io/kars/internal/pairing"
	pairingapi "github.com/kars-io/kars/internal/pairing/apiserver"
	"github.com/kars-io/kars/internal/scheme"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kars-mesh:", err)
		os.Exit(1)
	}
}

// peers collects repeated -federation-peer name=url flags.
type peers []federation.Peer

func (p *peers) String() string { return fmt.Sprint(*p) }

func (p *peers) Set(v string) error {
	name, url, ok := strings.Cut(v, "=")
	if !ok || name == "" || url == "" {
		return fmt.Errorf("want name=wss://host:port%s, got %q", federation.Path, v)
	}
	*p = append(*p, federation.Peer{Name: name, URL: url})
	return nil
}

func run() error {
	registryAddr := flag.String("registry-listen", "127.0.0.1:18080", "address of the registry API")
	relayAddr := flag.String("relay-listen", "127.0.0.1:18765", "address of the relay WebSocket (/ws); the same as -registry-listen serves both on one port")
	state := flag.String("state", "", "directory for the registry and relay journals (required)")
	maxMsgs := flag.Int("max-queued-messages", 10_000, "per-recipient limit on stored, unacknowledged frames")
	maxBytes := flag.Int("max-queued-bytes", 64<<20, "per-recipient limit on stored, unacknowledged bytes")
	maxTotal := flag.Int("max-total-bytes", 1<<30, "limit on stored, unacknowledged bytes for all recipients together (they are held in memory)")
	ttl := flag.Duration("ttl", relay.DefaultTTL, "how long an unacknowledged frame is kept")
	openRelay := flag.Bool("allow-unregistered", false, "let agents the registry does not know connect to the relay and receive mail")
	redeem := flag.Bool("redeem", false, "redeem pairing tokens against the cluster's KarsPairings (in-cluster credentials, or -kubeconfig)")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig for -redeem; empty means in-cluster")
	systemNS := flag.String("system-namespace", "kars-system", "namespace holding the pairing key's public half (ConfigMap kars-pairing-key)")
	fedListen := flag.String("federation-listen", "", "address of the federation listener (mutual TLS); empty disables federation")
	fedName := flag.String("federation-name", "", "this mesh's federation name (default: the certificate's CommonName)")
	fedCert := flag.String("federation-cert", "", "this mesh's federation certificate (PEM)")
	fedKey := flag.String("federation-key", "", "its private key (PEM)")
	fedCA := flag.String("federation-ca", "", "the peers' CA certificates (PEM): only meshes they vouch for may link")
	var fedPeers peers
	flag.Var(&fedPeers, "federation-peer", "a peer mesh to dial, name=wss://host:port"+federation.Path+" (repeatable)")
	flag.Parse()
	if *state == "" {
		return errors.New("-state is required: the journals must outlive the process")
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	o := server.Options{Dir: *state, Logger: log, TTL: *ttl, AllowUnregistered: *openRelay,
		Quotas: relay.Quotas{PerRecipientMessages: *maxMsgs, PerRecipientBytes: *maxBytes, TotalBytes: *maxTotal}}
	if *redeem {
		c, err := kubeClient(*kubeconfig)
		if err != nil {
			return err
		}
		o.Redeem = func(ctx context.Context, r pairing.Redemption) (*pairing.Result, error) {
			pub, err := pairingapi.LoadPublicKey(ctx, c, *systemNS)
			if err != nil {
				return nil, fmt.Errorf("the cluster's pairing key: %w", err)
			}
			return pairingapi.Redeem(ctx, c, pub, r, time.Now())
		}
	}
	var fedTLS *tls.Config
	if *fedListen != "" {
		cfg, name, err := federationTLS(*fedCert, *fedKey, *fedCA)
		if err != nil {
			return err
		}
		if *fedName != "" {
			name = *fedName
		}
		fedTLS = cfg
		o.Federation = &federation.Options{Name: name, TLS: cfg, Peers: fedPeers}
	}
	srv, err := server.Open(o)
	if err != nil {
		return err
	}
	defer srv.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var servers []*http.Server
	if *registryAddr == *relayAddr {
		servers = append(servers, &http.Server{Addr: *registryAddr, Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second})
	} else {
		servers = append(servers,
			&http.Server{Addr: *registryAddr, Handler: srv.RegistryHandler(), ReadHeaderTimeout: 10 * time.Second},
			&http.Server{Addr: *relayAddr, Handler: srv.Relay, ReadHeaderTimeout: 10 * time.Second})
	}
	errc := make(chan error, len(servers)+1)
	for _, s := range servers {
		ln, err := net.Listen("tcp", s.Addr)
		if err != nil {
			return err
		}
		log.Info("listening", "addr", ln.Addr().String())
		go func() { errc <- s.Serve(ln) }()
	}
	if srv.Federation != nil {
		fs := &http.Server{Addr: *fedListen, Handler: srv.Federation.Handler(), TLSConfig: fedTLS, ReadHeaderTimeout: 10 * time.Second}
		ln, err := net.Listen("tcp", *fedListen)
		if err != nil {
			return err
		}
		log.Info("federation listening", "addr", ln.Addr().String(), "name", o.Federation.Name, "peers", len(fedPeers))
		go func() { errc <- fs.ServeTLS(ln, "", "") }()
		servers = append(servers, fs)
		go srv.Federation.Run(ctx)
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		s.Shutdown(sctx)
	}
	return nil
}

// federationTLS builds the mutual-TLS configuration of the federation
// listener and its dials, and returns the certificate's CommonName.
func federationTLS(certFile, keyFile, caFile string) (*tls.Config, string, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, "", errors.New("federation needs -federation-cert, -federation-key and -federation-ca")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, "", fmt.Errorf("federation certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, "", err
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, "", err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, "", fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}, leaf.Subject.CommonName, nil
}

func kubeClient(kubeconfig string) (client.Client, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("-redeem needs the API server: %w", err)
	}
	return client.New(cfg, client.Options{Scheme: scheme.New()})
}
