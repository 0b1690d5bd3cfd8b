// Package testenv gives integration tests a real kube-apiserver (and, when
// asked, kube-controller-manager) with the kars CRDs installed.
//
// Tests call Start; it fails the test with instructions when the binaries
// are missing, and skips it under -short.
package testenv

import (
	"context"
	"errors"
	"os"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kars-io/kars/internal/controlplane"
	"github.com/kars-io/kars/internal/scheme"
)

// Env is a running control plane with a client for it.
type Env struct {
	*controlplane.ControlPlane
	Client client.Client
	Scheme *runtime.Scheme
}

// Options configure Start.
type Options = controlplane.Options

// Scheme returns a scheme with the built-in kinds and the kars kinds.
func Scheme() *runtime.Scheme { return scheme.New() }

// Start runs a control plane for the test and stops it when the test ends.
func Start(t testing.TB, opts Options) *Env {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs a control plane (run without -short)")
	}
	if opts.Log == nil && os.Getenv("KARS_TEST_VERBOSE") != "" {
		opts.Log = os.Stderr
	}
	cp, err := controlplane.Start(context.Background(), opts)
	if errors.Is(err, controlplane.ErrNoAssets) {
		t.Fatalf("%v", err)
	}
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Logf("stop control plane: %v", err)
		}
	})
	s := Scheme()
	c, err := client.New(cp.Config, client.Options{Scheme: s})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	return &Env{ControlPlane: cp, Client: c, Scheme: s}
}
