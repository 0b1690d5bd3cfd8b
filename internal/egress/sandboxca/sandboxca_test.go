package sandboxca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func pool(t *testing.T, ca *CA) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(ca.CertPEM()) {
		t.Fatal("CA PEM does not parse")
	}
	return p
}

func TestEnsureKeepsKeyAndReissuesForNewHosts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	now := time.Now()
	ca, err := Ensure(dir, []string{"api.telegram.org"}, now)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi.Mode(), err)
	}
	again, err := Ensure(dir, []string{"api.telegram.org"}, now)
	if err != nil || !bytes.Equal(again.CertPEM(), ca.CertPEM()) {
		t.Fatalf("same hosts issued a new certificate: %v", err)
	}
	more, err := Ensure(dir, []string{"api.github.com", "api.telegram.org"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(more.CertPEM(), ca.CertPEM()) {
		t.Fatal("new hosts kept the old certificate")
	}
	if !more.Certificate().PublicKey.(*ecdsa.PublicKey).Equal(ca.Certificate().PublicKey) {
		t.Fatal("the key changed")
	}
	if got := strings.Join(more.Certificate().PermittedDNSDomains, ","); got != "api.github.com,api.telegram.org" {
		t.Fatalf("permitted %q", got)
	}
	// A leaf minted under the new certificate verifies against the old
	// one too when the old one permits its name (same subject and key).
	l, err := more.Leaf("api.telegram.org", []string{"api.telegram.org"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Leaf.Verify(x509.VerifyOptions{DNSName: "api.telegram.org", Roots: pool(t, ca)}); err != nil {
		t.Fatalf("leaf against the earlier CA certificate: %v", err)
	}
	// Near expiry the certificate is issued again.
	late, err := Ensure(dir, []string{"api.github.com", "api.telegram.org"}, now.Add(caValidity-caRenewBefore+time.Hour))
	if err != nil || bytes.Equal(late.CertPEM(), more.CertPEM()) {
		t.Fatalf("an expiring CA certificate was kept: %v", err)
	}
	if _, err := Ensure(dir, nil, now); err == nil {
		t.Fatal("a CA without hosts was issued")
	}
}

func TestLeafOnlyForBoundHosts(t *testing.T) {
	now := time.Now()
	ca, err := Ensure(t.TempDir(), []string{"api.telegram.org", "api.github.com", "203.0.113.7"}, now)
	if err != nil {
		t.Fatal(err)
	}
	roots := pool(t, ca)
	bound := []string{"api.telegram.org", "203.0.113.7"}
	for _, h := range []string{"api.telegram.org", "203.0.113.7"} {
		l, err := ca.Leaf(h, bound, now)
		if err != nil {
			t.Fatalf("%s: %v", h, err)
		}
		if _, err := l.Leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: roots, CurrentTime: now}); err != nil {
			t.Errorf("%s: leaf does not verify: %v", h, err)
		}
		if len(l.Certificate) != 2 {
			t.Errorf("%s: the chain should carry the CA certificate", h)
		}
	}
	for _, h := range []string{
		"api.github.com",       // permitted by the CA, not bound now
		"evil.example",         // neither
		"x.api.telegram.org",   // below a bound name: not the name
		"api.telegram.org.",    // another spelling
		"API.TELEGRAM.ORG",     // another spelling
		"api.telegram.org:443", // not a host
		"198.51.100.1",         // an address no one bound
		"",                     // nothing
	} {
		if l, err := ca.Leaf(h, append(bound, "evil.example"), now); !errors.Is(err, ErrNotBound) || l != nil {
			t.Errorf("%q: a certificate was minted (%v)", h, err)
		}
	}
	a, _ := ca.Leaf("api.telegram.org", bound, now)
	b, _ := ca.Leaf("api.telegram.org", bound, now.Add(time.Minute))
	if a != b {
		t.Error("the leaf is not cached")
	}
	c, _ := ca.Leaf("api.telegram.org", bound, now.Add(leafValidity))
	if c == a {
		t.Error("an expiring leaf was not minted again")
	}
}

// TestNameConstraintsHoldIfTheKeyLeaked signs certificates for other names
// with the CA key directly, as someone holding the key could: clients that
// trust the CA still reject them.
func TestNameConstraintsHoldIfTheKeyLeaked(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, err := Ensure(dir, []string{"api.telegram.org"}, now)
	if err != nil {
		t.Fatal(err)
	}
	roots := pool(t, ca)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forge := func(dns string, ip net.IP) *x509.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: dns},
			NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		if dns != "" {
			tmpl.DNSNames = []string{dns}
		}
		if ip != nil {
			tmpl.IPAddresses = []net.IP{ip}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Certificate(), &leafKey.PublicKey, ca.key)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	if _, err := forge("api.telegram.org", nil).Verify(x509.VerifyOptions{DNSName: "api.telegram.org", Roots: roots}); err != nil {
		t.Fatalf("control: a certificate for the bound name: %v", err)
	}
	if _, err := forge("accounts.google.com", nil).Verify(x509.VerifyOptions{DNSName: "accounts.google.com", Roots: roots}); err == nil {
		t.Error("a certificate for another name verified")
	}
	if _, err := forge("", net.ParseIP("198.51.100.9")).Verify(x509.VerifyOptions{DNSName: "198.51.100.9", Roots: roots}); err == nil {
		t.Error("a certificate for an address verified")
	}
}

func FuzzLeaf(f *testing.F) {
	for _, s := range []string{"api.telegram.org", "evil.example", "api.telegram.org.", "", "x.api.telegram.org", "203.0.113.7", "*.telegram.org"} {
		f.Add(s)
	}
	ca, err := Ensure(f.TempDir(), []string{"api.telegram.org", "203.0.113.7", "api.github.com"}, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	bound := []string{"api.telegram.org", "203.0.113.7"}
	f.Fuzz(func(t *testing.T, host string) {
		l, err := ca.Leaf(host, bound, time.Now())
		if host != "api.telegram.org" && host != "203.0.113.7" {
			if err == nil || l != nil {
				t.Fatalf("a certificate for %q", host)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		names := append(append([]string(nil), l.Leaf.DNSNames...), func() []string {
			var s []string
			for _, ip := range l.Leaf.IPAddresses {
				s = append(s, ip.String())
			}
			return s
		}()...)
		if len(names) != 1 || names[0] != host {
			t.Fatalf("the certificate for %q names %v", host, names)
		}
	})
}

func TestBundle(t *testing.T) {
	b := Bundle([]byte("ROOTS"), []byte("CA\n"))
	if string(b) != "ROOTS\nCA\n" {
		t.Fatalf("%q", b)
	}
}
