//go:build linux

package realnode

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// ca is the one certificate authority of the proof's cluster: the API
// server's and kubelet's serving certificates and every client certificate
// (admin, kubelet, the API server's kubelet client) come from it.
type ca struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, dir string) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kars-realnode-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c := &ca{dir: dir, key: key}
	if c.cert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	writePEM(t, c.path("ca.crt"), "CERTIFICATE", der)
	return c
}

func (c *ca) path(name string) string { return filepath.Join(c.dir, name) }

var serial int64 = 1

// issue writes <name>.crt and <name>.key: a leaf for cn in the groups orgs,
// for serving (ips, dns) when either is given, for client auth otherwise.
func (c *ca) issue(t *testing.T, name, cn string, orgs []string, ips []net.IP, dns []string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		IPAddresses: ips, DNSNames: dns,
	}
	if len(ips)+len(dns) > 0 {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, c.path(name+".crt"), "CERTIFICATE", der)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, c.path(name+".key"), "EC PRIVATE KEY", kder)
}

// serviceAccountKey writes sa.key and sa.pub, the API server's token
// signing pair.
func (c *ca) serviceAccountKey(t *testing.T) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, c.path("sa.key"), "EC PRIVATE KEY", kder)
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, c.path("sa.pub"), "PUBLIC KEY", pub)
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// kubeconfig writes a kubeconfig for the client certificate <name>.
func (c *ca) kubeconfig(t *testing.T, name, server string) string {
	t.Helper()
	p := c.path(name + ".kubeconfig")
	body := "apiVersion: v1\nkind: Config\nclusters:\n- name: realnode\n  cluster:\n    server: " + server +
		"\n    certificate-authority: " + c.path("ca.crt") +
		"\nusers:\n- name: " + name + "\n  user:\n    client-certificate: " + c.path(name+".crt") +
		"\n    client-key: " + c.path(name+".key") +
		"\ncontexts:\n- name: realnode\n  context:\n    cluster: realnode\n    user: " + name +
		"\ncurrent-context: realnode\n"
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
