// Package aks is the Azure half of `kars up --aks`: it turns the user's
// choices into a plan — read-only preflight checks, then the `az` commands
// that deploy deploy/aks/main.bicep and fetch the cluster's credentials —
// and runs it through the az CLI.
//
// The plan is pure (Plan, Preflight): options in, commands out, so that
// `--dry-run` prints exactly what would run and tests compare it with a
// golden file. Provision executes it through a Runner; tests use a fake `az`
// that records its calls. Every step is idempotent: the resource group and
// ARM deployment are declarative (incremental mode), names are derived
// deterministically, credentials are overwritten.
package aks

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Options are the choices behind `kars up --aks`.
type Options struct {
	// ClusterName names the AKS cluster and prefixes every derived name.
	ClusterName string
	// ResourceGroup holds everything; default <ClusterName>-rg.
	ResourceGroup string
	// Location is the Azure region, e.g. eastus2.
	Location string
	// Subscription, when set, is passed to every az command.
	Subscription string
	NodeCount    int
	NodeVMSize   string
	// KubernetesVersion empty takes the region's default.
	KubernetesVersion string
	// Model and its deployment.
	Model         string
	ModelVersion  string
	ModelSKU      string
	ModelCapacity int
	// ACRName, KeyVaultName and FoundryName override the derived
	// (globally unique) names.
	ACRName      string
	KeyVaultName string
	FoundryName  string
	// Sandbox is the first sandbox's name; its namespace kars-<Sandbox>
	// and ServiceAccount <Sandbox> get the router's federated credential.
	Sandbox string
	// SandboxNamespace overrides kars-<Sandbox>.
	SandboxNamespace string
	// ExposeRegistry adds the Application Gateway WAF_v2 and AGIC.
	ExposeRegistry bool
	// TemplateFile is the main.bicep path az reads.
	TemplateFile string
	// Kubeconfig is the file `az aks get-credentials` merges into.
	Kubeconfig string
}

// knownModelVersions are the model versions used when --model-version is
// not given.
var knownModelVersions = map[string]string{
	"gpt-4.1":      "2025-04-14",
	"gpt-4.1-mini": "2025-04-14",
	"gpt-4.1-nano": "2025-04-14",
	"gpt-4o":       "2024-11-20",
	"gpt-4o-mini":  "2024-07-18",
}

// Names are the Azure resource names of one installation.
type Names struct {
	ResourceGroup  string
	Cluster        string
	ACR            string
	KeyVault       string
	Foundry        string
	Project        string
	RouterIdentity string
	Deployment     string // the ARM deployment
}

var (
	reCluster  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	reRG       = regexp.MustCompile(`^[-\w.()]{1,89}[-\w()]$`)
	reACR      = regexp.MustCompile(`^[a-z0-9]{5,50}$`)
	reKeyVault = regexp.MustCompile(`^[a-z][a-z0-9-]{1,22}[a-z0-9]$`)
	reFoundry  = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}[a-z0-9]$`)
	reLocation = regexp.MustCompile(`^[a-z0-9]+$`)
)

// Defaults fills the unset options and validates them; the error says which
// option is wrong and what it must look like.
func (o Options) Defaults() (Options, error) {
	if o.ClusterName == "" {
		o.ClusterName = "kars"
	}
	if o.ResourceGroup == "" {
		o.ResourceGroup = o.ClusterName + "-rg"
	}
	if o.NodeCount == 0 {
		o.NodeCount = 3
	}
	if o.NodeVMSize == "" {
		o.NodeVMSize = "Standard_D4s_v5"
	}
	if o.Model == "" {
		o.Model = "gpt-4.1"
	}
	if o.ModelVersion == "" {
		o.ModelVersion = knownModelVersions[o.Model]
	}
	if o.ModelSKU == "" {
		o.ModelSKU = "GlobalStandard"
	}
	if o.ModelCapacity == 0 {
		o.ModelCapacity = 50
	}
	if o.Sandbox != "" && o.SandboxNamespace == "" {
		o.SandboxNamespace = "kars-" + o.Sandbox
	}
	n := o.Names()
	switch {
	case o.Location == "":
		return o, fmt.Errorf("--location is required with --aks (an Azure region such as eastus2; `az account list-locations -o table` lists them)")
	case !reLocation.MatchString(o.Location):
		return o, fmt.Errorf("--location %q is not an Azure region name (lowercase letters and digits, e.g. eastus2)", o.Location)
	case !reCluster.MatchString(o.ClusterName):
		return o, fmt.Errorf("--cluster-name %q: AKS names are 1-63 lowercase letters, digits and hyphens", o.ClusterName)
	case !reRG.MatchString(o.ResourceGroup):
		return o, fmt.Errorf("--resource-group %q: 1-90 letters, digits, '-', '_', '.', '(' or ')', not ending in '.'", o.ResourceGroup)
	case !reACR.MatchString(n.ACR):
		return o, fmt.Errorf("registry name %q: ACR names are 5-50 lowercase letters and digits (--acr-name)", n.ACR)
	case !reKeyVault.MatchString(n.KeyVault) || strings.Contains(n.KeyVault, "--"):
		return o, fmt.Errorf("key vault name %q: 3-24 characters, lowercase letters, digits and single hyphens, starting with a letter (--key-vault-name)", n.KeyVault)
	case !reFoundry.MatchString(n.Foundry):
		return o, fmt.Errorf("AI Foundry name %q: 2-64 lowercase letters, digits and hyphens (--foundry-name)", n.Foundry)
	case o.ModelVersion == "":
		return o, fmt.Errorf("no known version of model %q: pass --model-version (see `az cognitiveservices model list -l %s`)", o.Model, o.Location)
	case o.NodeCount < 1 || o.NodeCount > 100:
		return o, fmt.Errorf("--node-count %d: between 1 and 100", o.NodeCount)
	case o.ModelCapacity < 1:
		return o, fmt.Errorf("--model-capacity %d: at least 1 (thousand tokens per minute)", o.ModelCapacity)
	case o.Sandbox == "":
		return o, fmt.Errorf("--aks needs --name: the first sandbox's router gets the federated credential")
	case o.TemplateFile == "":
		return o, fmt.Errorf("aks: no template file")
	}
	return o, nil
}

// Names derives every resource name. The globally unique ones (ACR, Key
// Vault, Foundry subdomain) carry a suffix hashed from the resource group,
// cluster and region, so re-runs find the same resources and two
// installations in different groups do not collide.
func (o Options) Names() Names {
	sum := sha256.Sum256([]byte(strings.ToLower(o.ResourceGroup + "/" + o.ClusterName + "/" + o.Location)))
	suffix := hex.EncodeToString(sum[:])[:6]
	alnum := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, strings.ToLower(o.ClusterName))
	n := Names{
		ResourceGroup:  o.ResourceGroup,
		Cluster:        o.ClusterName,
		ACR:            trim(alnum, 41) + "acr" + suffix,
		KeyVault:       trim(o.ClusterName, 14) + "-kv-" + suffix,
		Foundry:        trim(o.ClusterName, 50) + "-ai-" + suffix,
		Project:        o.ClusterName,
		RouterIdentity: o.ClusterName + "-router-" + o.Sandbox,
		Deployment:     "kars-" + o.ClusterName,
	}
	if o.ACRName != "" {
		n.ACR = o.ACRName
	}
	if o.KeyVaultName != "" {
		n.KeyVault = o.KeyVaultName
	}
	if o.FoundryName != "" {
		n.Foundry = o.FoundryName
	}
	return n
}

func trim(s string, n int) string {
	s = strings.TrimRight(s, "-")
	if len(s) > n {
		s = strings.TrimRight(s[:n], "-")
	}
	return s
}

// Param is one template parameter.
type Param struct{ Name, Value string }

// Parameters returns the template's parameters, in the order main.bicep
// declares them.
func (o Options) Parameters() []Param {
	n := o.Names()
	return []Param{
		{"location", o.Location},
		{"clusterName", n.Cluster},
		{"acrName", n.ACR},
		{"keyVaultName", n.KeyVault},
		{"foundryName", n.Foundry},
		{"foundryProjectName", n.Project},
		{"modelName", o.Model},
		{"modelVersion", o.ModelVersion},
		{"modelSku", o.ModelSKU},
		{"modelCapacity", strconv.Itoa(o.ModelCapacity)},
		{"nodeCount", strconv.Itoa(o.NodeCount)},
		{"nodeVmSize", o.NodeVMSize},
		{"kubernetesVersion", o.KubernetesVersion},
		{"routerIdentityName", n.RouterIdentity},
		{"sandboxNamespace", o.SandboxNamespace},
		{"sandboxServiceAccount", o.Sandbox},
		{"exposeRegistry", strconv.FormatBool(o.ExposeRegistry)},
		{"tags", `{"app.kubernetes.io/part-of":"kars","kars.io/cluster":"` + n.Cluster + `"}`},
	}
}

// Command is one az invocation.
type Command struct {
	// Title says what it does, for the plan and progress output.
	Title string
	// Args follow "az".
	Args []string
	// Mutates is false for read-only commands.
	Mutates bool
}

// String renders the command as a shell line.
func (c Command) String() string {
	parts := []string{"az"}
	for _, a := range c.Args {
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,@%+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (o Options) sub(args ...string) []string {
	if o.Subscription != "" {
		args = append(args, "--subscription", o.Subscription)
	}
	return append(args, "--output", "json")
}

// Steps are the commands that provision, in order. Each is idempotent.
func (o Options) Steps() []Command {
	n := o.Names()
	deploy := []string{"deployment", "group", "create", "--resource-group", n.ResourceGroup, "--name", n.Deployment,
		"--template-file", o.TemplateFile, "--mode", "Incremental", "--parameters"}
	for _, p := range o.Parameters() {
		deploy = append(deploy, p.Name+"="+p.Value)
	}
	deploy = append(deploy, "--query", "properties.outputs")
	return []Command{
		{Title: "resource group", Mutates: true, Args: o.sub("group", "create", "--name", n.ResourceGroup, "--location", o.Location,
			"--tags", "app.kubernetes.io/part-of=kars", "kars.io/cluster="+n.Cluster)},
		{Title: "AKS, ACR, Key Vault, AI Foundry, router identity (main.bicep)", Mutates: true, Args: o.sub(deploy...)},
		{Title: "cluster credentials", Mutates: true, Args: o.sub("aks", "get-credentials", "--resource-group", n.ResourceGroup,
			"--name", n.Cluster, "--file", o.Kubeconfig, "--overwrite-existing")},
	}
}

// RequiredProviders are the resource providers the template uses.
var RequiredProviders = []string{
	"Microsoft.ContainerService", "Microsoft.ContainerRegistry", "Microsoft.KeyVault",
	"Microsoft.CognitiveServices", "Microsoft.ManagedIdentity", "Microsoft.Network",
}
