// Package controlplane runs a real Kubernetes control plane — etcd,
// kube-apiserver and optionally kube-controller-manager — from the binaries
// that tools/kube builds from pinned Go modules. Integration tests use it
// through internal/testenv; it has no dependency on the testing package.
package controlplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/kars-io/kars/config/crd"
)

// Pinned versions; tools/kube/build.sh builds them into BinDirName.
const (
	KubernetesVersion = "v1.37.2"
	EtcdVersion       = "v3.6.16"
	// BinDirName is the folder under tools/kube/bin holding the binaries.
	BinDirName = "k8s-" + KubernetesVersion + "-etcd-" + EtcdVersion
)

// Options configure Start.
type Options struct {
	// AssetsDir holds etcd, kube-apiserver and kube-controller-manager.
	// Empty means AssetsDir().
	AssetsDir string
	// SkipCRDs leaves the kars CRDs uninstalled.
	SkipCRDs bool
	// ControllerManager also runs kube-controller-manager with the
	// namespace, garbage-collector and serviceaccount controllers, so that
	// namespace deletion and ownerReference garbage collection happen.
	ControllerManager bool
	// Log receives the controller manager's output; nil discards it.
	Log io.Writer
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	// Config reaches the API server as a system:masters user.
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file for the same user.
	Kubeconfig string
	env        *envtest.Environment
	kcm        *exec.Cmd
	kcmDone    chan error
	dir        string
}

// ErrNoAssets reports that the control-plane binaries have not been built.
var ErrNoAssets = errors.New("control-plane binaries not found: run `make controlplane` (or set KUBEBUILDER_ASSETS)")

// AssetsDir finds the control-plane binaries: $KUBEBUILDER_ASSETS, else
// tools/kube/bin/<pin> in the enclosing kars checkout.
func AssetsDir() (string, error) {
	if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" {
		if hasAssets(d) {
			return d, nil
		}
		return "", fmt.Errorf("KUBEBUILDER_ASSETS=%s lacks etcd, kube-apiserver or kube-controller-manager: %w", d, ErrNoAssets)
	}
	root, err := moduleRoot()
	if err != nil {
		return "", ErrNoAssets
	}
	d := filepath.Join(root, "tools", "kube", "bin", BinDirName)
	if !hasAssets(d) {
		return "", fmt.Errorf("%s: %w", d, ErrNoAssets)
	}
	return d, nil
}

func hasAssets(dir string) bool {
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// moduleRoot walks up from the working directory to the kars go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if raw, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			if strings.HasPrefix(string(raw), "module github.com/kars-io/kars\n") {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the kars module")
		}
		dir = parent
	}
}

// Start runs etcd and kube-apiserver on loopback, installs the kars CRDs and,
// if asked, starts kube-controller-manager.
func Start(ctx context.Context, opts Options) (*ControlPlane, error) {
	assets := opts.AssetsDir
	if assets == "" {
		var err error
		if assets, err = AssetsDir(); err != nil {
			return nil, err
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		ErrorIfCRDPathMissing:    true,
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	if !opts.SkipCRDs {
		defs, err := crd.Definitions()
		if err != nil {
			return nil, err
		}
		env.CRDs = defs
		env.CRDInstallOptions.MaxTime = time.Minute
	}
	cfg, err := env.Start()
	if err != nil {
		// envtest leaves etcd and kube-apiserver running when a later step
		// (installing the CRDs) fails; nothing else would ever stop them.
		_ = env.Stop()
		return nil, fmt.Errorf("start kube-apiserver and etcd from %s: %w", assets, err)
	}
	cp := &ControlPlane{Config: cfg, env: env}
	cp.dir, err = os.MkdirTemp("", "kars-controlplane-")
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	admin, err := env.ControlPlane.AddUser(envtest.User{Name: "kars-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		_ = cp.Stop()
		return nil, fmt.Errorf("add admin user: %w", err)
	}
	kubeconfig, err := admin.KubeConfig()
	if err != nil {
		_ = cp.Stop()
		return nil, err
	}
	cp.Kubeconfig = filepath.Join(cp.dir, "kubeconfig")
	if err := os.WriteFile(cp.Kubeconfig, kubeconfig, 0o600); err != nil {
		_ = cp.Stop()
		return nil, err
	}
	if opts.ControllerManager {
		if err := cp.startControllerManager(ctx, assets, opts.Log); err != nil {
			_ = cp.Stop()
			return nil, err
		}
	}
	return cp, nil
}

// startControllerManager runs the controllers that tests rely on: namespace
// deletion, ownerReference garbage collection, ServiceAccount creation and
// the release of deleted volume claims (their kubernetes.io/pvc-protection
// finalizer would otherwise hold a deleted sandbox's namespace).
func (cp *ControlPlane) startControllerManager(ctx context.Context, assets string, log io.Writer) error {
	if log == nil {
		log = io.Discard
	}
	certDir := cp.env.ControlPlane.APIServer.CertDir
	cmd := exec.CommandContext(ctx, filepath.Join(assets, "kube-controller-manager"),
		"--kubeconfig="+cp.Kubeconfig,
		"--authentication-kubeconfig="+cp.Kubeconfig,
		"--authorization-kubeconfig="+cp.Kubeconfig,
		"--secure-port=0",
		"--leader-elect=false",
		"--use-service-account-credentials=false",
		"--controllers=namespace-controller,garbage-collector-controller,serviceaccount-controller,persistentvolumeclaim-protection-controller",
		"--service-account-private-key-file="+filepath.Join(certDir, "sa-signer.key"),
		"--concurrent-gc-syncs=5",
	)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	go func() {
		s := bufio.NewScanner(pr)
		s.Buffer(make([]byte, 64<<10), 1<<20)
		for s.Scan() {
			fmt.Fprintln(log, "kube-controller-manager:", s.Text())
		}
	}()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start kube-controller-manager: %w", err)
	}
	cp.kcm = cmd
	cp.kcmDone = make(chan error, 1)
	go func() { cp.kcmDone <- cmd.Wait(); pw.Close() }()
	return nil
}

// Stop stops every process and removes temporary files.
func (cp *ControlPlane) Stop() error {
	var errs []error
	if cp.kcm != nil && cp.kcm.Process != nil {
		_ = cp.kcm.Process.Signal(os.Interrupt)
		select {
		case <-cp.kcmDone:
		case <-time.After(10 * time.Second):
			_ = cp.kcm.Process.Kill()
			<-cp.kcmDone
		}
	}
	if err := cp.env.Stop(); err != nil {
		errs = append(errs, err)
	}
	if cp.dir != "" {
		errs = append(errs, os.RemoveAll(cp.dir))
	}
	return errors.Join(errs...)
}

// CRDs returns the CRDs installed at start.
func (cp *ControlPlane) CRDs() []*apiextensionsv1.CustomResourceDefinition { return cp.env.CRDs }
