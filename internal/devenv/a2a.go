package devenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kars-io/kars/internal/a2a/gateway/daemon"
	"github.com/kars-io/kars/internal/controller"
)

// A2AGatewayAddr is where `kars dev` serves the kars-a2a-gateway: on
// loopback, one instance per machine like the local registry.
const A2AGatewayAddr = "127.0.0.1:16545"

// A2AGatewayURL is the public base URL the cards of exposed sandboxes name.
const A2AGatewayURL = "https://" + A2AGatewayAddr

// A2AGatewayDir holds the local gateway's public certificate (which A2A
// clients trust: a2a-gateway/tls.crt) and its state.
func (p Paths) A2AGatewayDir() string { return filepath.Join(p.Dir, "a2a-gateway") }

// A2AGatewayCert is the local gateway's public certificate.
func (p Paths) A2AGatewayCert() string { return filepath.Join(p.A2AGatewayDir(), "tls.crt") }

// runA2AGateway serves the kars-a2a-gateway inside the daemon until ctx
// ends: it waits for the controller to create the gateway's client
// identity, then routes to the local pods through dial. Errors are logged:
// a gateway that cannot start leaves the rest of `kars dev` working.
func runA2AGateway(ctx context.Context, p Paths, cfg *rest.Config, cl client.Client, dial func(context.Context, string, string) (net.Conn, error), log *slog.Logger) {
	if err := serveA2AGateway(ctx, p, cfg, cl, dial, log); err != nil && ctx.Err() == nil {
		log.Error("kars-a2a-gateway stopped", "err", err)
	}
}

func serveA2AGateway(ctx context.Context, p Paths, cfg *rest.Config, cl client.Client, dial func(context.Context, string, string) (net.Conn, error), log *slog.Logger) error {
	public, err := loadOrCreateServingCert(p.A2AGatewayDir())
	if err != nil {
		return err
	}
	var s corev1.Secret
	for {
		err := cl.Get(ctx, client.ObjectKey{Namespace: SystemNamespace, Name: controller.GatewayMTLSSecret}, &s)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
	clientCert, err := tls.X509KeyPair(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return fmt.Errorf("the gateway's client identity: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	return daemon.Serve(ctx, daemon.Options{
		Addr: A2AGatewayAddr, PublicCert: public, ClientCert: clientCert,
		StateDir: filepath.Join(p.A2AGatewayDir(), "state"), Kube: cs, Namespace: SystemNamespace,
		Dial: dial, Logger: log.With("component", "kars-a2a-gateway"),
	})
}

// loadOrCreateServingCert returns the local gateway's certificate for
// 127.0.0.1 and localhost, creating a self-signed one the first time.
func loadOrCreateServingCert(dir string) (tls.Certificate, error) {
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if c, err := tls.LoadX509KeyPair(certFile, keyFile); err == nil {
		if leaf, err := x509.ParseCertificate(c.Certificate[0]); err == nil && time.Now().Add(24*time.Hour).Before(leaf.NotAfter) {
			return c, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return tls.Certificate{}, fmt.Errorf("the local A2A gateway's certificate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return tls.Certificate{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "kars dev A2A gateway", Organization: []string{"kars"}},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}
