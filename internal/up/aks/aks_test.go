package aks_test

import (
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	aksbicep "github.com/kars-io/kars/deploy/aks"
	"github.com/kars-io/kars/internal/up/aks"
	"github.com/kars-io/kars/internal/up/aks/aztest"
)

func options(t *testing.T) aks.Options {
	t.Helper()
	dir := t.TempDir()
	tf, err := aksbicep.WriteTo(dir)
	if err != nil {
		t.Fatal(err)
	}
	o, err := aks.Options{Location: "eastus2", Sandbox: "research-bot", TemplateFile: tf, Kubeconfig: filepath.Join(dir, "kubeconfig")}.Defaults()
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestDefaultsAndNames(t *testing.T) {
	o := options(t)
	n := o.Names()
	if n.ResourceGroup != "kars-rg" || n.Cluster != "kars" || !regexp.MustCompile(`^karsacr[0-9a-f]{6}$`).MatchString(n.ACR) ||
		!regexp.MustCompile(`^kars-kv-[0-9a-f]{6}$`).MatchString(n.KeyVault) || o.ModelVersion != "2025-04-14" || o.SandboxNamespace != "kars-research-bot" {
		t.Fatalf("defaults %+v names %+v", o, n)
	}
	// Deterministic (re-runs find the same resources), different per group.
	if o.Names() != n {
		t.Fatal("names not deterministic")
	}
	o2 := o
	o2.ResourceGroup = "other-rg"
	if o2.Names().ACR == n.ACR {
		t.Fatal("two resource groups derive the same registry name")
	}
	// A long cluster name still yields valid names.
	o3 := o
	o3.ClusterName, o3.ResourceGroup = "a-very-long-cluster-name-for-the-platform-team-of-contoso", ""
	if _, err := o3.Defaults(); err != nil {
		t.Fatalf("long cluster name: %v", err)
	}
}

func TestDefaultsRefuse(t *testing.T) {
	base := options(t)
	for name, c := range map[string]struct {
		mutate func(*aks.Options)
		want   string
	}{
		"no location":        {func(o *aks.Options) { o.Location = "" }, "--location is required"},
		"bad location":       {func(o *aks.Options) { o.Location = "East US" }, "not an Azure region name"},
		"bad cluster":        {func(o *aks.Options) { o.ClusterName = "Kars_1" }, "--cluster-name"},
		"bad acr":            {func(o *aks.Options) { o.ACRName = "my-registry" }, "ACR names are 5-50"},
		"bad vault":          {func(o *aks.Options) { o.KeyVaultName = "1vault" }, "key vault name"},
		"unknown model":      {func(o *aks.Options) { o.Model, o.ModelVersion = "o9", "" }, "pass --model-version"},
		"no sandbox":         {func(o *aks.Options) { o.Sandbox, o.SandboxNamespace = "", "" }, "needs --name"},
		"too many nodes":     {func(o *aks.Options) { o.NodeCount = 500 }, "--node-count"},
		"nonpositive tokens": {func(o *aks.Options) { o.ModelCapacity = -1 }, "--model-capacity"},
	} {
		t.Run(name, func(t *testing.T) {
			o := base
			c.mutate(&o)
			if _, err := o.Defaults(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}

// Every parameter the plan passes is declared in main.bicep, and every
// parameter main.bicep declares without a default is passed.
func TestParametersMatchTheTemplate(t *testing.T) {
	src, err := fs.ReadFile(aksbicep.Files(), aksbicep.Main)
	if err != nil {
		t.Fatal(err)
	}
	decl := regexp.MustCompile(`(?m)^param (\w+) \w+( = .*)?$`).FindAllStringSubmatch(string(src), -1)
	declared, required := map[string]bool{}, map[string]bool{}
	for _, d := range decl {
		declared[d[1]] = true
		if d[2] == "" {
			required[d[1]] = true
		}
	}
	passed := map[string]bool{}
	for _, p := range options(t).Parameters() {
		if !declared[p.Name] {
			t.Errorf("parameter %s is passed but main.bicep does not declare it", p.Name)
		}
		passed[p.Name] = true
	}
	for r := range required {
		if !passed[r] {
			t.Errorf("main.bicep requires %s; the plan does not pass it", r)
		}
	}
	if len(declared) < 15 {
		t.Fatalf("found only %d params in main.bicep", len(declared))
	}
	// The outputs Provision reads are the ones the template declares.
	for _, out := range []string{"clusterName", "oidcIssuerUrl", "acrLoginServer", "foundryEndpoint", "routerClientId", "tenantId", "registryPublicIp"} {
		if !regexp.MustCompile(`(?m)^output ` + out + ` `).Match(src) {
			t.Errorf("main.bicep has no output %s", out)
		}
	}
}

func TestProvisionRunsPreflightThenSteps(t *testing.T) {
	o := options(t)
	az := aztest.Healthy("eastus2")
	az.Kubeconfig = writeKubeconfig(t)
	out, facts, err := aks.Provision(context.Background(), o, az, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if facts.Subscription == "" || facts.VMCPUs != 4 || out.ClusterName != "kars" || out.RouterClientID == "" ||
		out.FoundryEndpoint != "https://"+o.Names().Foundry+".openai.azure.com" {
		t.Fatalf("facts %+v outputs %+v", facts, out)
	}
	calls := az.Calls()
	var mutating []string
	for _, c := range calls {
		if strings.HasPrefix(c, "az group create") || strings.HasPrefix(c, "az deployment") || strings.HasPrefix(c, "az aks") {
			mutating = append(mutating, c)
		}
	}
	if len(mutating) != 3 || !strings.HasPrefix(mutating[0], "az group create") || !strings.HasPrefix(mutating[2], "az aks get-credentials") {
		t.Fatalf("mutating calls %v", mutating)
	}
	// Nothing mutates before every check ran.
	first := slices.Index(calls, mutating[0])
	if first != len(o.Preflight()) {
		t.Fatalf("first mutation at call %d, after %d checks", first, len(o.Preflight()))
	}
	if !strings.Contains(mutating[1], "sandboxServiceAccount=research-bot") || !strings.Contains(mutating[1], "--mode Incremental") {
		t.Fatalf("deployment call %s", mutating[1])
	}
	// The credentials landed in the kubeconfig under the cluster's name.
	raw, err := os.ReadFile(o.Kubeconfig)
	if err != nil || !strings.Contains(string(raw), "current-context: kars") {
		t.Fatalf("kubeconfig: %v %s", err, raw)
	}
	// A second run makes the same calls: every step is idempotent.
	az2 := aztest.Healthy("eastus2")
	az2.Kubeconfig = az.Kubeconfig
	az2.Taken = map[string]bool{o.Names().ACR: true, o.Names().KeyVault: true, o.Names().Foundry: true}
	az2.Ours = az2.Taken
	if _, _, err := aks.Provision(context.Background(), o, az2, io.Discard); err != nil {
		t.Fatalf("re-run over our own resources: %v", err)
	}
}

func TestPreflightStopsWithClearErrors(t *testing.T) {
	o := options(t)
	n := o.Names()
	for name, c := range map[string]struct {
		mutate func(*aztest.Azure)
		want   string
	}{
		"old cli":        {func(a *aztest.Azure) { a.CLIVersion = "2.50.1" }, "az 2.50.1 is too old"},
		"not logged in":  {func(a *aztest.Azure) { a.LoggedIn = false }, "run `az login`"},
		"disabled sub":   {func(a *aztest.Azure) { a.State = "Warned" }, "is Warned, not Enabled"},
		"region":         {func(a *aztest.Azure) { a.Locations = []string{"westeurope"} }, `region "eastus2" is not available`},
		"provider":       {func(a *aztest.Azure) { a.Providers = map[string]string{"Microsoft.CognitiveServices": "NotRegistered"} }, "az provider register --namespace Microsoft.CognitiveServices"},
		"vm size":        {func(a *aztest.Azure) { a.VMSizes = nil }, "VM size Standard_D4s_v5 is not offered in eastus2"},
		"family quota":   {func(a *aztest.Azure) { a.VMUsage["standardDSv5Family"] = aztest.Usage{Current: 30, Limit: 40} }, "standardDSv5Family in eastus2: 10 free (30 of 40 used), 12 needed"},
		"regional cores": {func(a *aztest.Azure) { a.VMUsage["cores"] = aztest.Usage{Current: 8, Limit: 10} }, "cores in eastus2: 2 free"},
		"model quota": {func(a *aztest.Azure) {
			a.ModelUsage["OpenAI.GlobalStandard.gpt-4.1"] = aztest.Usage{Current: 990, Limit: 1000}
		}, "10K TPM free"},
		"model not in region": {func(a *aztest.Azure) { a.ModelUsage = map[string]aztest.Usage{} }, "has no quota in eastus2"},
		"acr taken":           {func(a *aztest.Azure) { a.Taken = map[string]bool{n.ACR: true} }, "choose another with --acr-name"},
		"vault taken":         {func(a *aztest.Azure) { a.Taken = map[string]bool{n.KeyVault: true} }, "choose another with --key-vault-name"},
		"foundry taken":       {func(a *aztest.Azure) { a.Taken = map[string]bool{n.Foundry: true} }, "choose another with --foundry-name"},
	} {
		t.Run(name, func(t *testing.T) {
			az := aztest.Healthy("eastus2")
			c.mutate(az)
			_, _, err := aks.Provision(context.Background(), o, az, io.Discard)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
			for _, call := range az.Calls() {
				if strings.HasPrefix(call, "az group create") || strings.HasPrefix(call, "az deployment") {
					t.Fatalf("mutated after a failed check: %s", call)
				}
			}
		})
	}
}

func TestDeploymentFailureIsReported(t *testing.T) {
	o := options(t)
	az := aztest.Healthy("eastus2")
	az.FailDeployment = "ERROR: InvalidTemplateDeployment: quota exceeded for Standard_D4s_v5"
	_, _, err := aks.Provision(context.Background(), o, az, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "InvalidTemplateDeployment") || !strings.Contains(err.Error(), "main.bicep") {
		t.Fatalf("err = %v", err)
	}
}

func writeKubeconfig(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "src-kubeconfig")
	os.WriteFile(p, []byte(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443"}
users:
- name: u
  user: {token: t}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
`), 0o600)
	return p
}
