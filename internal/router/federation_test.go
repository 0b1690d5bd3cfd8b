package router

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/mesh/bridge"
	"github.com/kars-io/kars/internal/mesh/federation"
	"github.com/kars-io/kars/internal/mesh/server"
	"github.com/kars-io/kars/internal/pairing"
	"github.com/kars-io/kars/internal/routerconfig"
)

// meshCA is a mesh's own CA and the leaf certificate it federates with.
type meshCA struct {
	name string
	ca   *x509.Certificate
	leaf tls.Certificate
}

func newMeshCA(t *testing.T, name string) *meshCA {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &meshCA{name: name, ca: ca, leaf: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
}

// tlsTrusting is m's federation TLS configuration, trusting peers' CAs.
func (m *meshCA) tlsTrusting(peers ...*meshCA) *tls.Config {
	pool := x509.NewCertPool()
	for _, p := range peers {
		pool.AddCert(p.ca)
	}
	return &tls.Config{Certificates: []tls.Certificate{m.leaf}, RootCAs: pool, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
}

// fedMesh is a kars-mesh with a federation listener.
type fedMesh struct {
	*meshNet
	fed    *federation.Federation
	fedURL string
}

func startFedMesh(t *testing.T, ca *meshCA, cfg *tls.Config, peers []federation.Peer, redeem func(context.Context, pairing.Redemption) (*pairing.Result, error)) *fedMesh {
	t.Helper()
	dir := t.TempDir()
	s, err := server.Open(server.Options{Dir: dir, Redeem: redeem,
		Federation: &federation.Options{Name: ca.name, TLS: cfg, Peers: peers, AnnounceEvery: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	fs := httptest.NewUnstartedServer(s.Federation.Handler())
	fs.TLS = cfg
	fs.StartTLS()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Federation.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		fs.CloseClientConnections()
		fs.Close()
		hs.CloseClientConnections()
		hs.Close()
		s.Close()
	})
	return &fedMesh{meshNet: &meshNet{dir: dir, url: hs.URL, srv: s}, fed: s.Federation, fedURL: "wss://" + fs.Listener.Addr().String() + federation.Path}
}

func waitLinks(t *testing.T, f *federation.Federation, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(f.Links()) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d federation links, want %d", len(f.Links()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMeshFederation: planner's router uses cluster A's kars-mesh, worker's
// cluster B's; the two relays are linked with mutual TLS. With
// registryMode: global on both sandboxes, the KNOCK, the prekey bundle
// and the messages cross the link, and the exchange works as on one mesh.
// A mesh whose certificate the others do not trust gets no link, and a
// token one mesh issued is redeemed from the other through the link.
func TestMeshFederation(t *testing.T) {
	caA, caB, caX := newMeshCA(t, "cluster-a"), newMeshCA(t, "cluster-b"), newMeshCA(t, "cluster-x")
	_, pairKey, _ := ed25519.GenerateKey(rand.Reader)
	pairPub := pairKey.Public().(ed25519.PublicKey)
	redeemed := map[string]string{}
	redeemA := func(_ context.Context, r pairing.Redemption) (*pairing.Result, error) {
		p, err := pairing.Verify(r.Token, pairPub, time.Now())
		if err != nil {
			return nil, err
		}
		if _, err := r.Check(time.Now()); err != nil {
			return nil, err
		}
		if redeemed[r.Token] != "" {
			return nil, pairing.ErrAlreadyRedeemed
		}
		redeemed[r.Token] = r.DID
		return &pairing.Result{Pairing: "kars-planner/from-b", Name: p.Name, Issuer: p.Issuer, Sandbox: p.Sandbox}, nil
	}
	meshB := startFedMesh(t, caB, caB.tlsTrusting(caA), nil, nil)
	meshA := startFedMesh(t, caA, caA.tlsTrusting(caB), []federation.Peer{{Name: "cluster-b", URL: meshB.fedURL}}, redeemA)
	waitLinks(t, meshA.fed, 1)
	waitLinks(t, meshB.fed, 1)
	global := func(c *routerconfig.Config) { c.Mesh.RegistryMode = "global" }
	planner := startMeshRouter(t, meshA.meshNet, "planner", meshGov, global)
	worker := startMeshRouter(t, meshB.meshNet, "worker", meshGov, global)
	local := startMeshRouter(t, meshB.meshNet, "hermit", meshGov) // registryMode local
	planner.pair(peerOf("worker", worker.did), peerOf("hermit", local.did))
	worker.pair(peerOf("planner", planner.did))
	local.pair(peerOf("planner", planner.did))

	// The announcements carry each mesh's global agents.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, a := meshA.fed.PublicKey(worker.did)
		_, b := meshB.fed.PublicKey(planner.did)
		if a && b {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the meshes did not learn each other's global agents")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, ok := meshA.fed.PublicKey(local.did); ok {
		t.Fatal("a registryMode: local agent was announced to the peer mesh")
	}

	sent := make(chan map[string]any, 1)
	go func() {
		_, out := planner.agent("POST", bridge.SendPath, map[string]any{"to": "worker", "text": "across clusters", "awaitReplySeconds": 20})
		sent <- out
	}()
	ms := inbox(t, worker, 20)
	if len(ms) != 1 || ms[0].(map[string]any)["text"] != "across clusters" {
		t.Fatalf("worker's inbox: %v", ms)
	}
	if code, out := worker.agent("POST", bridge.SendPath, map[string]any{"to": "planner", "text": "received", "inReplyTo": ms[0].(map[string]any)["id"]}); code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	out := <-sent
	if r, _ := out["reply"].(map[string]any); r == nil || r["text"] != "received" {
		t.Fatalf("planner: %v", out)
	}
	// A local-mode agent of the peer cluster is not reachable.
	code, out := planner.agent("POST", bridge.SendPath, map[string]any{"to": "hermit", "text": "hello?"})
	if code == 200 {
		t.Fatalf("a registryMode: local agent was reached across clusters: %v", out)
	}

	// A mesh with an untrusted certificate gets no link.
	meshX := startFedMesh(t, caX, caX.tlsTrusting(caA), []federation.Peer{{Name: "cluster-b", URL: meshB.fedURL}}, nil)
	time.Sleep(500 * time.Millisecond)
	if len(meshX.fed.Links()) != 0 || len(meshB.fed.Links()) != 1 {
		t.Fatalf("an untrusted mesh linked: x %v, b %v", meshX.fed.Links(), meshB.fed.Links())
	}
	// A trusted peer that claims another name is refused too: X trusts
	// B's CA but dials B expecting the name cluster-a.
	meshY := startFedMesh(t, caX, caX.tlsTrusting(caB), []federation.Peer{{Name: "cluster-a", URL: meshB.fedURL}}, nil)
	time.Sleep(500 * time.Millisecond)
	if len(meshY.fed.Links()) != 0 {
		t.Fatalf("a link to a mesh under the wrong name came up: %v", meshY.fed.Links())
	}

	// A token cluster A issued, redeemed by worker's router through B.
	tok, err := pairing.Mint(rand.Reader, pairKey, pairing.Payload{Name: "from-b", Sandbox: "kars-planner/planner", Issuer: planner.did,
		Registry: meshA.url, Relay: meshA.relayURL(), Slots: 1, Exp: time.Now().Add(time.Hour).Unix(), Capabilities: []string{"handoff"}})
	if err != nil {
		t.Fatal(err)
	}
	// The router presents it at its own mesh (B), which forwards it.
	var res struct {
		DID    string
		Result pairing.Result
	}
	if code := worker.admin("POST", bridge.AdminRedeemPath, map[string]string{"token": retarget(tok, meshB.url)}, &res); code != 502 {
		t.Fatalf("a tampered token was redeemed: %d %+v", code, res)
	}
	if code := worker.admin("POST", bridge.AdminRedeemPath, map[string]string{"token": tok}, &res); code != 200 || res.Result.Issuer != planner.did || redeemed[tok] != worker.did {
		t.Fatalf("redeem through the link: %d %+v %v", code, res, redeemed)
	}
}

// retarget rewrites the token's registry: the signature no longer holds.
func retarget(tok, registry string) string {
	p, err := pairing.Parse(tok)
	if err != nil {
		panic(err)
	}
	return strings.Replace(tok, tok[len(pairing.Prefix):strings.IndexByte(tok, '.')], encodePayload(p, registry), 1)
}

func encodePayload(p *pairing.Payload, registry string) string {
	q := *p
	q.Registry = registry
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	t, err := pairing.Mint(rand.Reader, k, q)
	if err != nil {
		panic(errors.New("re-mint"))
	}
	return t[len(pairing.Prefix):strings.IndexByte(t, '.')]
}
