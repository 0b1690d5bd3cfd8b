// Command kars-mesh runs the AgentMesh registry and relay: the registry
// API under /v1 and /health, the relay's WebSocket at /ws. Both keep
// their state in journals under -state, so a restart loses no
// registration, one-time prekey consumption or unacknowledged message.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kars-io/kars/internal/mesh/relay"
	"github.com/kars-io/kars/internal/mesh/server"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kars-mesh:", err)
		os.Exit(1)
	}
}

func run() error {
	registryAddr := flag.String("registry-listen", "127.0.0.1:18080", "address of the registry API")
	relayAddr := flag.String("relay-listen", "127.0.0.1:18765", "address of the relay WebSocket (/ws); the same as -registry-listen serves both on one port")
	state := flag.String("state", "", "directory for the registry and relay journals (required)")
	maxMsgs := flag.Int("max-queued-messages", 10_000, "per-recipient limit on stored, unacknowledged frames")
	maxBytes := flag.Int("max-queued-bytes", 64<<20, "per-recipient limit on stored, unacknowledged bytes")
	maxTotal := flag.Int("max-total-bytes", 1<<30, "limit on stored, unacknowledged bytes for all recipients together (they are held in memory)")
	ttl := flag.Duration("ttl", relay.DefaultTTL, "how long an unacknowledged frame is kept")
	openRelay := flag.Bool("allow-unregistered", false, "let agents the registry does not know connect to the relay and receive mail")
	flag.Parse()
	if *state == "" {
		return errors.New("-state is required: the journals must outlive the process")
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	srv, err := server.Open(server.Options{Dir: *state, Logger: log, TTL: *ttl, AllowUnregistered: *openRelay,
		Quotas: relay.Quotas{PerRecipientMessages: *maxMsgs, PerRecipientBytes: *maxBytes, TotalBytes: *maxTotal}})
	if err != nil {
		return err
	}
	defer srv.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var servers []*http.Server
	if *registryAddr == *relayAddr {
		servers = append(servers, &http.Server{Addr: *registryAddr, Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second})
	} else {
		servers = append(servers,
			&http.Server{Addr: *registryAddr, Handler: srv.Registry, ReadHeaderTimeout: 10 * time.Second},
			&http.Server{Addr: *relayAddr, Handler: srv.Relay, ReadHeaderTimeout: 10 * time.Second})
	}
	errc := make(chan error, len(servers))
	for _, s := range servers {
		ln, err := net.Listen("tcp", s.Addr)
		if err != nil {
			return err
		}
		log.Info("listening", "addr", ln.Addr().String())
		go func() { errc <- s.Serve(ln) }()
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		s.Shutdown(sctx)
	}
	return nil
}
