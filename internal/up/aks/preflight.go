package aks

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// MinCLIVersion is the oldest az that has every command and flag used here
// (workload identity, Bicep, cognitiveservices usage).
const MinCLIVersion = "2.61.0"

// Check is a read-only preflight command and how to judge its answer.
type Check struct {
	Command
	// IfFails, when set, is shown in the plan: the read-only command that
	// runs when this one reports a problem that may be ours (a name that
	// is taken, possibly by an earlier run).
	IfFails *Command
	// Judge turns the command's output (or failure) into nil or an error
	// the user can act on. run executes IfFails.
	Judge func(out []byte, runErr error, f *Facts, run func(Command) ([]byte, error)) error
}

// Facts are what the preflight learned, for later checks and for the
// report.
type Facts struct {
	CLIVersion   string
	Subscription string
	Tenant       string
	User         string
	VMFamily     string
	VMCPUs       int
}

// Preflight returns the read-only checks that run before anything is
// created: the CLI, the login, the region, the resource providers, vCPU
// and model quota, and the globally unique names.
func (o Options) Preflight() []Check {
	n := o.Names()
	checks := []Check{
		{Command: Command{Title: "Azure CLI " + MinCLIVersion + " or newer", Args: []string{"version", "--output", "json"}},
			Judge: func(out []byte, err error, f *Facts, _ func(Command) ([]byte, error)) error {
				if err != nil {
					return fmt.Errorf("the Azure CLI does not run (%v): install az %s or newer", err, MinCLIVersion)
				}
				var v map[string]any
				if json.Unmarshal(out, &v) != nil {
					return fmt.Errorf("az version printed %.100q, not JSON", out)
				}
				f.CLIVersion, _ = v["azure-cli"].(string)
				if versionLess(f.CLIVersion, MinCLIVersion) {
					return fmt.Errorf("az %s is too old: kars needs %s or newer (`az upgrade`)", f.CLIVersion, MinCLIVersion)
				}
				return nil
			}},
		{Command: Command{Title: "logged in", Args: o.sub("account", "show")},
			Judge: func(out []byte, err error, f *Facts, _ func(Command) ([]byte, error)) error {
				if err != nil {
					return fmt.Errorf("not logged in to Azure (%v): run `az login`%s", err, subHint(o.Subscription))
				}
				var a struct {
					ID, TenantID, State string
					User                struct{ Name string }
				}
				if json.Unmarshal(out, &a) != nil || a.ID == "" {
					return fmt.Errorf("az account show printed %.100q: run `az login`", out)
				}
				if a.State != "Enabled" {
					return fmt.Errorf("subscription %s is %s, not Enabled", a.ID, a.State)
				}
				f.Subscription, f.Tenant, f.User = a.ID, a.TenantID, a.User.Name
				return nil
			}},
		{Command: Command{Title: "region " + o.Location, Args: o.sub("account", "list-locations", "--query", "[?name=='"+o.Location+"'].name")},
			Judge: func(out []byte, err error, _ *Facts, _ func(Command) ([]byte, error)) error {
				var names []string
				if err != nil || json.Unmarshal(out, &names) != nil || len(names) != 1 {
					return fmt.Errorf("region %q is not available to this subscription (%v): pick one from `az account list-locations -o table`", o.Location, err)
				}
				return nil
			}},
	}
	for _, p := range RequiredProviders {
		checks = append(checks, Check{Command: Command{Title: "resource provider " + p, Args: o.sub("provider", "show", "--namespace", p, "--query", "registrationState")},
			Judge: func(out []byte, err error, _ *Facts, _ func(Command) ([]byte, error)) error {
				var state string
				if err != nil || json.Unmarshal(out, &state) != nil {
					return fmt.Errorf("cannot read the registration of %s (%v)", p, err)
				}
				if state != "Registered" {
					return fmt.Errorf("resource provider %s is %s in this subscription: run `az provider register --namespace %s --wait`", p, state, p)
				}
				return nil
			}})
	}
	checks = append(checks,
		Check{Command: Command{Title: "VM size " + o.NodeVMSize + " offered in " + o.Location,
			Args: o.sub("vm", "list-skus", "--location", o.Location, "--size", o.NodeVMSize, "--resource-type", "virtualMachines")},
			Judge: func(out []byte, err error, f *Facts, _ func(Command) ([]byte, error)) error {
				var skus []struct {
					Name, Family string
					Capabilities []struct{ Name, Value string }
					Restrictions []struct{ ReasonCode string }
				}
				if err != nil || json.Unmarshal(out, &skus) != nil {
					return fmt.Errorf("cannot list VM sizes in %s (%v)", o.Location, err)
				}
				for _, s := range skus {
					if !strings.EqualFold(s.Name, o.NodeVMSize) {
						continue
					}
					if len(s.Restrictions) > 0 {
						return fmt.Errorf("VM size %s is restricted in %s for this subscription (%s): pick another with --node-vm-size", o.NodeVMSize, o.Location, s.Restrictions[0].ReasonCode)
					}
					for _, c := range s.Capabilities {
						if c.Name == "vCPUs" {
							f.VMCPUs, _ = strconv.Atoi(c.Value)
						}
					}
					f.VMFamily = s.Family
					if f.VMCPUs == 0 || f.VMFamily == "" {
						return fmt.Errorf("VM size %s: no vCPU count or family in its SKU", o.NodeVMSize)
					}
					return nil
				}
				return fmt.Errorf("VM size %s is not offered in %s: pick another with --node-vm-size", o.NodeVMSize, o.Location)
			}},
		Check{Command: Command{Title: fmt.Sprintf("vCPU quota for %d × %s", o.NodeCount, o.NodeVMSize), Args: o.sub("vm", "list-usage", "--location", o.Location)},
			Judge: func(out []byte, err error, f *Facts, _ func(Command) ([]byte, error)) error {
				usage, jerr := parseUsage(out)
				if err != nil || jerr != nil {
					return fmt.Errorf("cannot read vCPU quota in %s (%v %v)", o.Location, err, jerr)
				}
				need := o.NodeCount * f.VMCPUs
				for _, name := range []string{f.VMFamily, "cores"} {
					u, ok := usage[strings.ToLower(name)]
					if !ok {
						return fmt.Errorf("no quota entry %q in %s", name, o.Location)
					}
					if free := u.Limit - u.Current; free < need {
						return fmt.Errorf("vCPU quota %s in %s: %d free (%d of %d used), %d needed for %d × %s: request more quota or lower --node-count",
							name, o.Location, free, u.Current, u.Limit, need, o.NodeCount, o.NodeVMSize)
					}
				}
				return nil
			}},
		Check{Command: Command{Title: fmt.Sprintf("model quota %s %s, %dK TPM", o.ModelSKU, o.Model, o.ModelCapacity), Args: o.sub("cognitiveservices", "usage", "list", "--location", o.Location)},
			Judge: func(out []byte, err error, _ *Facts, _ func(Command) ([]byte, error)) error {
				usage, jerr := parseUsage(out)
				if err != nil || jerr != nil {
					return fmt.Errorf("cannot read AI model quota in %s (%v %v)", o.Location, err, jerr)
				}
				key := "openai." + strings.ToLower(o.ModelSKU) + "." + strings.ToLower(o.Model)
				u, ok := usage[key]
				if !ok {
					return fmt.Errorf("model %s (%s) has no quota in %s: pick another region or --model-sku", o.Model, o.ModelSKU, o.Location)
				}
				if free := u.Limit - u.Current; free < o.ModelCapacity {
					return fmt.Errorf("model quota %s in %s: %dK TPM free (%d of %d used), %dK needed: lower --model-capacity or request quota", key, o.Location, free, u.Current, u.Limit, o.ModelCapacity)
				}
				return nil
			}},
		nameCheck("container registry name "+n.ACR,
			Command{Args: o.sub("acr", "check-name", "--name", n.ACR)},
			Command{Title: "is it ours", Args: o.sub("acr", "show", "--name", n.ACR, "--resource-group", n.ResourceGroup)},
			"nameAvailable", "--acr-name"),
		nameCheck("key vault name "+n.KeyVault,
			Command{Args: o.sub("rest", "--method", "post", "--url", "https://management.azure.com/subscriptions/{subscriptionId}/providers/Microsoft.KeyVault/checkNameAvailability?api-version=2023-07-01",
				"--body", `{"name":"`+n.KeyVault+`","type":"Microsoft.KeyVault/vaults"}`)},
			Command{Title: "is it ours", Args: o.sub("keyvault", "show", "--name", n.KeyVault, "--resource-group", n.ResourceGroup)},
			"nameAvailable", "--key-vault-name"),
		nameCheck("AI Foundry subdomain "+n.Foundry,
			Command{Args: o.sub("rest", "--method", "post", "--url", "https://management.azure.com/subscriptions/{subscriptionId}/providers/Microsoft.CognitiveServices/checkDomainAvailability?api-version=2023-05-01",
				"--body", `{"subdomainName":"`+n.Foundry+`","type":"Microsoft.CognitiveServices/accounts","kind":"AIServices"}`)},
			Command{Title: "is it ours", Args: o.sub("cognitiveservices", "account", "show", "--name", n.Foundry, "--resource-group", n.ResourceGroup)},
			"isSubdomainAvailable", "--foundry-name"),
	)
	return checks
}

// nameCheck passes when the name is free, or taken by the resource of that
// name in our resource group (an earlier run).
func nameCheck(title string, check, ours Command, field, flag string) Check {
	check.Title = title + " available"
	return Check{Command: check, IfFails: &ours,
		Judge: func(out []byte, err error, _ *Facts, run func(Command) ([]byte, error)) error {
			var v map[string]any
			if err != nil || json.Unmarshal(out, &v) != nil {
				return fmt.Errorf("cannot check the %s (%v)", title, err)
			}
			if free, _ := v[field].(bool); free {
				return nil
			}
			if _, err := run(ours); err == nil {
				return nil // ours, from an earlier run
			}
			reason, _ := v["message"].(string)
			if reason == "" {
				reason, _ = v["reason"].(string)
			}
			return fmt.Errorf("the %s is taken (%s): choose another with %s", title, reason, flag)
		}}
}

type usageEntry struct{ Current, Limit int }

// parseUsage reads `az vm list-usage` and `az cognitiveservices usage list`
// output, keyed by lower-cased name.value.
func parseUsage(out []byte) (map[string]usageEntry, error) {
	var raw []struct {
		Name         struct{ Value string }
		CurrentValue float64
		Limit        float64
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, err
	}
	m := make(map[string]usageEntry, len(raw))
	for _, r := range raw {
		m[strings.ToLower(r.Name.Value)] = usageEntry{Current: int(r.CurrentValue), Limit: int(r.Limit)}
	}
	return m, nil
}

func subHint(sub string) string {
	if sub == "" {
		return ""
	}
	return " and check that subscription " + sub + " is yours (`az account list -o table`)"
}

// versionLess compares dotted numeric versions.
func versionLess(a, b string) bool {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(pa), len(pb)); i++ {
		var x, y int
		if i < len(pa) {
			x, _ = strconv.Atoi(pa[i])
		}
		if i < len(pb) {
			y, _ = strconv.Atoi(pb[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}
