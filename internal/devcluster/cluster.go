// Package devcluster runs the persistent local Kubernetes control plane of
// `kars dev`: etcd, kube-apiserver and kube-controller-manager on loopback,
// with state (etcd data, certificates, kubeconfig, logs) under one folder so
// that a later start resumes the same cluster.
//
// Unlike internal/controlplane (throw-away control planes for tests) it keeps
// fixed ports and a stable CA, so the kubeconfig it writes stays valid.
package devcluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kars-io/kars/config/crd"
	"github.com/kars-io/kars/internal/controlplane"
)

// Options configure a dev cluster.
type Options struct {
	// Dir holds all state; typically ~/.kars/dev.
	Dir string
	// Assets holds etcd, kube-apiserver and kube-controller-manager; empty
	// means controlplane.AssetsDir().
	Assets string
	// APIServerPort on 127.0.0.1; 0 means 16443.
	APIServerPort int
	// EtcdPort (client) on 127.0.0.1; the peer port is EtcdPort+1. 0 means
	// 16379.
	EtcdPort int
	// Progress receives one line per step; nil discards.
	Progress func(step string)
}

// Cluster is a running dev control plane.
type Cluster struct {
	opts       Options
	procs      []*proc
	Config     *rest.Config
	Kubeconfig string
	Server     string
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func (o *Options) defaults() error {
	if o.Dir == "" {
		return errors.New("devcluster: Options.Dir is required")
	}
	if o.APIServerPort == 0 {
		o.APIServerPort = 16443
	}
	if o.EtcdPort == 0 {
		o.EtcdPort = 16379
	}
	if o.Assets == "" {
		a, err := controlplane.AssetsDir()
		if err != nil {
			return err
		}
		o.Assets = a
	}
	if o.Progress == nil {
		o.Progress = func(string) {}
	}
	return nil
}

// KubeconfigPath is where a cluster in dir writes its kubeconfig.
func KubeconfigPath(dir string) string { return filepath.Join(dir, "kubeconfig") }

// Start brings the control plane up (or resumes it from the state in Dir),
// installs or updates the kars CRDs and returns once the API serves them.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	for _, d := range []string{"etcd", "logs", "pki"} {
		if err := os.MkdirAll(filepath.Join(opts.Dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	p := pki{dir: filepath.Join(opts.Dir, "pki")}
	if err := p.ensure(); err != nil {
		return nil, fmt.Errorf("certificates in %s: %w", p.dir, err)
	}
	c = &Cluster{opts: opts, Kubeconfig: KubeconfigPath(opts.Dir),
		Server: "https://127.0.0.1:" + strconv.Itoa(opts.APIServerPort)}
	started := c // the returns below set c to nil
	defer func() {
		if err != nil {
			started.Stop()
		}
	}()
	for _, port := range []int{opts.EtcdPort, opts.EtcdPort + 1, opts.APIServerPort} {
		if err := portFree(port); err != nil {
			return nil, err
		}
	}

	etcdURL := "http://127.0.0.1:" + strconv.Itoa(opts.EtcdPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(opts.EtcdPort+1)
	opts.Progress(fmt.Sprintf("starting etcd %s on %s (data %s)", controlplane.EtcdVersion, etcdURL, filepath.Join(opts.Dir, "etcd")))
	if err := c.start(ctx, "etcd",
		"--name=kars-dev",
		"--data-dir="+filepath.Join(opts.Dir, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kars-dev="+peerURL,
		"--listen-metrics-urls=",
		"--log-level=warn",
	); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, c.procs[0], etcdURL+"/health", nil); err != nil {
		return nil, fmt.Errorf("etcd did not become healthy: %w (log: %s)", err, c.logPath("etcd"))
	}

	opts.Progress(fmt.Sprintf("starting kube-apiserver %s on %s", controlplane.KubernetesVersion, c.Server))
	if err := c.start(ctx, "kube-apiserver",
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(opts.APIServerPort),
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--tls-cert-file="+p.path(serverCert),
		"--tls-private-key-file="+p.path(serverKey),
		"--client-ca-file="+p.path(caCert),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+p.path(saPub),
		"--service-account-signing-key-file="+p.path(saKey),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--authorization-mode=RBAC",
		"--allow-privileged=true",
		"--disable-admission-plugins=ServiceAccount",
		"--cert-dir="+filepath.Join(opts.Dir, "pki", "generated"),
	); err != nil {
		return nil, err
	}
	tlsCfg, err := c.clientTLS(p)
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, c.procs[1], c.Server+"/readyz", tlsCfg); err != nil {
		return nil, fmt.Errorf("kube-apiserver did not become ready: %w (log: %s)", err, c.logPath("kube-apiserver"))
	}
	if err := c.writeKubeconfig(p); err != nil {
		return nil, err
	}
	if c.Config, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
		return nil, err
	}

	opts.Progress("starting kube-controller-manager (namespace, garbage-collector, serviceaccount controllers)")
	if err := c.start(ctx, "kube-controller-manager",
		"--kubeconfig="+c.Kubeconfig,
		"--authentication-kubeconfig="+c.Kubeconfig,
		"--authorization-kubeconfig="+c.Kubeconfig,
		"--secure-port=0",
		"--leader-elect=false",
		"--use-service-account-credentials=false",
		"--controllers=namespace-controller,garbage-collector-controller,serviceaccount-controller,persistentvolumeclaim-protection-controller",
		"--service-account-private-key-file="+p.path(saKey),
		"--root-ca-file="+p.path(caCert),
	); err != nil {
		return nil, err
	}

	opts.Progress("installing the kars CRDs")
	if err := installCRDs(ctx, c.Config); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Cluster) logPath(name string) string { return filepath.Join(c.opts.Dir, "logs", name+".log") }

func (c *Cluster) start(ctx context.Context, name string, args ...string) error {
	logf, err := os.OpenFile(c.logPath(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(c.opts.Assets, name), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The control plane must not outlive the kars process that owns it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); logf.Close(); close(p.done) }()
	c.procs = append(c.procs, p)
	return nil
}

// Stop terminates the processes in reverse order of start.
func (c *Cluster) Stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	c.procs = nil
}

// Exited reports the first control-plane process that has exited, if any.
func (c *Cluster) Exited() error {
	for _, p := range c.procs {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v (log: %s)", p.name, p.err, c.logPath(p.name))
		default:
		}
	}
	return nil
}

func (c *Cluster) clientTLS(p pki) (*tls.Config, error) {
	ca, err := os.ReadFile(p.path(caCert))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	pair, err := tls.LoadX509KeyPair(p.path(adminCert), p.path(adminKey))
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

func (c *Cluster) writeKubeconfig(p pki) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kars-dev"] = &clientcmdapi.Cluster{Server: c.Server, CertificateAuthority: p.path(caCert)}
	cfg.AuthInfos["kars-admin"] = &clientcmdapi.AuthInfo{ClientCertificate: p.path(adminCert), ClientKey: p.path(adminKey)}
	cfg.Contexts["kars-dev"] = &clientcmdapi.Context{Cluster: "kars-dev", AuthInfo: "kars-admin"}
	cfg.CurrentContext = "kars-dev"
	return clientcmd.WriteToFile(*cfg, c.Kubeconfig)
}

func portFree(port int) error {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return fmt.Errorf("port 127.0.0.1:%d is in use (is another kars dev running? try `kars dev down`): %w", port, err)
	}
	return l.Close()
}

// waitHTTP polls url until it answers 200, the process exits or two minutes
// pass.
func waitHTTP(ctx context.Context, p *proc, url string, tlsCfg *tls.Config) error {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := hc.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after 2m (last error: %v)", url, err)
		}
	}
}

// installCRDs creates or updates each kars CRD and waits until it is
// established.
func installCRDs(ctx context.Context, cfg *rest.Config) error {
	s := runtime.NewScheme()
	if err := apiextensionsv1.AddToScheme(s); err != nil {
		return err
	}
	cl, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		return err
	}
	defs, err := crd.Definitions()
	if err != nil {
		return err
	}
	for _, want := range defs {
		got := &apiextensionsv1.CustomResourceDefinition{}
		err := cl.Get(ctx, client.ObjectKeyFromObject(want), got)
		switch {
		case apierrors.IsNotFound(err):
			err = cl.Create(ctx, want.DeepCopy())
		case err == nil:
			upd := want.DeepCopy()
			upd.ResourceVersion = got.ResourceVersion
			err = cl.Update(ctx, upd)
		}
		if err != nil {
			return fmt.Errorf("install CRD %s: %w", want.Name, err)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for _, want := range defs {
		for {
			got := &apiextensionsv1.CustomResourceDefinition{}
			if err := cl.Get(ctx, client.ObjectKeyFromObject(want), got); err == nil && established(got) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("CRD %s not established after 1m", want.Name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

func established(c *apiextensionsv1.CustomResourceDefinition) bool {
	for _, cond := range c.Status.Conditions {
		if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
			return true
		}
	}
	return false
}
