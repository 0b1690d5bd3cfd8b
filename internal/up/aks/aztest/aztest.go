// Package aztest is a stand-in for the Azure CLI that `kars up --aks` tests
// drive: it answers the az commands kars runs with the JSON az prints for
// them, from a scenario (logged in or not, quotas, taken names, ...), and
// records every call. Azure itself cannot be reached from the test
// machines; this fake speaks az's command line and output formats.
//
// Use Azure as an aks.Runner in process, or install it as an `az`
// executable with Install (the test binary re-executes itself in Main).
package aztest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Usage is one quota entry.
type Usage struct {
	Current int `json:"current"`
	Limit   int `json:"limit"`
}

// Azure is the scenario the fake answers from.
type Azure struct {
	CLIVersion string            `json:"cliVersion"`
	LoggedIn   bool              `json:"loggedIn"`
	State      string            `json:"state"` // subscription state, default Enabled
	Locations  []string          `json:"locations"`
	Providers  map[string]string `json:"providers"` // namespace → registrationState; missing = Registered
	// VMSizes maps a size to its family and vCPUs.
	VMSizes map[string]VMSize `json:"vmSizes"`
	// VMUsage and ModelUsage are keyed by name.value.
	VMUsage    map[string]Usage `json:"vmUsage"`
	ModelUsage map[string]Usage `json:"modelUsage"`
	// Taken names are unavailable; Ours are the taken ones that exist in
	// the resource group (an earlier run).
	Taken map[string]bool `json:"taken"`
	Ours  map[string]bool `json:"ours"`
	// Kubeconfig is copied, with its context renamed to the cluster, by
	// `az aks get-credentials --file`.
	Kubeconfig string `json:"kubeconfig"`
	// FailDeployment makes `az deployment group create` fail.
	FailDeployment string `json:"failDeployment"`
	// Log, when set, receives one line per call (the executable mode).
	Log string `json:"log"`

	mu    sync.Mutex
	calls []string
}

// VMSize describes a VM SKU.
type VMSize struct {
	Family string `json:"family"`
	VCPUs  int    `json:"vcpus"`
}

// Healthy returns a scenario in which every check passes.
func Healthy(location string) *Azure {
	return &Azure{
		CLIVersion: "2.67.0", LoggedIn: true, Locations: []string{location, "westeurope"},
		VMSizes:    map[string]VMSize{"Standard_D4s_v5": {Family: "standardDSv5Family", VCPUs: 4}},
		VMUsage:    map[string]Usage{"cores": {Current: 8, Limit: 100}, "standardDSv5Family": {Current: 0, Limit: 40}},
		ModelUsage: map[string]Usage{"OpenAI.GlobalStandard.gpt-4.1": {Current: 0, Limit: 1000}},
	}
}

// Calls returns the recorded calls, one "az ..." line each.
func (a *Azure) Calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.calls...)
}

// Run implements aks.Runner.
func (a *Azure) Run(_ context.Context, args []string) ([]byte, error) {
	line := "az " + strings.Join(args, " ")
	a.mu.Lock()
	a.calls = append(a.calls, line)
	a.mu.Unlock()
	if a.Log != "" {
		f, err := os.OpenFile(a.Log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintln(f, line)
			f.Close()
		}
	}
	out, err := a.answer(args)
	if err != nil {
		return nil, err
	}
	b, jerr := json.MarshalIndent(out, "", "  ")
	if jerr != nil {
		return nil, jerr
	}
	return append(b, '\n'), nil
}

func flag(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

func has(args []string, words ...string) bool {
	if len(args) < len(words) {
		return false
	}
	for i, w := range words {
		if args[i] != w {
			return false
		}
	}
	return true
}

// answer is az's JSON output for args, or its error.
func (a *Azure) answer(args []string) (any, error) {
	switch {
	case has(args, "version"):
		return map[string]any{"azure-cli": a.CLIVersion, "azure-cli-core": a.CLIVersion, "extensions": map[string]any{}}, nil
	}
	if !a.LoggedIn {
		return nil, errors.New("ERROR: Please run 'az login' to setup account")
	}
	switch {
	case has(args, "account", "show"):
		state := a.State
		if state == "" {
			state = "Enabled"
		}
		return map[string]any{"id": "00000000-0000-0000-0000-00000000aaaa", "tenantId": "00000000-0000-0000-0000-00000000bbbb",
			"state": state, "name": "kars-test", "user": map[string]any{"name": "ops@example.com", "type": "user"}}, nil
	case has(args, "account", "list-locations"):
		q := flag(args, "--query")
		out := []string{}
		for _, l := range a.Locations {
			if strings.Contains(q, "'"+l+"'") {
				out = append(out, l)
			}
		}
		return out, nil
	case has(args, "provider", "show"):
		if s, ok := a.Providers[flag(args, "--namespace")]; ok {
			return s, nil
		}
		return "Registered", nil
	case has(args, "vm", "list-skus"):
		size := flag(args, "--size")
		out := []any{}
		if s, ok := a.VMSizes[size]; ok {
			out = append(out, map[string]any{"name": size, "family": s.Family, "resourceType": "virtualMachines",
				"capabilities": []any{map[string]any{"name": "vCPUs", "value": fmt.Sprint(s.VCPUs)}}, "restrictions": []any{}})
		}
		return out, nil
	case has(args, "vm", "list-usage"):
		return usageList(a.VMUsage), nil
	case has(args, "cognitiveservices", "usage", "list"):
		return usageList(a.ModelUsage), nil
	case has(args, "acr", "check-name"):
		n := flag(args, "--name")
		if a.Taken[n] {
			return map[string]any{"nameAvailable": false, "reason": "AlreadyExists", "message": "The registry " + n + " is already in use."}, nil
		}
		return map[string]any{"nameAvailable": true}, nil
	case has(args, "rest"):
		var body map[string]string
		_ = json.Unmarshal([]byte(flag(args, "--body")), &body)
		if strings.Contains(flag(args, "--url"), "checkDomainAvailability") {
			n := body["subdomainName"]
			return map[string]any{"isSubdomainAvailable": !a.Taken[n], "subdomainName": n, "type": body["type"]}, nil
		}
		n := body["name"]
		if a.Taken[n] {
			return map[string]any{"nameAvailable": false, "reason": "AlreadyExists", "message": "The vault name '" + n + "' is already in use."}, nil
		}
		return map[string]any{"nameAvailable": true}, nil
	case has(args, "acr", "show"), has(args, "keyvault", "show"), has(args, "cognitiveservices", "account", "show"):
		n := flag(args, "--name")
		if a.Ours[n] {
			return map[string]any{"name": n, "resourceGroup": flag(args, "--resource-group")}, nil
		}
		return nil, fmt.Errorf("ERROR: (ResourceNotFound) The Resource '%s' under resource group '%s' was not found", n, flag(args, "--resource-group"))
	case has(args, "group", "create"):
		return map[string]any{"name": flag(args, "--name"), "location": flag(args, "--location"), "properties": map[string]any{"provisioningState": "Succeeded"}}, nil
	case has(args, "deployment", "group", "create"):
		if a.FailDeployment != "" {
			return nil, errors.New(a.FailDeployment)
		}
		if _, err := os.Stat(flag(args, "--template-file")); err != nil {
			return nil, fmt.Errorf("ERROR: template file: %v", err)
		}
		p := map[string]string{}
		for i := indexOf(args, "--parameters") + 1; i < len(args) && !strings.HasPrefix(args[i], "--"); i++ {
			k, v, _ := strings.Cut(args[i], "=")
			p[k] = v
		}
		v := func(s string) map[string]any { return map[string]any{"type": "String", "value": s} }
		ip := ""
		if p["exposeRegistry"] == "true" {
			ip = "20.0.0.7"
		}
		return map[string]any{
			"clusterName":      v(p["clusterName"]),
			"oidcIssuerUrl":    v("https://oidc.example.com/" + p["clusterName"] + "/"),
			"acrLoginServer":   v(p["acrName"] + ".azurecr.io"),
			"keyVaultUri":      v("https://" + p["keyVaultName"] + ".vault.azure.net/"),
			"foundryEndpoint":  v("https://" + p["foundryName"] + ".openai.azure.com"),
			"foundryProject":   v(p["foundryProjectName"]),
			"modelDeployment":  v(p["modelName"]),
			"routerClientId":   v("11111111-2222-3333-4444-555555555555"),
			"tenantId":         v("00000000-0000-0000-0000-00000000bbbb"),
			"registryPublicIp": v(ip),
		}, nil
	case has(args, "aks", "get-credentials"):
		if err := a.writeKubeconfig(flag(args, "--name"), flag(args, "--file")); err != nil {
			return nil, err
		}
		return nil, nil
	}
	return nil, fmt.Errorf("ERROR: fake az does not know 'az %s'", strings.Join(args, " "))
}

func indexOf(args []string, s string) int {
	for i, a := range args {
		if a == s {
			return i
		}
	}
	return len(args)
}

func usageList(m map[string]Usage) []any {
	out := []any{}
	for k, u := range m {
		out = append(out, map[string]any{"name": map[string]any{"value": k, "localizedValue": k}, "currentValue": u.Current, "limit": u.Limit, "unit": "Count"})
	}
	return out
}

// writeKubeconfig merges the scenario's cluster into file under a context
// named after the cluster, as az does.
func (a *Azure) writeKubeconfig(cluster, file string) error {
	if a.Kubeconfig == "" {
		return errors.New("ERROR: fake az has no cluster credentials to hand out")
	}
	src, err := clientcmd.LoadFromFile(a.Kubeconfig)
	if err != nil {
		return err
	}
	cur := src.Contexts[src.CurrentContext]
	if cur == nil {
		return errors.New("fake az: source kubeconfig has no current context")
	}
	dst := clientcmdapi.NewConfig()
	if _, err := os.Stat(file); err == nil {
		if dst, err = clientcmd.LoadFromFile(file); err != nil {
			return err
		}
	}
	dst.Clusters[cluster] = src.Clusters[cur.Cluster]
	dst.AuthInfos["clusterUser_"+cluster] = src.AuthInfos[cur.AuthInfo]
	c := *cur
	c.Cluster, c.AuthInfo = cluster, "clusterUser_"+cluster
	dst.Contexts[cluster] = &c
	dst.CurrentContext = cluster
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	return clientcmd.WriteToFile(*dst, file)
}

// ScenarioEnv names the file with the JSON scenario in executable mode.
const ScenarioEnv = "KARS_FAKE_AZ_SCENARIO"

// Install writes an `az` executable into dir that runs the current test
// binary (which must call Main from TestMain) with scenario a, and returns
// dir for PATH.
func Install(dir string, a *Azure) error {
	raw, err := json.Marshal(a)
	if err != nil {
		return err
	}
	scenario := filepath.Join(dir, "scenario.json")
	if err := os.WriteFile(scenario, raw, 0o644); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	script := fmt.Sprintf("#!/bin/sh\n%s=%s exec %s \"$@\"\n", ScenarioEnv, shellQuote(scenario), shellQuote(self))
	return os.WriteFile(filepath.Join(dir, "az"), []byte(script), 0o755)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Main runs the fake as the az executable when the process was started by
// the script Install wrote, and returns false otherwise. Call it first in
// TestMain.
func Main() bool {
	path := os.Getenv(ScenarioEnv)
	if path == "" {
		return false
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake az:", err)
		os.Exit(2)
	}
	var a Azure
	if err := json.Unmarshal(raw, &a); err != nil {
		fmt.Fprintln(os.Stderr, "fake az:", err)
		os.Exit(2)
	}
	out, err := a.Run(context.Background(), os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if string(out) != "null\n" {
		os.Stdout.Write(out)
	}
	os.Exit(0)
	return true
}
