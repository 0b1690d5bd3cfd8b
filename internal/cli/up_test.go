package cli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/testenv"
	"github.com/kars-io/kars/internal/up/aks/aztest"
)

var update = flag.Bool("update", false, "rewrite golden files")

// cli runs kars with args and returns its exit code and output.
func cli(args ...string) (int, string, string) {
	var o, e bytes.Buffer
	code := Main(args, &o, &e)
	return code, o.String(), e.String()
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if string(want) != got {
		t.Errorf("output differs from %s (run with -update to accept):\n%s", p, got)
	}
}

// offlineEnv makes the first sandbox use the built-in offline model, as
// on a machine without provider credentials.
func offlineEnv(t *testing.T) {
	t.Helper()
	t.Setenv("KARS_HOME", t.TempDir())
	getenv = func(string) string { return "" }
	t.Cleanup(func() { getenv = os.Getenv })
}

// `kars up --aks --dry-run` prints every step and parameter and runs no az
// command at all.
func TestUpAKSDryRunPlan(t *testing.T) {
	offlineEnv(t)
	t.Setenv("KARS_HOME", "/home/ops/.kars")
	bin := t.TempDir()
	scenario := aztest.Healthy("eastus2")
	scenario.Log = filepath.Join(bin, "calls.log")
	if err := aztest.Install(bin, scenario); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	for name, extra := range map[string][]string{
		"up-aks-dry-run.golden":        nil,
		"up-aks-expose-dry-run.golden": {"--expose-registry", "--registry-host", "mesh.contoso.com", "--resource-group", "platform-rg"},
	} {
		t.Run(name, func(t *testing.T) {
			args := append([]string{"up", "--aks", "--location", "eastus2", "--name", "research-bot", "--model", "gpt-4.1", "--governance",
				"--isolation", "enhanced", "--dry-run", "--image-version", "v0.1.0", "--kubeconfig", "/home/ops/.kube/config"}, extra...)
			code, out, errOut := cli(args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			golden(t, name, out)
		})
	}
	if calls, err := os.ReadFile(scenario.Log); err == nil && len(calls) > 0 {
		t.Fatalf("dry run ran az:\n%s", calls)
	}
}

// controllerWhenCRDsServed runs the real controller in this process, with
// leader election in kars-system, once the chart's CRDs are served — as the
// chart's Deployment would start after `helm install`.
func controllerWhenCRDsServed(t *testing.T, cfg *rest.Config) {
	t.Helper()
	ctrl.SetLogger(logr.Discard())
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		cl, err := client.New(cfg, client.Options{})
		if err != nil {
			t.Error(err)
			return
		}
		for {
			crd := &unstructured.Unstructured{}
			crd.SetAPIVersion("apiextensions.k8s.io/v1")
			crd.SetKind("CustomResourceDefinition")
			if cl.Get(ctx, client.ObjectKey{Name: "karssandboxes.kars.azure.com"}, crd) == nil && established(crd) {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		mgr, err := ctrl.NewManager(cfg, manager.Options{
			Scheme: controller.Scheme(), Cache: controller.CacheOptions(),
			Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
			LeaderElection: true, LeaderElectionID: "kars-controller.kars.azure.com", LeaderElectionNamespace: "kars-system",
			LeaderElectionReleaseOnCancel: true,
			// Each test of the package starts its own manager.
			Controller: config.Controller{SkipNameValidation: ptr.To(true)},
		})
		if err != nil {
			t.Error(err)
			return
		}
		err = controller.Setup(mgr, controller.Options{Env: render.Environment{
			Catalog:         render.Catalog{Registry: "ghcr.io/kars-io", Version: "v0.1.0", GitSyncImage: render.DefaultGitSyncImage},
			SystemNamespace: "kars-system", ClusterDNS: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		}})
		if err != nil {
			t.Error(err)
			return
		}
		if err := mgr.Start(ctx); err != nil && ctx.Err() == nil {
			t.Error(err)
		}
	}()
}

func established(crd *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

func wantLines(t *testing.T, out string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(out, l) {
			t.Errorf("output lacks %q:\n%s", l, out)
		}
	}
}

// `kars up` on an existing cluster installs, is a no-op when nothing
// changed, upgrades when a value changed, and creates the first sandbox
// once, which a real controller reconciles.
func TestUpInstallsUpgradesAndIsIdempotent(t *testing.T) {
	env := testenv.Start(t, testenv.Options{SkipCRDs: true})
	offlineEnv(t)
	controllerWhenCRDsServed(t, env.Config)
	kc := env.Kubeconfig

	code, out, errOut := cli("up", "--kubeconfig", kc, "--name", "research-bot", "--governance", "--isolation", "enhanced", "--image-version", "v0.1.0", "--timeout", "2m")
	if code != 0 {
		t.Fatalf("first run: exit %d: %s\n%s", code, errOut, out)
	}
	wantLines(t, out, "namespace kars-system: created", "release kars: installed revision 1", "holds Lease kars-system/kars-controller.kars.azure.com",
		"sandbox kars-research-bot/research-bot: created", "sandbox kars-research-bot/research-bot: phase", "kars connect research-bot")

	code, out, errOut = cli("up", "--kubeconfig", kc, "--name", "research-bot", "--governance", "--isolation", "enhanced", "--image-version", "v0.1.0", "--timeout", "2m")
	if code != 0 {
		t.Fatalf("second run: exit %d: %s", code, errOut)
	}
	wantLines(t, out, "namespace kars-system: unchanged", "release kars: revision 1 is up to date", "sandbox kars-research-bot/research-bot: exists, left as it is")

	code, out, errOut = cli("up", "--kubeconfig", kc, "--image-version", "v0.1.0", "--set", "controller.logLevel=debug", "--timeout", "2m")
	if code != 0 {
		t.Fatalf("upgrade: exit %d: %s", code, errOut)
	}
	wantLines(t, out, "release kars: upgraded revision 1 → 2", "No sandbox requested")

	// The sandbox survived the upgrade and the controller reconciled it.
	var sb karsv1.KarsSandbox
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: "kars-research-bot", Name: "research-bot"}, &sb); err != nil || sb.Status.Phase == "" {
		t.Fatalf("sandbox after upgrade: %v phase %q", err, sb.Status.Phase)
	}

	// Bad values change nothing and say why.
	code, _, errOut = cli("up", "--kubeconfig", kc, "--set", "a2aGateway.enabled=true")
	if code == 0 || !strings.Contains(errOut, "a2aGateway.url: set the gateway's public https:// base URL") {
		t.Fatalf("a2a gateway: exit %d %s", code, errOut)
	}
	code, out, _ = cli("up", "--kubeconfig", kc, "--image-version", "v0.1.0", "--set", "controller.logLevel=debug", "--dry-run")
	if code != 0 || !strings.Contains(out, "revision 2 is up to date: nothing to do") {
		t.Fatalf("dry run after upgrade: %d %s", code, out)
	}
}

// `kars up --aks` end to end against a fake az that hands out the test
// cluster's credentials: preflight, provisioning, install, first sandbox
// with workload identity; a re-run makes the same az calls and changes
// nothing in the cluster.
func TestUpAKSWithFakeAz(t *testing.T) {
	env := testenv.Start(t, testenv.Options{SkipCRDs: true})
	offlineEnv(t)
	controllerWhenCRDsServed(t, env.Config)
	bin := t.TempDir()
	scenario := aztest.Healthy("eastus2")
	scenario.Log = filepath.Join(bin, "calls.log")
	scenario.Kubeconfig = env.Kubeconfig
	if err := aztest.Install(bin, scenario); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	kc := filepath.Join(t.TempDir(), "kube", "config")
	args := []string{"up", "--aks", "--location", "eastus2", "--name", "research-bot", "--model", "gpt-4.1", "--kubeconfig", kc,
		"--image-version", "v0.1.0", "--timeout", "2m"}

	code, out, errOut := cli(args...)
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, errOut, out)
	}
	wantLines(t, out, "✓ logged in", "✓ vCPU quota for 3 × Standard_D4s_v5", "2. AKS, ACR, Key Vault, AI Foundry, router identity (main.bicep)",
		"release kars: installed revision 1", "sandbox kars-research-bot/research-bot: created")
	first, err := os.ReadFile(scenario.Log)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var ip karsv1.InferencePolicy
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "kars-research-bot", Name: "research-bot-inference"}, &ip); err != nil {
		t.Fatal(err)
	}
	p := ip.Spec.ModelPreference.Primary
	if p.Provider != karsv1.ProviderAzureOpenAI || p.Auth == nil || p.Auth.Mode != karsv1.AuthWorkloadIdentity ||
		p.Auth.ClientID != "11111111-2222-3333-4444-555555555555" || !strings.HasSuffix(p.Endpoint, ".openai.azure.com") || p.Deployment != "gpt-4.1" {
		t.Fatalf("inference target %+v auth %+v", p, p.Auth)
	}
	var dep unstructured.Unstructured
	dep.SetAPIVersion("apps/v1")
	dep.SetKind("Deployment")
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "kars-system", Name: "kars-controller"}, &dep); err != nil {
		t.Fatal(err)
	}
	img, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	if got := fmt.Sprint(img[0].(map[string]any)["image"]); !strings.HasSuffix(got, ".azurecr.io/kars/kars-controller:v0.1.0") {
		t.Fatalf("controller image %s: want the new ACR", got)
	}

	os.Remove(scenario.Log)
	code, out, errOut = cli(args...)
	if code != 0 {
		t.Fatalf("re-run: exit %d: %s", code, errOut)
	}
	wantLines(t, out, "release kars: revision 1 is up to date", "exists, left as it is")
	second, _ := os.ReadFile(scenario.Log)
	if string(first) != string(second) {
		t.Fatalf("re-run made other az calls:\nfirst:\n%s\nsecond:\n%s", first, second)
	}
}
