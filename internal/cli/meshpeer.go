package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kars-io/kars/internal/mesh/federation"
	"github.com/kars-io/kars/internal/render"
)

func newMeshPeerCmd(c *cluster) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "peer",
		Short: "Federate this cluster's kars-mesh with other clusters' (registryMode: global sandboxes)",
	}
	cmd.AddCommand(newMeshPeerEnableCmd(c))
	return cmd
}

func newMeshPeerEnableCmd(c *cluster) *cobra.Command {
	var name, systemNS string
	var hosts, peers, peerCAs []string
	cmd := &cobra.Command{
		Use:   "enable --name NAME",
		Short: "Turn on federation: a mutual-TLS relay-to-relay link to peer clusters",
		Long: "enable gives this cluster's kars-mesh a federation identity and links: the Secret\n" +
			render.FederationName + " (a CA of its own and a certificate named NAME, created once) and the\n" +
			"ConfigMap " + render.FederationName + " (the peers to dial). The controller re-renders kars-mesh\n" +
			"with a federation listener on port 18766 within a minute. Only meshes whose CA you add\n" +
			"with --peer-ca may link, and each must present the name you dial it by. Run it on both\n" +
			"clusters, exchanging the CA certificates it prints; one side dials (--peer), both accept.",
		Example: "  kars mesh peer enable --name cluster-a --host mesh.cluster-a.example > cluster-a-ca.pem\n" +
			"  kars mesh peer enable --name cluster-b --host mesh.cluster-b.example --peer-ca cluster-a-ca.pem \\\n" +
			"      --peer cluster-a=wss://mesh.cluster-a.example:18766/federation",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, dev := c.kubeconfigPath(); dev {
				return fmt.Errorf("kars dev runs one mesh for the whole machine, so there is nothing to federate with; federation links kars-mesh of two clusters")
			}
			if name == "" {
				return fmt.Errorf("--name is required: it names this mesh to its peers (the certificate's CommonName)")
			}
			for _, p := range peers {
				if n, u, ok := strings.Cut(p, "="); !ok || n == "" || !strings.HasPrefix(u, "wss://") {
					return fmt.Errorf("--peer %q: want name=wss://host:18766%s", p, federation.Path)
				}
			}
			var extraCAs []byte
			for _, f := range peerCAs {
				b, err := os.ReadFile(f)
				if err != nil {
					return err
				}
				if _, err := x509.ParseCertificate(firstPEM(b)); err != nil {
					return fmt.Errorf("--peer-ca %s holds no PEM certificate: %w", f, err)
				}
				extraCAs = append(extraCAs, b...)
			}
			ctx := cmd.Context()
			cl, err := c.client()
			if err != nil {
				return err
			}
			ownCA, err := ensureFederationSecret(ctx, cl, systemNS, name, hosts, extraCAs)
			if err != nil {
				return err
			}
			if err := ensureFederationPeers(ctx, cl, systemNS, peers); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "federation enabled for %s as %q; kars-mesh is re-rendered within a minute.\n"+
				"Give this CA certificate to each peer's operator (their --peer-ca):\n\n", systemNS, name)
			fmt.Fprint(cmd.OutOrStdout(), string(ownCA))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "this mesh's federation name")
	f.StringSliceVar(&hosts, "host", nil, "names and addresses peers reach this mesh's federation port by (certificate SANs)")
	f.StringArrayVar(&peers, "peer", nil, "a peer to dial: name=wss://host:18766"+federation.Path+" (repeatable)")
	f.StringArrayVar(&peerCAs, "peer-ca", nil, "a PEM file with a peer's CA certificate to trust (repeatable)")
	f.StringVar(&systemNS, "system-namespace", "kars-system", "namespace of kars-mesh")
	return cmd
}

func firstPEM(b []byte) []byte {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil
	}
	return blk.Bytes
}

// federationMaterial makes a mesh's CA and the certificate it federates
// with (CommonName name; serverAuth and clientAuth, for the link is
// mutual), valid for hosts.
func federationMaterial(name string, hosts []string, now time.Time) (caPEM, certPEM, keyPEM []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	serial := func() *big.Int {
		n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
		return n
	}
	caTmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: name + " kars-mesh federation CA"},
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	leaf := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: name}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		NotBefore:   now.Add(-time.Hour), NotAfter: now.Add(2 * 365 * 24 * time.Hour)}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			leaf.IPAddresses = append(leaf.IPAddresses, ip)
		} else {
			leaf.DNSNames = append(leaf.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

// ensureFederationSecret creates the federation Secret once (the mesh's
// CA and certificate; its own CA is trusted until peers' are added) and
// appends peer CAs; it returns the mesh's own CA certificate.
func ensureFederationSecret(ctx context.Context, cl client.Client, ns, name string, hosts []string, peerCAs []byte) ([]byte, error) {
	sec := &corev1.Secret{}
	err := cl.Get(ctx, client.ObjectKey{Namespace: ns, Name: render.FederationName}, sec)
	if apierrors.IsNotFound(err) {
		ca, cert, key, err := federationMaterial(name, hosts, time.Now())
		if err != nil {
			return nil, err
		}
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: render.FederationName, Labels: map[string]string{render.LabelPartOf: "kars"}},
			Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"tls.crt": cert, "tls.key": key, "own-ca.crt": ca, "ca.crt": append(append([]byte(nil), ca...), peerCAs...)}}
		if err := cl.Create(ctx, sec); err != nil {
			return nil, describeGetError(err, "Secret", ns+"/"+render.FederationName)
		}
		return ca, nil
	}
	if err != nil {
		return nil, describeGetError(err, "Secret", ns+"/"+render.FederationName)
	}
	if cn := leafName(sec.Data["tls.crt"]); cn != name {
		return nil, fmt.Errorf("this mesh already federates as %q; delete Secret %s/%s to rename it", cn, ns, render.FederationName)
	}
	if len(peerCAs) > 0 && !strings.Contains(string(sec.Data["ca.crt"]), string(peerCAs)) {
		patch := client.MergeFrom(sec.DeepCopy())
		sec.Data["ca.crt"] = append(sec.Data["ca.crt"], peerCAs...)
		if err := cl.Patch(ctx, sec, patch); err != nil {
			return nil, err
		}
	}
	return sec.Data["own-ca.crt"], nil
}

func leafName(certPEM []byte) string {
	c, err := x509.ParseCertificate(firstPEM(certPEM))
	if err != nil {
		return ""
	}
	return c.Subject.CommonName
}

// ensureFederationPeers records the peers to dial; the ConfigMap's
// existence is what turns federation on in kars-mesh's rendering.
func ensureFederationPeers(ctx context.Context, cl client.Client, ns string, add []string) error {
	cm := &corev1.ConfigMap{}
	err := cl.Get(ctx, client.ObjectKey{Namespace: ns, Name: render.FederationName}, cm)
	if apierrors.IsNotFound(err) {
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: render.FederationName, Labels: map[string]string{render.LabelPartOf: "kars"}},
			Data: map[string]string{"peers": strings.Join(add, "\n")}}
		return cl.Create(ctx, cm)
	}
	if err != nil {
		return err
	}
	cur := strings.Fields(cm.Data["peers"])
	for _, p := range add {
		if !slices.Contains(cur, p) {
			cur = append(cur, p)
		}
	}
	patch := client.MergeFrom(cm.DeepCopy())
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data["peers"] = strings.Join(cur, "\n")
	return cl.Patch(ctx, cm, patch)
}
