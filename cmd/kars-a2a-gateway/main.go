// Command kars-a2a-gateway is the only public A2A endpoint of a kars
// cluster: it verifies each foreign caller (TLS client key, signed
// AgentCard, trust, rate, body cap) and forwards allowed calls over pinned
// mTLS to the exposed sandbox's router. It holds no model credential. See
// docs/a2a.md.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kars-io/kars/internal/a2a/gateway/daemon"
	"github.com/kars-io/kars/internal/version"
)

func main() {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "kars-system"
	}
	listen := flag.String("listen", ":8443", "public TLS listen address")
	tlsCert := flag.String("tls-cert", "/etc/kars/a2a-gateway/public/tls.crt", "public TLS certificate (PEM)")
	tlsKey := flag.String("tls-key", "/etc/kars/a2a-gateway/public/tls.key", "public TLS key (PEM)")
	clientCert := flag.String("client-cert", "/etc/kars/a2a-gateway/mtls/tls.crt", "client certificate towards the routers (the controller's kars-a2a-gateway-mtls Secret)")
	clientKey := flag.String("client-key", "/etc/kars/a2a-gateway/mtls/tls.key", "client key towards the routers")
	namespace := flag.String("namespace", ns, "namespace of the routing table ConfigMap (env POD_NAMESPACE)")
	stateDir := flag.String("state-dir", "/var/lib/kars-a2a-gateway", "directory for callers' trust scores and the audit log")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig; empty means the in-cluster ServiceAccount")
	initialTrust := flag.Int("initial-trust", 0, "a new caller's trust score (0..1000); 0 means 500")
	level := flag.String("log-level", "info", "log level: debug, info, warn or error")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(version.Get().String())
		return
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "kars-a2a-gateway: -log-level %q: %v\n", *level, err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	fail := func(what string, err error) {
		log.Error("kars-a2a-gateway cannot start: "+what, "err", err)
		os.Exit(1)
	}
	public, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
	if err != nil {
		fail("public certificate", err)
	}
	client, err := tls.LoadX509KeyPair(*clientCert, *clientKey)
	if err != nil {
		fail("client certificate", err)
	}
	var cfg *rest.Config
	if *kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", *kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		fail("Kubernetes API", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fail("Kubernetes API", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := daemon.Serve(ctx, daemon.Options{Addr: *listen, PublicCert: public, ClientCert: client, StateDir: *stateDir,
		Kube: cs, Namespace: *namespace, InitialTrust: *initialTrust, Logger: log}); err != nil {
		log.Error("kars-a2a-gateway stopped", "err", err)
		os.Exit(1)
	}
}
