package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/eval"
	"github.com/kars-io/kars/internal/routerconfig"
)

// AdminEvalRunner plays KarsEvals on a cluster through each sandbox's
// router admin API, whose evaluation relay passes chat turns to the agent
// and probes to the router's agent API inside the pod (both listen on the
// pod's loopback only). The controller already holds what that takes —
// the admin Secret and the pinned certificate — so no Job runs with the
// admin token mounted, and nothing new is opened into the pod.
type AdminEvalRunner struct {
	// Reader reads the sandbox's admin Secret.
	Reader client.Reader
	// DialContext, when set, dials instead of the default dialer (the
	// HTTPSProber's).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// EvalTarget implements EvalRunner.
func (a *AdminEvalRunner) EvalTarget(ctx context.Context, sb *karsv1.KarsSandbox) (eval.Target, error) {
	t, err := adminTarget(ctx, a.Reader, sb)
	if err != nil {
		return eval.Target{}, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(t.CertPEM) {
		return eval.Target{}, errors.New("the sandbox's admin Secret holds no router certificate to trust")
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, ServerName: t.ServerName, MinVersion: tls.VersionTLS12},
		Proxy:               nil,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     30 * time.Second,
	}
	if a.DialContext != nil {
		tr.DialContext = a.DialContext
	}
	base := strings.TrimSuffix(t.Endpoint, "/")
	return eval.Target{
		Client:    &http.Client{Transport: bearer{token: string(t.Token), next: tr}, Timeout: 5 * time.Minute},
		AgentURL:  base + routerconfig.EvalAgentPrefix,
		RouterURL: base + routerconfig.EvalRouterPrefix,
	}, nil
}

// bearer adds the admin token to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(req *http.Request) (*http.Response, error) {
	if b.token == "" {
		return nil, fmt.Errorf("no admin token for %s", req.URL.Host)
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(req)
}
