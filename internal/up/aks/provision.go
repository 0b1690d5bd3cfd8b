package aks

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strings"
)

// Runner runs one az command and returns its standard output.
type Runner interface {
	Run(ctx context.Context, args []string) ([]byte, error)
}

// CLI runs the az executable at Path.
type CLI struct{ Path string }

// Run implements Runner. A failing command's error carries its standard
// error, which is where az explains itself.
func (c CLI) Run(ctx context.Context, args []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.Path, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = msg[:2000] + "…"
		}
		if msg == "" {
			return stdout.Bytes(), err
		}
		return stdout.Bytes(), fmt.Errorf("%v: %s", err, msg)
	}
	return stdout.Bytes(), nil
}

// Outputs are main.bicep's outputs.
type Outputs struct {
	ClusterName      string `json:"clusterName"`
	OIDCIssuerURL    string `json:"oidcIssuerUrl"`
	ACRLoginServer   string `json:"acrLoginServer"`
	KeyVaultURI      string `json:"keyVaultUri"`
	FoundryEndpoint  string `json:"foundryEndpoint"`
	FoundryProject   string `json:"foundryProject"`
	ModelDeployment  string `json:"modelDeployment"`
	RouterClientID   string `json:"routerClientId"`
	TenantID         string `json:"tenantId"`
	RegistryPublicIP string `json:"registryPublicIp"`
}

// parseOutputs reads `--query properties.outputs`: {name: {type, value}}.
func parseOutputs(b []byte) (Outputs, error) {
	var raw map[string]struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return Outputs{}, fmt.Errorf("deployment outputs are not JSON: %w", err)
	}
	flat := map[string]json.RawMessage{}
	for k, v := range raw {
		flat[k] = v.Value
	}
	j, _ := json.Marshal(flat)
	var o Outputs
	if err := json.Unmarshal(j, &o); err != nil {
		return Outputs{}, fmt.Errorf("deployment outputs: %w", err)
	}
	if o.ClusterName == "" || o.FoundryEndpoint == "" || o.RouterClientID == "" {
		return o, fmt.Errorf("deployment outputs lack clusterName, foundryEndpoint or routerClientId: %.300s", b)
	}
	return o, nil
}

// Provision runs the preflight checks, stopping at the first problem, then
// the steps, reporting each on out. It returns the deployment's outputs.
func Provision(ctx context.Context, o Options, r Runner, out io.Writer) (Outputs, Facts, error) {
	var f Facts
	run := func(c Command) ([]byte, error) { return r.Run(ctx, c.Args) }
	fmt.Fprintln(out, "Preflight:")
	for _, c := range o.Preflight() {
		b, err := run(c.Command)
		if jerr := c.Judge(b, err, &f, run); jerr != nil {
			fmt.Fprintf(out, "  ✗ %s\n", c.Title)
			return Outputs{}, f, fmt.Errorf("preflight: %w", jerr)
		}
		fmt.Fprintf(out, "  ✓ %s\n", c.Title)
	}
	fmt.Fprintf(out, "  subscription %s (tenant %s) as %s\n", f.Subscription, f.Tenant, f.User)
	var outputs Outputs
	fmt.Fprintln(out, "Provision:")
	for i, s := range o.Steps() {
		fmt.Fprintf(out, "  %d. %s …\n", i+1, s.Title)
		b, err := run(s)
		if err != nil {
			return outputs, f, fmt.Errorf("%s: %s failed: %w", s.Title, s, err)
		}
		if s.Args[0] == "deployment" {
			if outputs, err = parseOutputs(b); err != nil {
				return outputs, f, err
			}
		}
	}
	return outputs, f, nil
}

// PrintPlan writes what Provision would run, every template parameter
// included, without running anything.
func PrintPlan(o Options, w io.Writer) {
	fmt.Fprintln(w, "Preflight (read-only):")
	for i, c := range o.Preflight() {
		fmt.Fprintf(w, "  %d. %s\n     %s\n", i+1, c.Title, c.Command)
		if c.IfFails != nil {
			fmt.Fprintf(w, "     if taken, %s: %s\n", c.IfFails.Title, c.IfFails)
		}
	}
	fmt.Fprintln(w, "Provision (idempotent):")
	for i, s := range o.Steps() {
		fmt.Fprintf(w, "  %d. %s\n     %s\n", i+1, s.Title, s)
		if s.Args[0] == "deployment" {
			fmt.Fprintln(w, "     template parameters:")
			for _, p := range o.Parameters() {
				v := p.Value
				if v == "" {
					v = `""`
				}
				fmt.Fprintf(w, "       %-22s %s\n", p.Name, v)
			}
		}
	}
}
