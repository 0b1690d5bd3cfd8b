// Package server assembles a kars-mesh: the registry and the relay over
// their journals in one state directory, served on one handler (the
// registry under /v1 and /health, the relay at /ws). cmd/kars-mesh runs
// it on a cluster; `kars dev` runs it inside its daemon.
package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/kars-io/kars/internal/mesh/federation"
	"github.com/kars-io/kars/internal/mesh/registry"
	"github.com/kars-io/kars/internal/mesh/relay"
	"github.com/kars-io/kars/internal/pairing"
)

// Options configure a Server.
type Options struct {
	// Dir holds registry.journal and relay.journal.
	Dir string
	// Quotas bound the relay's store; zero fields take the kars-mesh
	// defaults (10,000 frames and 64 MiB per recipient, 1 GiB total).
	Quotas relay.Quotas
	// TTL is how long an unacknowledged frame is kept (72 h when zero).
	TTL time.Duration
	// AllowUnregistered lets agents the registry does not know connect
	// to the relay.
	AllowUnregistered bool
	Logger            *slog.Logger
	// Redeem, when set, serves POST /v1/pairings/redeem: a redeemer
	// presents a pairing token and proof of its identity, and Redeem
	// binds the token's KarsPairing to it (internal/pairing/apiserver).
	Redeem func(ctx context.Context, r pairing.Redemption) (*pairing.Result, error)
	// Federation, when set, links this mesh to its peers' (Name, TLS,
	// Peers; the store and Redeem are this server's).
	Federation *federation.Options
}

// Server is an open kars-mesh.
type Server struct {
	Store    *registry.Store
	Inbox    *relay.Inbox
	Registry *registry.Server
	Relay    *relay.Relay
	// Federation is nil unless Options.Federation was set; serve its
	// Handler on a mutual-TLS listener and Run it.
	Federation *federation.Federation
	mux        *http.ServeMux
	regMux     *http.ServeMux
}

// Open opens the journals and builds the registry and relay.
func Open(o Options) (*Server, error) {
	if o.Dir == "" {
		return nil, errors.New("kars-mesh: a state directory is required: the journals must outlive the process")
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	q := o.Quotas
	if q.PerRecipientMessages == 0 {
		q.PerRecipientMessages = 10_000
	}
	if q.PerRecipientBytes == 0 {
		q.PerRecipientBytes = 64 << 20
	}
	if q.TotalBytes == 0 {
		q.TotalBytes = 1 << 30
	}
	store, err := registry.OpenStore(o.Dir)
	if err != nil {
		return nil, err
	}
	inbox, err := relay.OpenInbox(o.Dir, q)
	if err != nil {
		store.Close()
		return nil, err
	}
	s := &Server{Store: store, Inbox: inbox, mux: http.NewServeMux(), regMux: http.NewServeMux()}
	ro := relay.Options{Directory: store, RequireRegistered: !o.AllowUnregistered, TTL: o.TTL, Logger: o.Logger}
	rgo := registry.Options{Logger: o.Logger}
	if fo := o.Federation; fo != nil {
		fo.Store, fo.Redeem, fo.Logger = store, o.Redeem, o.Logger
		if s.Federation, err = federation.New(*fo); err != nil {
			inbox.Close()
			store.Close()
			return nil, err
		}
		ro.Remote, rgo.Remote = s.Federation, s.Federation
	}
	s.Relay = relay.New(inbox, ro)
	s.Registry = registry.New(store, rgo)
	if s.Federation != nil {
		s.Federation.Attach(s.Relay)
	}
	s.mux.Handle("/ws", s.Relay)
	s.mux.Handle("/", s.Registry)
	s.regMux.Handle("/", s.Registry)
	if redeem := s.redeemer(o.Redeem); redeem != nil {
		h := redeemHandler(redeem, o.Logger)
		s.mux.Handle("POST "+pairing.RedeemPath, h)
		s.regMux.Handle("POST "+pairing.RedeemPath, h)
	}
	return s, nil
}

// redeemer redeems tokens here and, for tokens another mesh issued,
// through the federation.
func (s *Server) redeemer(local func(context.Context, pairing.Redemption) (*pairing.Result, error)) func(context.Context, pairing.Redemption) (*pairing.Result, error) {
	if s.Federation == nil {
		return local
	}
	return func(ctx context.Context, r pairing.Redemption) (*pairing.Result, error) {
		if local != nil {
			res, err := local(ctx, r)
			if !errors.Is(err, pairing.ErrSignature) {
				return res, err
			}
		}
		return s.Federation.Redeem(ctx, r)
	}
}

// RegistryHandler serves the registry (and redemption) without the
// relay, for a registry port of its own.
func (s *Server) RegistryHandler() http.Handler { return s.regMux }

// Handler serves the registry and the relay.
func (s *Server) Handler() http.Handler { return s.mux }

// Close stops the relay's sweeper and closes the journals. Stop serving
// first.
func (s *Server) Close() error {
	s.Relay.Close()
	return errors.Join(s.Inbox.Close(), s.Store.Close())
}
