package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/unixsock"
)

// endpoint is HTTP access to one port inside a sandbox's pod: through the
// dev daemon's Unix socket locally, or a port-forward on a real cluster.
type endpoint struct {
	http  *http.Client
	base  string
	token string
	close func()
	// dial opens a raw connection to the port (for protocols other than
	// HTTP requests, e.g. OpenClaw's WebSocket).
	dial func(ctx context.Context) (net.Conn, error)
}

func (e *endpoint) do(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, e.base+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if e.token != "" {
		req.Header.Set("Authorization", "Bearer "+e.token)
	}
	return e.http.Do(req)
}

// agentEndpoint reaches the agent's chat port (the contract's 18789).
func (c *cluster) agentEndpoint(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox) (*endpoint, error) {
	port := render.DefaultAgentPort
	if sb.Spec.Runtime.BYO != nil && sb.Spec.Runtime.BYO.Port != 0 {
		port = sb.Spec.Runtime.BYO.Port
	}
	return c.podEndpoint(ctx, cl, sb, "agent", port, nil)
}

// adminEndpoint reaches the router's admin API with its bearer token, which
// the caller must be allowed to read from the sandbox's admin Secret.
func (c *cluster) adminEndpoint(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox) (*endpoint, error) {
	names, err := render.NamesFor(sb)
	if err != nil {
		return nil, err
	}
	sec := &corev1.Secret{}
	if err := cl.Get(ctx, client.ObjectKey{Namespace: sb.Namespace, Name: names.RouterAdmin}, sec); err != nil {
		return nil, describeGetError(err, "the router admin Secret", sb.Namespace+"/"+names.RouterAdmin)
	}
	var tlsCfg *tls.Config
	if crt := sec.Data[render.AdminCertKey]; len(crt) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(crt) {
			return nil, fmt.Errorf("router admin Secret %s holds an unreadable certificate", names.RouterAdmin)
		}
		tlsCfg = &tls.Config{RootCAs: pool, ServerName: names.RouterHostname, MinVersion: tls.VersionTLS12}
	}
	ep, err := c.podEndpoint(ctx, cl, sb, "admin", render.RouterAdminPort, tlsCfg)
	if err != nil {
		return nil, err
	}
	ep.token = strings.TrimSpace(string(sec.Data[render.AdminTokenKey]))
	return ep, nil
}

func (c *cluster) podEndpoint(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox, which string, port int32, tlsCfg *tls.Config) (*endpoint, error) {
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	if _, dev := c.kubeconfigPath(); dev {
		sock := devenv.DefaultPaths().AgentSocket(sb.Namespace, sb.Name)
		if which == "admin" {
			sock = devenv.DefaultPaths().AdminSocket(sb.Namespace, sb.Name)
		}
		if _, err := os.Stat(sock); err != nil {
			return nil, fmt.Errorf("sandbox %s/%s is not running locally yet (no %s); check `kars status %s`", sb.Namespace, sb.Name, sock, sb.Name)
		}
		tr := &http.Transport{TLSClientConfig: tlsCfg, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return unixsock.DialContext(ctx, &net.Dialer{}, sock)
		}}
		host := "sandbox"
		if tlsCfg != nil {
			host = tlsCfg.ServerName
		}
		return &endpoint{http: &http.Client{Transport: tr}, base: scheme + "://" + host, close: tr.CloseIdleConnections,
			dial: func(ctx context.Context) (net.Conn, error) { return tr.DialContext(ctx, "unix", sock) }}, nil
	}
	local, stop, err := c.portForward(ctx, cl, sb, port)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{TLSClientConfig: tlsCfg, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", local)
	}}
	host := local
	if tlsCfg != nil {
		host = tlsCfg.ServerName
	}
	return &endpoint{http: &http.Client{Transport: tr}, base: scheme + "://" + host, close: func() { tr.CloseIdleConnections(); stop() },
		dial: func(ctx context.Context) (net.Conn, error) { return tr.DialContext(ctx, "tcp", local) }}, nil
}

// portForward opens a port-forward to port of the sandbox's running pod and
// returns the local address.
func (c *cluster) portForward(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox, port int32) (string, func(), error) {
	var pods corev1.PodList
	if err := cl.List(ctx, &pods, client.InNamespace(sb.Namespace), client.MatchingLabels(render.Selector(sb))); err != nil {
		return "", nil, describeGetError(err, "pods", sb.Namespace)
	}
	var pod *corev1.Pod
	for i := range pods.Items {
		if pods.Items[i].Status.Phase == corev1.PodRunning && pods.Items[i].DeletionTimestamp == nil {
			pod = &pods.Items[i]
			break
		}
	}
	if pod == nil {
		return "", nil, fmt.Errorf("sandbox %s/%s has no running pod; check `kars status %s`", sb.Namespace, sb.Name, sb.Name)
	}
	cfg, err := c.restConfig()
	if err != nil {
		return "", nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", nil, err
	}
	rt, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return "", nil, err
	}
	u := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward").URL()
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u)
	stopCh, ready := make(chan struct{}), make(chan struct{})
	var errOut strings.Builder
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stopCh, ready, io.Discard, &errOut)
	if err != nil {
		return "", nil, err
	}
	failed := make(chan error, 1)
	go func() { failed <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-failed:
		return "", nil, fmt.Errorf("port-forward to %s/%s: %v %s", pod.Namespace, pod.Name, err, errOut.String())
	case <-time.After(30 * time.Second):
		close(stopCh)
		return "", nil, fmt.Errorf("port-forward to %s/%s timed out", pod.Namespace, pod.Name)
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		close(stopCh)
		return "", nil, fmt.Errorf("port-forward to %s/%s: no local port (%v)", pod.Namespace, pod.Name, err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0].Local), func() { close(stopCh) }, nil
}
