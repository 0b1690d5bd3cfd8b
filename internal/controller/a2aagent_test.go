package controller

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/a2a/a2atest"
	"github.com/kars-io/kars/internal/a2a/card"
	"github.com/kars-io/kars/internal/routerconfig"
)

// cardServer serves foreign agents' signed cards over TLS on loopback.
type cardServer struct {
	*httptest.Server
	mu    sync.Mutex
	cards map[string][]byte
}

func newCardServer() *cardServer {
	s := &cardServer{cards: map[string][]byte{}}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		b, ok := s.cards[r.URL.Path]
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	return s
}

func (s *cardServer) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.Certificate())
	return p
}

// publish serves a 1.0 card named name, signed by signer, at path and
// returns its URL.
func (s *cardServer) publish(t *testing.T, signer *a2atest.Identity, name, path string) string {
	t.Helper()
	raw, _ := json.Marshal(map[string]any{
		"name": name, "description": "a partner", "version": "1",
		"supportedInterfaces": []any{map[string]any{"url": s.URL + "/a2a/" + name, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}},
		"skills": []any{map[string]any{"id": "plan", "name": "plan", "description": "p", "tags": []string{"x"}},
			map[string]any{"id": "book", "name": "book", "description": "b", "tags": []string{"x"}}},
	})
	payload, _ := card.Canonical(raw)
	sig, err := card.Sign(signer.Key.(ed25519.PrivateKey), payload, card.Header{})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(raw, &m)
	m["signatures"] = []card.Signature{sig}
	signed, _ := json.Marshal(m)
	s.mu.Lock()
	s.cards[path] = signed
	s.mu.Unlock()
	return s.URL + path
}

func agentFor(ns, name, url, thumbprint string, sandboxes ...string) *karsv1.A2AAgent {
	return &karsv1.A2AAgent{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: karsv1.A2AAgentSpec{
		CardURL: url, JWSThumbprint: karsv1.Digest(thumbprint), Sandboxes: sandboxes, AllowedSkills: []string{"plan"},
		RateLimit: &karsv1.RequestRateLimit{RPM: 60, Burst: 5}}}
}

func waitAgent(t *testing.T, a *karsv1.A2AAgent, phase string) *karsv1.A2AAgent {
	t.Helper()
	var cur karsv1.A2AAgent
	eventually(t, 20*time.Second, a.Name+" "+phase, func() error {
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(a), &cur); err != nil {
			return err
		}
		if cur.Status.Phase != phase || cur.Status.ObservedGeneration != cur.Generation {
			return errorf("phase %q (%+v)", cur.Status.Phase, cur.Status.Conditions)
		}
		return nil
	})
	return &cur
}

// TestA2AAgentVerifiedAndRouted: a registered agent's card is fetched and
// verified against the pinned key; the sandboxes it lists get it in their
// router's a2aPeers (and its port in their NetworkPolicy); a card signed
// by another key, or a registration past its end, gives them nothing.
func TestA2AAgentVerifiedAndRouted(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the control plane")
	}
	ctx := context.Background()
	ns := newNamespace(t, "kars-a2a-out")
	sb := minimalSandbox(ns, "planner", karsv1.RuntimeOpenClaw)
	withPolicies(t, sb)
	create(t, sb)
	waitRendered(t, sb)
	signer, other := a2atest.NewIdentity(t, "partner"), a2atest.NewIdentity(t, "other")
	url := partnerCards.publish(t, signer, "partner", "/"+ns+"/partner.json")
	good := agentFor(ns, "partner", url, signer.Thumbprint(t), sb.Name)
	bad := agentFor(ns, "impostor", url, other.Thumbprint(t), sb.Name)
	create(t, good, bad)
	v := waitAgent(t, good, PhaseA2AVerified)
	if v.Status.Endpoint != partnerCards.URL+"/a2a/partner" || len(v.Status.Skills) != 2 || !strings.HasPrefix(v.Status.CardDigest, "sha256:") {
		t.Fatalf("status %+v", v.Status)
	}
	u := waitAgent(t, bad, PhaseA2AUnverified)
	if c := u.Status.Conditions[0]; !strings.Contains(c.Message, "not by the pinned") {
		t.Fatalf("unverified condition %+v", c)
	}
	eventually(t, 20*time.Second, "the peer in the router config", func() error {
		r := observe(t, sb)
		var cfg routerconfig.Config
		if err := json.Unmarshal([]byte(r.config.Data[routerconfig.FileName]), &cfg); err != nil {
			return err
		}
		if len(cfg.A2APeers) != 1 {
			return errorf("peers %+v", cfg.A2APeers)
		}
		p := cfg.A2APeers[0]
		if p.Name != "partner" || p.Endpoint != v.Status.Endpoint || p.Thumbprint != signer.Thumbprint(t) || len(p.Skills) != 1 || p.RateLimit.RPM != 60 {
			return errorf("peer %+v", p)
		}
		port := partnerCards.Listener.Addr().(*net.TCPAddr).Port
		for _, e := range r.netpol.Spec.Egress {
			for _, pp := range e.Ports {
				if pp.Port != nil && int(pp.Port.IntVal) == port {
					return nil
				}
			}
		}
		return errorf("no egress to port %d", port)
	})
	// Ending the registration takes the peer away.
	updateRetrying(t, client.ObjectKeyFromObject(good), &karsv1.A2AAgent{}, func(a *karsv1.A2AAgent) {
		a.Spec.ExpiresAt = &metav1.Time{Time: time.Now().Add(-time.Minute)}
	})
	waitAgent(t, good, PhaseA2AExpired)
	eventually(t, 20*time.Second, "the peer gone", func() error {
		if strings.Contains(observe(t, sb).config.Data[routerconfig.FileName], "a2aPeers") {
			return errNotYet
		}
		return nil
	})
	_ = ctx
}
