package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"helm.sh/helm/v4/pkg/strvals"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	aksbicep "github.com/kars-io/kars/deploy/aks"
	"github.com/kars-io/kars/deploy/helm"
	"github.com/kars-io/kars/internal/blueprint"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/up"
	"github.com/kars-io/kars/internal/up/aks"
	"github.com/kars-io/kars/internal/version"
)

// upFlags are `kars up`'s choices.
type upFlags struct {
	systemNamespace string
	release         string
	registry        string
	imageVersion    string
	sets            []string
	valueFiles      []string
	exposeRegistry  bool
	registryHost    string
	ingressClass    string
	dryRun          bool
	timeout         time.Duration

	name, model, isolation, runtime string
	governance                      bool

	aks    bool
	azure  aks.Options
	azPath string
}

func newUpCmd(c *cluster) *cobra.Command {
	var f upFlags
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Install or upgrade kars on a cluster (or provision one on AKS) and create the first sandbox",
		Long: "up installs the kars Helm chart (CRDs, controller, RBAC, seccomp profile installer,\n" +
			"admission policies) into the current cluster with Helm's Go SDK, or upgrades it when the\n" +
			"chart or values changed, and does nothing when they did not. It waits until a controller\n" +
			"reconciles, creates the first sandbox (--name) and prints how to connect.\n\n" +
			"With --aks it first provisions AKS (OIDC issuer, workload identity), ACR, Key Vault, an\n" +
			"Azure AI Foundry project with a model deployment and the router's federated identity from\n" +
			"the Bicep templates in deploy/aks, through the az CLI, after preflight checks (login,\n" +
			"region, providers, quota, names). --dry-run prints every step and parameter and changes nothing.",
		Example: "  kars up --name research-bot --model gpt-4.1 --governance --isolation enhanced\n" +
			"  kars up --aks --location eastus2 --name research-bot --model gpt-4.1 --dry-run\n" +
			"  kars up --expose-registry --registry-host mesh.example.com --ingress-class nginx",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runUp(cmd.Context(), c, f, cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.systemNamespace, "system-namespace", "kars-system", "namespace of the controller and the Helm release")
	fl.StringVar(&f.release, "release", helm.ChartName, "Helm release name")
	fl.StringVar(&f.registry, "image-registry", "", "registry prefix of kars's images (default: the chart's, or the new ACR with --aks)")
	fl.StringVar(&f.imageVersion, "image-version", version.Version, "tag of kars's images")
	fl.StringArrayVar(&f.sets, "set", nil, "chart value, KEY=VALUE (repeatable; see deploy/helm/kars/values.yaml)")
	fl.StringArrayVarP(&f.valueFiles, "values", "f", nil, "chart values file (repeatable)")
	fl.BoolVar(&f.exposeRegistry, "expose-registry", false, "run kars-mesh and expose its registry and relay through an Ingress for federation")
	fl.StringVar(&f.registryHost, "registry-host", "", "host name of the exposed registry (with --expose-registry)")
	fl.StringVar(&f.ingressClass, "ingress-class", "", "IngressClass of the exposed registry (default: the cluster's; azure-application-gateway with --aks)")
	fl.BoolVar(&f.dryRun, "dry-run", false, "print what would be done and change nothing")
	fl.DurationVar(&f.timeout, "timeout", 5*time.Minute, "how long to wait for the controller and the first sandbox")
	fl.StringVar(&f.name, "name", "", "first sandbox to create (none when empty)")
	fl.StringVar(&f.model, "model", "", "model of the first sandbox (e.g. gpt-4.1)")
	fl.StringVar(&f.isolation, "isolation", "enhanced", "isolation of the first sandbox: standard, enhanced or confidential")
	fl.StringVar(&f.runtime, "runtime", "openclaw", "runtime of the first sandbox: "+blueprint.RuntimeNames())
	fl.BoolVar(&f.governance, "governance", true, "govern every action by policy (always on; accepted for compatibility)")

	fl.BoolVar(&f.aks, "aks", false, "provision AKS, ACR, Key Vault and Azure AI Foundry first (needs the az CLI)")
	fl.StringVar(&f.azure.Location, "location", "", "Azure region (with --aks)")
	fl.StringVar(&f.azure.ClusterName, "cluster-name", "kars", "AKS cluster name; prefixes every Azure resource name")
	fl.StringVar(&f.azure.ResourceGroup, "resource-group", "", "resource group (default <cluster-name>-rg)")
	fl.StringVar(&f.azure.Subscription, "subscription", "", "Azure subscription (default: az's current one)")
	fl.IntVar(&f.azure.NodeCount, "node-count", 3, "AKS node count")
	fl.StringVar(&f.azure.NodeVMSize, "node-vm-size", "Standard_D4s_v5", "AKS node VM size")
	fl.StringVar(&f.azure.KubernetesVersion, "kubernetes-version", "", "AKS Kubernetes version (default: the region's)")
	fl.StringVar(&f.azure.ModelVersion, "model-version", "", "model version of the Foundry deployment (default: known for gpt-4.1, gpt-4o families)")
	fl.StringVar(&f.azure.ModelSKU, "model-sku", "GlobalStandard", "Foundry deployment SKU")
	fl.IntVar(&f.azure.ModelCapacity, "model-capacity", 50, "Foundry deployment capacity, thousands of tokens per minute")
	fl.StringVar(&f.azure.ACRName, "acr-name", "", "container registry name (default derived, globally unique)")
	fl.StringVar(&f.azure.KeyVaultName, "key-vault-name", "", "Key Vault name (default derived, globally unique)")
	fl.StringVar(&f.azure.FoundryName, "foundry-name", "", "Azure AI Foundry resource name (default derived, globally unique)")
	fl.StringVar(&f.azPath, "az", "az", "the az executable")
	return cmd
}

// chartValues turns the flags into chart values: files first, then the
// dedicated flags, then --set, each overriding the one before.
func (f upFlags) chartValues(acrLoginServer string) (map[string]any, error) {
	vals := map[string]any{}
	for _, p := range f.valueFiles {
		raw, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("--values: %w", err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("--values %s: %w", p, err)
		}
		vals = mergeValues(vals, m)
	}
	set := func(path string, v any) {
		m := vals
		keys := strings.Split(path, ".")
		for _, k := range keys[:len(keys)-1] {
			next, ok := m[k].(map[string]any)
			if !ok {
				next = map[string]any{}
				m[k] = next
			}
			m = next
		}
		m[keys[len(keys)-1]] = v
	}
	registry := f.registry
	if registry == "" && acrLoginServer != "" {
		registry = acrLoginServer + "/kars"
	}
	if registry != "" {
		set("image.registry", registry)
	}
	if f.imageVersion != "" {
		set("image.version", f.imageVersion)
	}
	if f.exposeRegistry {
		if f.registryHost == "" {
			return nil, errors.New("--expose-registry needs --registry-host: the name other clusters reach the registry at")
		}
		set("mesh.enabled", true)
		set("mesh.exposeRegistry.enabled", true)
		set("mesh.exposeRegistry.host", f.registryHost)
		class := f.ingressClass
		if class == "" && f.aks {
			class = "azure-application-gateway"
		}
		if class != "" {
			set("mesh.exposeRegistry.ingressClassName", class)
		}
	}
	for _, s := range f.sets {
		if err := strvals.ParseInto(s, vals); err != nil {
			return nil, fmt.Errorf("--set %s: %w", s, err)
		}
	}
	return vals, nil
}

// mergeValues overlays b onto a, recursing into maps.
func mergeValues(a, b map[string]any) map[string]any {
	for k, v := range b {
		if bm, ok := v.(map[string]any); ok {
			if am, ok := a[k].(map[string]any); ok {
				a[k] = mergeValues(am, bm)
				continue
			}
		}
		a[k] = v
	}
	return a
}

func runUp(ctx context.Context, c *cluster, f upFlags, out io.Writer) error {
	if f.aks {
		return runUpAKS(ctx, c, f, out)
	}
	vals, err := f.chartValues("")
	if err != nil {
		return err
	}
	// Render now, so that bad values fail before anything is touched.
	if _, err := helm.Render(vals, helm.RenderOptions{Namespace: f.systemNamespace, ReleaseName: f.release}); err != nil {
		return err
	}
	path, dev := c.kubeconfigPath()
	if f.dryRun {
		return printUpPlan(c, f, vals, path, out)
	}
	sb, err := f.firstSandbox(nil)
	if err != nil {
		return err
	}
	return installAndCreate(ctx, c, f, vals, up.Target{Kubeconfig: path, Context: c.context, Namespace: f.systemNamespace, Release: f.release}, dev, sb, out)
}

// firstSandbox builds the first sandbox's objects; nil when --name is empty.
// With target nil the provider is chosen as `kars add` chooses it.
func (f upFlags) firstSandbox(target *karsv1.ModelTarget) ([]client.Object, error) {
	if f.name == "" {
		return nil, nil
	}
	o := blueprint.Options{Name: f.name, Runtime: f.runtime, Model: f.model, Isolation: karsv1.IsolationLevel(f.isolation)}
	if target != nil {
		o.Target = *target
	} else {
		p, err := devenv.DetectProvider(getenv)
		if err != nil {
			return nil, err
		}
		o.Target, o.APIKey = p.Target, p.Key
	}
	return blueprint.Build(o)
}

func printUpPlan(c *cluster, f upFlags, vals map[string]any, kubeconfig string, out io.Writer) error {
	fmt.Fprintf(out, "kars up (dry run: nothing is created or changed)\n\ncluster: kubeconfig %s", kubeconfig)
	if c.context != "" {
		fmt.Fprintf(out, ", context %s", c.context)
	}
	fmt.Fprintln(out)
	h, err := up.NewHelm(up.Target{Kubeconfig: kubeconfig, Context: c.context, Namespace: f.systemNamespace, Release: f.release}, nil)
	if err != nil {
		return err
	}
	act, cur, err := h.Plan(vals)
	switch {
	case err != nil:
		fmt.Fprintf(out, "release %s/%s: cannot read it (%v)\n", f.systemNamespace, f.release, err)
	case act == up.Unchanged:
		fmt.Fprintf(out, "release %s/%s: revision %d is up to date: nothing to do\n", f.systemNamespace, f.release, cur.Version)
	case act == up.Upgraded:
		fmt.Fprintf(out, "release %s/%s: would upgrade revision %d\n", f.systemNamespace, f.release, cur.Version)
	default:
		fmt.Fprintf(out, "release %s/%s: would install\n", f.systemNamespace, f.release)
	}
	return printInstallSteps(f, vals, nil, out)
}

// printInstallSteps describes the in-cluster half of `kars up`.
func printInstallSteps(f upFlags, vals map[string]any, target *karsv1.ModelTarget, out io.Writer) error {
	labels, err := up.PodSecurityLabels(vals)
	if err != nil {
		return err
	}
	ch, err := helm.Load()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Install (Helm SDK, in-process):\n")
	fmt.Fprintf(out, "  namespace %s, labels:", f.systemNamespace)
	for _, k := range sortedKeys(labels) {
		fmt.Fprintf(out, " %s=%s", k, labels[k])
	}
	fmt.Fprintf(out, "\n  chart %s-%s as release %s, values:\n", ch.Metadata.Name, ch.Metadata.Version, f.release)
	raw, err := yaml.Marshal(vals)
	if err != nil {
		return err
	}
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		fmt.Fprintf(out, "    %s\n", l)
	}
	fmt.Fprintln(out, "  wait for the controller (Deployment rolled out, or a held leader Lease)")
	if f.name == "" {
		fmt.Fprintln(out, "  no first sandbox (--name not given)")
		return nil
	}
	objs, err := f.firstSandbox(target)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  first sandbox %s (unless it exists), objects:\n", f.name)
	if target != nil {
		fmt.Fprintf(out, "    model %s at %s (deployment %s), router credential %s, client %s, tenant %s\n",
			target.Model, target.Endpoint, target.Deployment, target.Auth.Mode, target.Auth.ClientID, target.Auth.TenantID)
	}
	for _, o := range objs {
		gvk, _ := objectKind(o)
		fmt.Fprintf(out, "    %s %s\n", gvk, joinKey(o))
	}
	return nil
}

func objectKind(o client.Object) (string, error) {
	gvks, _, err := schemeForPrint.ObjectKinds(o)
	if err != nil || len(gvks) == 0 {
		return fmt.Sprintf("%T", o), err
	}
	return gvks[0].Kind, nil
}

// installAndCreate is the in-cluster half of `kars up`: namespace, Helm
// release, controller, first sandbox, and how to connect.
func installAndCreate(ctx context.Context, c *cluster, f upFlags, vals map[string]any, t up.Target, dev bool, sandbox []client.Object, out io.Writer) error {
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(&clientcmd.ClientConfigLoadingRules{ExplicitPath: t.Kubeconfig},
		&clientcmd.ConfigOverrides{CurrentContext: t.Context}).ClientConfig()
	if err != nil {
		return fmt.Errorf("no cluster to install into (kubeconfig %s): %w", t.Kubeconfig, err)
	}
	cl, err := client.New(cfg, client.Options{Scheme: schemeForPrint})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "kars up: %s (kubeconfig %s)\n", cfg.Host, t.Kubeconfig)
	labels, err := up.PodSecurityLabels(vals)
	if err != nil {
		return err
	}
	changed, err := up.EnsureNamespace(ctx, cl, t.Namespace, labels)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  namespace %s: %s\n", t.Namespace, map[bool]string{true: "created or relabelled (Pod Security " + labels["pod-security.kubernetes.io/enforce"] + ")", false: "unchanged"}[changed])
	h, err := up.NewHelm(t, nil)
	if err != nil {
		return err
	}
	res, err := h.Install(ctx, vals)
	if err != nil {
		return err
	}
	switch res.Action {
	case up.Unchanged:
		fmt.Fprintf(out, "  release %s: revision %d is up to date (same chart, same values): nothing to do\n", t.Release, res.Revision)
	case up.Upgraded:
		fmt.Fprintf(out, "  release %s: upgraded revision %d → %d\n", t.Release, res.Previous, res.Revision)
	default:
		fmt.Fprintf(out, "  release %s: installed revision %d\n", t.Release, res.Revision)
	}
	check := up.ControllerCheck{Namespace: t.Namespace, Deployment: "kars-controller", LeaseID: leaseID(vals),
		InProcess: func() bool { return dev && devenv.Running(devenv.DefaultPaths()) }}
	how, err := check.WaitController(ctx, cl, f.timeout, out)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  controller: %s\n", how)
	if len(sandbox) == 0 {
		fmt.Fprintln(out, "\nNo sandbox requested: create one with `kars add NAME`.")
		return nil
	}
	sb := sandbox[len(sandbox)-1]
	key := client.ObjectKeyFromObject(sb)
	var existing karsv1.KarsSandbox
	switch err := cl.Get(ctx, key, &existing); {
	case err == nil:
		fmt.Fprintf(out, "  sandbox %s: exists, left as it is\n", key)
	case apierrors.IsNotFound(err):
		if err := createAll(ctx, cl, sandbox, io.Discard); err != nil {
			return err
		}
		fmt.Fprintf(out, "  sandbox %s: created\n", key)
	default:
		return describeGetError(err, "sandbox", key.String())
	}
	got, err := up.WaitReconciled(ctx, cl, key, f.timeout)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  sandbox %s: phase %s\n", key, got.Status.Phase)
	fmt.Fprintf(out, "\nConnect:\n  kars connect %s\n  kars status %s\n  kars operator\n", got.Name, got.Name)
	if got.Status.Phase != karsv1.SandboxRunning {
		fmt.Fprintf(out, "(it is %s: `kars status %s` shows what it waits for)\n", got.Status.Phase, got.Name)
	}
	return nil
}

// leaseID is the controller's leader-election Lease name in vals or the
// chart's default.
func leaseID(vals map[string]any) string {
	if c, ok := vals["controller"].(map[string]any); ok {
		if le, ok := c["leaderElection"].(map[string]any); ok {
			if id, ok := le["id"].(string); ok && id != "" {
				return id
			}
		}
	}
	return "kars-controller.kars.azure.com"
}

func runUpAKS(ctx context.Context, c *cluster, f upFlags, out io.Writer) error {
	kubeconfig := c.kubeconfig
	if kubeconfig == "" {
		kubeconfig = os.Getenv("KUBECONFIG")
	}
	if kubeconfig == "" || strings.Contains(kubeconfig, string(os.PathListSeparator)) {
		kubeconfig = clientcmd.RecommendedHomeFile
	}
	o := f.azure
	o.Model, o.Sandbox, o.ExposeRegistry, o.Kubeconfig = f.model, f.name, f.exposeRegistry, kubeconfig
	if o.Model == "" {
		o.Model = "gpt-4.1"
	}
	o.TemplateFile = filepath.Join(devenv.Home(), "aks", version.Version, aksbicep.Main)
	o, err := o.Defaults()
	if err != nil {
		return err
	}
	names := o.Names()
	acrServer := names.ACR + ".azurecr.io"
	if f.exposeRegistry && f.registryHost == "" {
		return errors.New("--expose-registry needs --registry-host: the DNS name you point at the Application Gateway's public IP")
	}
	vals, err := f.chartValues(acrServer)
	if err != nil {
		return err
	}
	if _, err := helm.Render(vals, helm.RenderOptions{Namespace: f.systemNamespace, ReleaseName: f.release}); err != nil {
		return err
	}
	target := func(endpoint, clientID, tenant string) *karsv1.ModelTarget {
		return &karsv1.ModelTarget{Provider: karsv1.ProviderAzureOpenAI, Model: o.Model, Deployment: o.Model, Endpoint: endpoint,
			Auth: &karsv1.ProviderAuth{Mode: karsv1.AuthWorkloadIdentity, ClientID: clientID, TenantID: tenant}}
	}
	if f.dryRun {
		fmt.Fprintf(out, "kars up --aks (dry run: nothing is created or changed)\n\n")
		fmt.Fprintf(out, "Azure: resource group %s in %s, cluster %s, registry %s, key vault %s, AI Foundry %s (project %s), router identity %s\n",
			names.ResourceGroup, o.Location, names.Cluster, names.ACR, names.KeyVault, names.Foundry, names.Project, names.RouterIdentity)
		fmt.Fprintf(out, "templates: deploy/aks (embedded), written to %s\n\n", o.TemplateFile)
		aks.PrintPlan(o, out)
		fmt.Fprintf(out, "\nImages: kars publishes none; push them to the new registry before the controller can start:\n  az acr login --name %s && make images REGISTRY=%s/kars VERSION=%s\n\n", names.ACR, acrServer, f.imageVersion)
		return printInstallSteps(f, vals, target("<foundryEndpoint output>", "<routerClientId output>", "<tenantId output>"), out)
	}
	az, err := exec.LookPath(f.azPath)
	if err != nil {
		return fmt.Errorf("--aks needs the Azure CLI: %w (install az %s or newer, then `az login`)", err, aks.MinCLIVersion)
	}
	if _, err := aksbicep.WriteTo(filepath.Dir(o.TemplateFile)); err != nil {
		return fmt.Errorf("write the Bicep templates: %w", err)
	}
	outputs, _, err := aks.Provision(ctx, o, aks.CLI{Path: az}, out)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  AKS %s (OIDC issuer %s), registry %s, model %s at %s, router identity %s\n",
		outputs.ClusterName, outputs.OIDCIssuerURL, outputs.ACRLoginServer, outputs.ModelDeployment, outputs.FoundryEndpoint, outputs.RouterClientID)
	if outputs.RegistryPublicIP != "" {
		fmt.Fprintf(out, "  point %s at %s (the Application Gateway in front of the mesh registry)\n", f.registryHost, outputs.RegistryPublicIP)
	}
	fmt.Fprintf(out, "  images: push them with `az acr login --name %s && make images REGISTRY=%s/kars VERSION=%s`\n", names.ACR, acrServer, f.imageVersion)
	sb, err := f.firstSandbox(target(outputs.FoundryEndpoint, outputs.RouterClientID, outputs.TenantID))
	if err != nil {
		return err
	}
	return installAndCreate(ctx, c, f, vals, up.Target{Kubeconfig: kubeconfig, Context: outputs.ClusterName, Namespace: f.systemNamespace, Release: f.release}, false, sb, out)
}

func sortedKeys(m map[string]string) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}
