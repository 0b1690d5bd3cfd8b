// Package federation links kars-mesh instances of different clusters
// (docs/mesh.md, "Federation"): a relay-to-relay WebSocket over mutual
// TLS that carries frames for agents published with registryMode:
// global, answers prekey-bundle requests for them, and forwards pairing
// redemptions to the mesh that issued the token.
//
// Each mesh has a certificate whose CommonName is its federation name and
// trusts its peers' CAs: a link is up only when both ends verified each
// other's certificate and the name it claims. A mesh announces its global
// agents (DID and key) over every link; a peer routes frames to them
// through the link, stores what arrives for its own global agents like any
// other frame (journalled before it confirms), and accepts frames only
// from agents the other side announced. Frames stay ciphertext end to
// end: a federated relay, like a local one, never sees plaintext.
//
// Frames for a peer wait in the local relay's journal (a queue per link)
// until the peer confirms it stored them, so a link that drops loses
// nothing; they are resent after it comes back and the peer's inbox drops
// the duplicates.
package federation

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/kars-io/kars/internal/mesh/registry"
	"github.com/kars-io/kars/internal/mesh/relay"
	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/pairing"
)

// GlobalCapability marks an agent registered for federation: the kars
// router registers with it when its sandbox has registryMode: global.
const GlobalCapability = wire.CapabilityGlobal

// Path is the link's WebSocket path on the federation listener.
const Path = "/federation"

// Peer is a mesh this one dials.
type Peer struct {
	// Name is the peer's federation name: the CommonName its certificate
	// must carry.
	Name string
	// URL is its link endpoint, wss://host:port/federation.
	URL string
}

// Options configure a Federation.
type Options struct {
	// Name is this mesh's federation name (its certificate's CN).
	Name string
	// TLS holds this mesh's certificate and the peers' CAs (RootCAs for
	// dialing, ClientCAs for accepting).
	TLS *tls.Config
	// Peers are dialed; peers may also dial this mesh.
	Peers []Peer
	// Store is the local registry; its agents with GlobalCapability are
	// announced.
	Store *registry.Store
	// Redeem redeems a token this mesh issued, for a peer's redeemer.
	Redeem func(ctx context.Context, r pairing.Redemption) (*pairing.Result, error)
	Logger *slog.Logger
	// AnnounceEvery re-announces the global agents (10 s when zero).
	AnnounceEvery time.Duration
}

// Federation is one mesh's side of its links.
type Federation struct {
	o     Options
	relay *relay.Relay

	mu     sync.Mutex
	links  map[string]*link
	remote map[string]remoteAgent // by DID

	rid atomic.Uint64
}

type remoteAgent struct {
	link string
	pub  ed25519.PublicKey
}

// New makes a federation; attach the relay with Attach before serving.
func New(o Options) (*Federation, error) {
	if o.Name == "" || o.TLS == nil || o.Store == nil {
		return nil, errors.New("federation: a name, a TLS configuration and the registry store are required")
	}
	if len(o.TLS.Certificates) == 0 || o.TLS.RootCAs == nil || o.TLS.ClientCAs == nil {
		return nil, errors.New("federation: TLS needs this mesh's certificate and the peers' CAs (mutual authentication)")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.AnnounceEvery <= 0 {
		o.AnnounceEvery = 10 * time.Second
	}
	for _, p := range o.Peers {
		u, err := url.Parse(p.URL)
		if err != nil || u.Scheme != "wss" || p.Name == "" {
			return nil, fmt.Errorf("federation peer %q: want a name and a wss:// URL, got %q", p.Name, p.URL)
		}
	}
	return &Federation{o: o, links: map[string]*link{}, remote: map[string]remoteAgent{}}, nil
}

// Attach gives the federation the relay it feeds (the relay is built
// with the federation as its Remote, so it comes second).
func (f *Federation) Attach(r *relay.Relay) { f.relay = r }

// queueOf is the relay queue of a link.
func queueOf(peer string) string { return "fed:" + peer }

// Lookup implements relay.Remote.
func (f *Federation) Lookup(did string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.remote[did]
	if !ok {
		return "", false
	}
	return queueOf(a.link), true
}

// Kick implements relay.Remote.
func (f *Federation) Kick(queue string) {
	f.mu.Lock()
	for name, l := range f.links {
		if queueOf(name) == queue {
			l.kick()
		}
	}
	f.mu.Unlock()
}

// PublicKey implements registry.Remote.
func (f *Federation) PublicKey(did string) (ed25519.PublicKey, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.remote[did]
	return a.pub, ok
}

// Bundle implements registry.Remote: the agent's own registry hands out
// the bundle (and consumes its one-time prekey).
func (f *Federation) Bundle(ctx context.Context, did string) (*wire.BundleResponse, error) {
	f.mu.Lock()
	a, ok := f.remote[did]
	l := f.links[a.link]
	f.mu.Unlock()
	if !ok || l == nil {
		return nil, registry.ErrNotFound
	}
	res, err := l.request(ctx, &message{T: msgBundle, DID: did})
	if err != nil {
		return nil, err
	}
	if res.Status != http.StatusOK || res.Bundle == nil {
		return nil, fmt.Errorf("%w: %s", registry.ErrNotFound, res.Detail)
	}
	return res.Bundle, nil
}

// Redeem forwards a redemption to the peers, for a token this mesh did
// not issue: the first peer that recognises it answers.
func (f *Federation) Redeem(ctx context.Context, r pairing.Redemption) (*pairing.Result, error) {
	f.mu.Lock()
	ls := make([]*link, 0, len(f.links))
	for _, l := range f.links {
		ls = append(ls, l)
	}
	f.mu.Unlock()
	last := error(pairing.ErrSignature)
	for _, l := range ls {
		res, err := l.request(ctx, &message{T: msgRedeem, Redemption: &r})
		if err != nil {
			last = err
			continue
		}
		switch res.Status {
		case http.StatusOK:
			return res.Result, nil
		case http.StatusForbidden:
			continue // not this peer's token
		case http.StatusConflict:
			return nil, pairing.ErrAlreadyRedeemed
		case http.StatusGone:
			return nil, fmt.Errorf("%w (at %s): %s", pairing.ErrExpired, l.peer, res.Detail)
		case http.StatusNotFound:
			return nil, pairing.ErrUnknownToken
		default:
			last = fmt.Errorf("federation peer %s: %d %s", l.peer, res.Status, res.Detail)
		}
	}
	return nil, last
}

// Links lists the peers with a live link.
func (f *Federation) Links() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.links))
	for n := range f.links {
		out = append(out, n)
	}
	return out
}

// Handler serves the link endpoint on the federation listener, which
// must be TLS with client certificates required and verified against
// the peers' CAs (ServeTLS with Options.TLS).
func (f *Federation) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Path, func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "federation needs a client certificate from a trusted peer", http.StatusUnauthorized)
			return
		}
		peer := r.TLS.VerifiedChains[0][0].Subject.CommonName
		if peer == "" || peer == f.o.Name {
			http.Error(w, "the client certificate names no peer mesh", http.StatusForbidden)
			return
		}
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		f.serve(r.Context(), peer, ws)
	})
	return mux
}

// Run dials every configured peer and keeps the links up until ctx ends.
func (f *Federation) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, p := range f.o.Peers {
		wg.Go(func() { f.dialLoop(ctx, p) })
	}
	wg.Wait()
}

func (f *Federation) dialLoop(ctx context.Context, p Peer) {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		cfg := f.o.TLS.Clone()
		cfg.ClientCAs, cfg.ClientAuth = nil, tls.NoClientCert
		// The server must be the peer by name, not merely anyone the
		// CAs vouch for.
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || cs.PeerCertificates[0].Subject.CommonName != p.Name {
				return fmt.Errorf("federation: %s presented a certificate for another mesh", p.URL)
			}
			return nil
		}
		if u, err := url.Parse(p.URL); err == nil {
			cfg.ServerName = u.Hostname()
		}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, Proxy: nil}}
		dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		ws, _, err := websocket.Dial(dctx, p.URL, &websocket.DialOptions{HTTPClient: hc})
		cancel()
		if err != nil {
			f.o.Logger.Warn("federation link not up; retrying", "peer", p.Name, "url", p.URL, "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 30*time.Second)
			continue
		}
		backoff = 200 * time.Millisecond
		f.serve(ctx, p.Name, ws)
	}
}
