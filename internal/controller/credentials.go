package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
)

// Admin certificates are self-signed and pinned: the controller trusts
// exactly the certificate it stored in the sandbox's admin Secret, so no CA
// is involved. They are renewed (and the pod rolled, see
// render.AnnotationAdminCert) when less than adminCertRenewBefore remains.
const (
	adminCertValidity    = 365 * 24 * time.Hour
	adminCertRenewBefore = 30 * 24 * time.Hour
)

// adminCredentials returns the router admin credentials stored in the
// sandbox's admin Secret, or new ones when there are none yet, they belong
// to another object, or the certificate no longer fits.
//
// cache is consulted first; on a miss the API server is asked (live), so
// that a Secret created a moment ago and not yet in the cache is not
// replaced by new credentials (which would roll the pod for nothing).
func adminCredentials(ctx context.Context, cache, live client.Reader, sb *karsv1.KarsSandbox, names render.Names, now time.Time) (render.AdminCredentials, error) {
	var s corev1.Secret
	key := client.ObjectKey{Namespace: sb.Namespace, Name: names.RouterAdmin}
	err := cache.Get(ctx, key, &s)
	if apierrors.IsNotFound(err) {
		err = live.Get(ctx, key, &s)
	}
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return render.AdminCredentials{}, fmt.Errorf("read admin Secret %s/%s: %w", sb.Namespace, names.RouterAdmin, err)
	default:
		cur := render.AdminCredentials{Token: s.Data[render.AdminTokenKey], CertPEM: s.Data[render.AdminCertKey],
			KeyPEM: s.Data[render.AdminKeyKey]}
		if ownedBy(&s, sb) && usable(cur, names.RouterHostname, now) {
			return cur, nil
		}
	}
	return newAdminCredentials(names.RouterHostname, now)
}

func ownedBy(obj client.Object, sb *karsv1.KarsSandbox) bool {
	return slices.ContainsFunc(obj.GetOwnerReferences(), func(r metav1.OwnerReference) bool { return r.UID == sb.UID })
}

// usable checks a stored credential set: a token, a certificate for host
// valid beyond the renewal window, and the matching private key.
func usable(a render.AdminCredentials, host string, now time.Time) bool {
	if len(a.Token) < 32 {
		return false
	}
	cert, err := parseCert(a.CertPEM)
	if err != nil || cert.VerifyHostname(host) != nil || now.Add(adminCertRenewBefore).After(cert.NotAfter) {
		return false
	}
	blk, _ := pem.Decode(a.KeyPEM)
	if blk == nil {
		return false
	}
	key, err := x509.ParseECPrivateKey(blk.Bytes)
	return err == nil && key.PublicKey.Equal(cert.PublicKey)
}

func parseCert(p []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(p)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("not a PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// newAdminCredentials makes a 256-bit bearer token and a P-256 key pair with
// a self-signed certificate for the router's Service name (and loopback,
// for substrates that reach the router locally).
func newAdminCredentials(host string, now time.Time) (render.AdminCredentials, error) {
	tok := make([]byte, 32)
	if _, err := rand.Read(tok); err != nil {
		return render.AdminCredentials{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return render.AdminCredentials{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return render.AdminCredentials{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host, Organization: []string{"kars"}},
		DNSNames:              []string{host, host + ".cluster.local", "localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(adminCertValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return render.AdminCredentials{}, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return render.AdminCredentials{}, err
	}
	return render.AdminCredentials{
		Token:   []byte(base64.RawURLEncoding.EncodeToString(tok)),
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// renewalDue returns when the admin certificate in creds enters its renewal
// window. A converged sandbox is not reconciled by any event, so the
// reconciler requeues it for that moment.
func renewalDue(creds render.AdminCredentials) (time.Time, bool) {
	cert, err := parseCert(creds.CertPEM)
	if err != nil {
		return time.Time{}, false
	}
	return cert.NotAfter.Add(-adminCertRenewBefore), true
}
