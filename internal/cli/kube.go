package cli

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/scheme"
)

// schemeForPrint names the kinds of objects printed as YAML.
var schemeForPrint = scheme.New()

// getenv is os.Getenv; tests replace it.
var getenv = os.Getenv

// cluster holds the connection flags shared by every command that talks to
// an API server, and resolves which cluster to use: --kubeconfig, then
// $KUBECONFIG, then the running `kars dev` cluster, then ~/.kube/config.
type cluster struct {
	kubeconfig string
	context    string
	namespace  string
}

func (c *cluster) register(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&c.kubeconfig, "kubeconfig", "", "path to a kubeconfig (default: $KUBECONFIG, the kars dev cluster, ~/.kube/config)")
	f.StringVar(&c.context, "context", "", "kubeconfig context to use")
	f.StringVarP(&c.namespace, "namespace", "n", "", "namespace of the sandbox (default: kars-NAME)")
}

// kubeconfigPath returns the kubeconfig in use and whether it is the dev
// cluster's.
func (c *cluster) kubeconfigPath() (path string, dev bool) {
	devPath := devenv.DefaultPaths().Kubeconfig()
	switch {
	case c.kubeconfig != "":
		return c.kubeconfig, c.kubeconfig == devPath
	case os.Getenv("KUBECONFIG") != "":
		return os.Getenv("KUBECONFIG"), os.Getenv("KUBECONFIG") == devPath
	}
	if _, err := os.Stat(devPath); err == nil && devenv.Running(devenv.DefaultPaths()) {
		return devPath, true
	}
	return clientcmd.RecommendedHomeFile, false
}

func (c *cluster) restConfig() (*rest.Config, error) {
	path, _ := c.kubeconfigPath()
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: path}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: c.context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("no cluster to talk to (kubeconfig %s): %w; start one with `kars dev` or pass --kubeconfig", path, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	return cfg, nil
}

func (c *cluster) client() (client.Client, error) {
	cfg, err := c.restConfig()
	if err != nil {
		return nil, err
	}
	return client.New(cfg, client.Options{Scheme: scheme.New()})
}

// sandboxNamespace is where `kars add NAME` puts a sandbox.
func (c *cluster) sandboxNamespace(name string) string {
	if c.namespace != "" {
		return c.namespace
	}
	return "kars-" + name
}

// sandbox connects to the cluster and resolves NAME there (findSandbox).
func (c *cluster) sandbox(ctx context.Context, name string) (client.Client, *karsv1.KarsSandbox, error) {
	cl, err := c.client()
	if err != nil {
		return nil, nil, err
	}
	sb, err := c.findSandbox(ctx, cl, name)
	if err != nil {
		return nil, nil, err
	}
	return cl, sb, nil
}

// inferencePolicyOf reads the InferencePolicy sandbox sb refers to.
func inferencePolicyOf(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox) (*karsv1.InferencePolicy, error) {
	ip := &karsv1.InferencePolicy{}
	key := client.ObjectKey{Namespace: sb.Namespace, Name: sb.Spec.InferenceRef.Name}
	if err := cl.Get(ctx, key, ip); err != nil {
		return nil, describeGetError(err, "InferencePolicy", key.String())
	}
	return ip, nil
}

// findSandbox resolves NAME: in --namespace or kars-NAME, else the one
// sandbox of that name in any namespace.
func (c *cluster) findSandbox(ctx context.Context, cl client.Client, name string) (*karsv1.KarsSandbox, error) {
	sb := &karsv1.KarsSandbox{}
	key := types.NamespacedName{Namespace: c.sandboxNamespace(name), Name: name}
	err := cl.Get(ctx, key, sb)
	if err == nil {
		return sb, nil
	}
	if !apierrors.IsNotFound(err) || c.namespace != "" {
		return nil, describeGetError(err, "sandbox", key.String())
	}
	var all karsv1.KarsSandboxList
	if err := cl.List(ctx, &all); err != nil {
		return nil, describeGetError(err, "sandboxes", "all namespaces")
	}
	var found []*karsv1.KarsSandbox
	for i := range all.Items {
		if all.Items[i].Name == name {
			found = append(found, &all.Items[i])
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("no sandbox named %q (looked in namespace %s and then everywhere); create it with `kars add %s`", name, key.Namespace, name)
	case 1:
		return found[0], nil
	default:
		return nil, fmt.Errorf("%d sandboxes are named %q; say which with --namespace", len(found), name)
	}
}

func describeGetError(err error, what, where string) error {
	var status apierrors.APIStatus
	if errors.As(err, &status) && apierrors.IsForbidden(err) {
		return fmt.Errorf("not allowed to read %s in %s: %w", what, where, err)
	}
	return fmt.Errorf("read %s %s: %w", what, where, err)
}
