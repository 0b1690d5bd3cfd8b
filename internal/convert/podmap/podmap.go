// Package podmap carries container-level settings of a peer's manifest —
// environment, resources, image pull secrets — onto a KarsSandbox, and
// names through a lossy.Doc whatever cannot be carried. The kagent and
// agent-sandbox converters share it. It is pure.
package podmap

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/lossy"
)

// ReservedEnvPrefixes are refused by the KarsSandbox schema.
var ReservedEnvPrefixes = []string{"KARS_", "AZURE_", "AGT_", "IMDS_"}

// routerEnv are the variables without a reserved prefix that kars sets in
// agent containers (internal/render's agent and runtime environment; a test
// checks the list against it); a sandbox that sets them again is refused,
// so a converter drops them.
var routerEnv = map[string]bool{
	"HOME": true, "TMPDIR": true,
	"OPENAI_BASE_URL": true, "OPENAI_API_KEY": true,
	"ANTHROPIC_BASE_URL": true, "ANTHROPIC_API_KEY": true,
	"OPENCLAW_CONFIG_PATH": true,
	// The egress proxy variables (both spellings, as clients read either).
	"HTTP_PROXY": true, "HTTPS_PROXY": true, "NO_PROXY": true,
	"http_proxy": true, "https_proxy": true, "no_proxy": true,
}

// EnvReserved reports whether kars owns the variable name, and why.
func EnvReserved(name string) (string, bool) {
	for _, p := range ReservedEnvPrefixes {
		if strings.HasPrefix(name, p) {
			return "the prefix " + p + " is reserved for kars, cloud identity and governance", true
		}
	}
	if routerEnv[name] {
		return "kars sets " + name + " itself (it keeps the agent on its router and its runtime on kars's configuration)", true
	}
	return "", false
}

// Env carries the list of corev1.EnvVar at path into plain runtime env
// vars. Values from Secrets or ConfigMaps are dropped: the agent holds no
// credentials, and a converter never reads a cluster.
func Env(d *lossy.Doc, path string) []karsv1.RuntimeEnvVar {
	var out []karsv1.RuntimeEnvVar
	for i := range d.Len(path) {
		p := fmt.Sprintf("%s[%d]", path, i)
		name, _ := d.Peek(p + ".name")
		n, _ := name.(string)
		if d.Has(p + ".valueFrom") {
			what := "a ConfigMap, Secret or field reference"
			if d.Has(p + ".valueFrom.secretKeyRef") {
				what = "a Secret"
			}
			d.Drop(p, fmt.Sprintf("%s takes its value from %s: kars never hands credentials to the agent; "+
				"model keys belong in the InferencePolicy (router only), other values must be inlined", n, what))
			continue
		}
		if why, reserved := EnvReserved(n); reserved {
			d.Drop(p, n+": "+why)
			continue
		}
		v, _ := d.Peek(p + ".value")
		val, ok := v.(string)
		if !ok && v != nil {
			d.Drop(p, n+": value is not a string")
			continue
		}
		if n == "" || !validEnvName(n) || len(n) > 128 || len(val) > 4096 {
			d.Drop(p, fmt.Sprintf("env %q is not a valid KarsSandbox variable (name [A-Za-z_][A-Za-z0-9_]* up to 128 characters, value up to 4096)", n))
			continue
		}
		if len(out) == 64 {
			d.Drop(p, n+": a KarsSandbox holds at most 64 variables")
			continue
		}
		d.Carry(p)
		out = append(out, karsv1.RuntimeEnvVar{Name: n, Value: val})
	}
	return out
}

// EnvFrom drops a container's envFrom: whole ConfigMaps and Secrets are
// never mounted into the agent's environment.
func EnvFrom(d *lossy.Doc, path string) {
	d.Drop(path, "kars does not import whole ConfigMaps or Secrets into the agent's environment; list plain variables in env")
}

func validEnvName(n string) bool {
	for i, r := range n {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// Resources decodes the corev1.ResourceRequirements at path.
func Resources(d *lossy.Doc, path string) (*corev1.ResourceRequirements, error) {
	v, ok := d.Get(path)
	if !ok || v == nil {
		return nil, nil
	}
	m, isMap := v.(map[string]any)
	if !isMap {
		return nil, fmt.Errorf("%s: %s must be a mapping of requests and limits", d.Object(), path)
	}
	var rr corev1.ResourceRequirements
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(m, &rr, true); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", d.Object(), path, err)
	}
	if len(rr.Claims) > 0 {
		d.Drop(path+".claims", "dynamic resource claims are not offered to kars sandboxes")
		rr.Claims = nil
	}
	if len(rr.Requests) == 0 && len(rr.Limits) == 0 {
		return nil, nil
	}
	return &rr, nil
}

// PullSecrets carries the list of LocalObjectReferences at path.
func PullSecrets(d *lossy.Doc, path string) []karsv1.LocalObjectReference {
	var out []karsv1.LocalObjectReference
	for i := range d.Len(path) {
		p := fmt.Sprintf("%s[%d].name", path, i)
		n, err := d.String(p)
		if err != nil || n == "" {
			continue
		}
		if len(out) == 8 {
			d.Drop(fmt.Sprintf("%s[%d]", path, i), "a KarsSandbox holds at most 8 image pull secrets")
			continue
		}
		out = append(out, karsv1.LocalObjectReference{Name: n})
	}
	return out
}
