package cli

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"
)

// The material `kars mesh peer enable` makes is what kars-mesh's mutual
// TLS needs: a certificate named for the mesh, for both ends of a TLS
// connection, chaining to the CA handed to the peers.
func TestFederationMaterial(t *testing.T) {
	ca, cert, key, err := federationMaterial("cluster-a", []string{"mesh.cluster-a.example", "10.0.0.7"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatal("no CA")
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			t.Fatalf("usage %v: %v", u, err)
		}
	}
	if leaf.Subject.CommonName != "cluster-a" || leaf.VerifyHostname("mesh.cluster-a.example") != nil || leaf.VerifyHostname("10.0.0.7") != nil {
		t.Fatalf("leaf %v %v %v", leaf.Subject, leaf.DNSNames, leaf.IPAddresses)
	}
	other, _, _, _ := federationMaterial("cluster-a", nil, time.Now())
	opool := x509.NewCertPool()
	opool.AppendCertsFromPEM(other)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: opool}); err == nil {
		t.Fatal("another mesh's CA vouches for this certificate")
	}
}
