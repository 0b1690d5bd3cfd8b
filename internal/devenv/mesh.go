package devenv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kars-io/kars/internal/mesh/server"
	"github.com/kars-io/kars/internal/pairing"
	pairingapi "github.com/kars-io/kars/internal/pairing/apiserver"
)

// startMesh runs kars-mesh inside the daemon, as the system namespace's
// kars-mesh Deployment does on a cluster: registry and relay on MeshAddr
// (loopback only), journals under dir, and pairing tokens redeemed
// against the dev cluster's KarsPairings.
func startMesh(dir string, cl client.Client, log *slog.Logger) (stop func(), err error) {
	s, err := server.Open(server.Options{Dir: dir, Logger: log,
		Redeem: func(ctx context.Context, r pairing.Redemption) (*pairing.Result, error) {
			pub, err := pairingapi.LoadPublicKey(ctx, cl, SystemNamespace)
			if err != nil {
				return nil, fmt.Errorf("the cluster's pairing key: %w", err)
			}
			return pairingapi.Redeem(ctx, cl, pub, r, time.Now())
		}})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", MeshAddr)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("kars-mesh on %s: %w (is another kars dev running? try `kars dev down`)", MeshAddr, err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("kars-mesh stopped", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		s.Close()
	}, nil
}
