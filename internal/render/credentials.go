package render

import (
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/egress/credbind"
	"github.com/kars-io/kars/internal/egress/sandboxca"
	"github.com/kars-io/kars/internal/routerconfig"
)

// Credential bindings in the pod (docs/credentials.md): each bound Secret
// key is mounted into the router container only; the agent gets the
// placeholders in its environment and, when a credential is bound to an
// HTTPS host, a trust bundle holding the sandbox's credential CA, written
// by the router-trust init container (kars-router trust, UID 1001) whose
// key stays on the router's state volume.
const (
	// RouterCredentialDir holds the bound Secrets' keys in the router.
	RouterCredentialDir = "/var/run/secrets/kars/credentials"
	// RouterTrustDir is where router-trust writes the agent's trust files.
	RouterTrustDir = "/var/run/kars/trust"
	// AgentTrustDir is the same volume in the agent, read-only.
	AgentTrustDir = "/etc/kars/trust"
	// ContainerRouterTrust is the init container that issues the CA.
	ContainerRouterTrust = "router-trust"
	// EnvCredentials lists the agent's credential placeholders as JSON
	// (AgentCredential), for runtimes that attach them to their tools'
	// requests (kars-agent's http_get).
	EnvCredentials = "KARS_CREDENTIALS"
)

const volAgentTrust = "agent-trust"

// AgentCredential is one entry of KARS_CREDENTIALS: where the agent may use
// a placeholder. It holds no secret.
type AgentCredential struct {
	Name        string   `json:"name"`
	Env         string   `json:"env,omitempty"`
	Placeholder string   `json:"placeholder"`
	Endpoints   []string `json:"endpoints"`
	Placement   struct {
		Type        string `json:"type"`
		Name        string `json:"name,omitempty"`
		ValuePrefix string `json:"valuePrefix,omitempty"`
	} `json:"placement"`
}

// trustEnv points the TLS stacks of the runtimes at the trust files:
// OpenSSL (Python's ssl, curl) and Go read SSL_CERT_FILE, requests
// REQUESTS_CA_BUNDLE, curl CURL_CA_BUNDLE — each replaces the system's
// roots, so they get the bundle (system roots + CA); Node adds
// NODE_EXTRA_CA_CERTS to its own roots, so it gets the CA alone.
var trustEnv = map[string]string{
	"SSL_CERT_FILE":       path.Join(AgentTrustDir, sandboxca.AgentBundleFile),
	"REQUESTS_CA_BUNDLE":  path.Join(AgentTrustDir, sandboxca.AgentBundleFile),
	"CURL_CA_BUNDLE":      path.Join(AgentTrustDir, sandboxca.AgentBundleFile),
	"NODE_EXTRA_CA_CERTS": path.Join(AgentTrustDir, sandboxca.AgentCAFile),
}

// agentEnvTaken are variables a binding's agentEnv may not name: the
// runtime contract's and the SDKs' that keep the agent on its router.
var agentEnvTaken = []string{"HOME", "TMPDIR", "PATH", "OPENAI_BASE_URL", "OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT",
	"AZURE_OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
	"https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"}

// UsableCredentials sorts a sandbox's bindings by name and splits off
// those that cannot be compiled, with the reason for each (reported on the
// binding's status): a binding for another sandbox, a malformed endpoint
// or placement, an agentEnv that another binding, a kars variable or the
// sandbox's runtime.env already uses, the router's own admin Secret. A
// bad binding never blocks the sandbox.
func UsableCredentials(sb *karsv1.KarsSandbox, bs []karsv1.CredentialBinding) (usable []karsv1.CredentialBinding, problems map[string]string) {
	sorted := slices.Clone(bs)
	slices.SortFunc(sorted, func(a, b karsv1.CredentialBinding) int { return strings.Compare(a.Name, b.Name) })
	problems = map[string]string{}
	names, _ := NamesFor(sb)
	envs := map[string]string{}
	for _, e := range sb.Spec.Runtime.Env {
		envs[e.Name] = "the sandbox's runtime.env"
	}
	for _, k := range agentEnvTaken {
		envs[k] = "a variable kars sets"
	}
	for k := range trustEnv {
		envs[k] = "a variable kars sets"
	}
	var placeholders []credbind.Binding
	for _, b := range sorted {
		if b.Spec.SandboxRef.Name != sb.Name {
			problems[b.Name] = fmt.Sprintf("binding is for sandbox %s, not %s", b.Spec.SandboxRef.Name, sb.Name)
			continue
		}
		if b.Spec.SecretRef.Name == names.RouterAdmin {
			problems[b.Name] = fmt.Sprintf("Secret %s is the router's own admin Secret; it is never bound", names.RouterAdmin)
			continue
		}
		if env := b.Spec.AgentEnv; env != "" {
			if by, taken := envs[env]; taken {
				problems[b.Name] = fmt.Sprintf("agentEnv %s is already %s", env, by)
				continue
			}
		}
		cb, err := credBinding(sb, b)
		if err == nil {
			_, err = credbind.Compile(append(slices.Clone(placeholders), cb))
		}
		if err != nil {
			problems[b.Name] = err.Error()
			continue
		}
		placeholders = append(placeholders, cb)
		if env := b.Spec.AgentEnv; env != "" {
			envs[env] = "the agentEnv of binding " + b.Name
		}
		usable = append(usable, b)
	}
	return usable, problems
}

// credBinding converts a binding for validation (no value).
func credBinding(sb *karsv1.KarsSandbox, b karsv1.CredentialBinding) (credbind.Binding, error) {
	rc := credentialConfig(sb, b)
	bs, err := routerconfig.Bindings([]routerconfig.Credential{rc}, nil)
	if err != nil {
		return credbind.Binding{}, err
	}
	return bs[0], bs[0].Validate()
}

// credentialConfig is a binding as router.json holds it.
func credentialConfig(sb *karsv1.KarsSandbox, b karsv1.CredentialBinding) routerconfig.Credential {
	return routerconfig.Credential{
		Name:        b.Name,
		Placeholder: credbind.Placeholder(sb.Namespace, sb.Name, b.Name),
		ValueFile:   credentialFile(b.Spec.SecretRef),
		Endpoints:   slices.Clone(b.Spec.Endpoints),
		Placement: routerconfig.CredentialPlacement{In: string(b.Spec.Placement.Type), Name: b.Spec.Placement.Name,
			ValuePrefix: b.Spec.Placement.ValuePrefix},
	}
}

func credentialFile(ref karsv1.SecretKeyReference) string {
	return path.Join(RouterCredentialDir, ref.Name, ref.Key)
}

// credentialTLSHosts are the hosts of the bindings' https endpoints, in
// order of first use.
func credentialTLSHosts(bs []karsv1.CredentialBinding) []string {
	var out []string
	for _, b := range bs {
		for _, raw := range b.Spec.Endpoints {
			if e, err := credbind.ParseEndpoint(raw); err == nil && e.Scheme == "https" && !slices.Contains(out, e.Host) {
				out = append(out, e.Host)
			}
		}
	}
	return out
}

// credentialEnv is what the agent learns of its bindings: each
// placeholder in its agentEnv, all of them in KARS_CREDENTIALS, and the
// trust bundle's variables when the router terminates TLS for some host.
func credentialEnv(in Input) map[string]string {
	if len(in.Credentials) == 0 {
		return nil
	}
	env := map[string]string{}
	var list []AgentCredential
	for _, b := range in.Credentials {
		c := credentialConfig(in.Sandbox, b)
		ac := AgentCredential{Name: b.Name, Env: b.Spec.AgentEnv, Placeholder: c.Placeholder, Endpoints: c.Endpoints}
		ac.Placement.Type, ac.Placement.Name, ac.Placement.ValuePrefix = c.Placement.In, c.Placement.Name, c.Placement.ValuePrefix
		list = append(list, ac)
		if b.Spec.AgentEnv != "" {
			env[b.Spec.AgentEnv] = c.Placeholder
		}
	}
	raw, _ := json.Marshal(list)
	env[EnvCredentials] = string(raw)
	if len(credentialTLSHosts(in.Credentials)) > 0 {
		for k, v := range trustEnv {
			env[k] = v
		}
	}
	return env
}

// credentialSecret is a bound Secret and the keys to mount from it.
type credentialSecret struct {
	name string
	keys []string
}

// credentialSecrets lists the bound Secrets with the keys to mount, in
// first-use order.
func credentialSecrets(bs []karsv1.CredentialBinding) []credentialSecret {
	var out []credentialSecret
	for _, b := range bs {
		ref := b.Spec.SecretRef
		i := slices.IndexFunc(out, func(s credentialSecret) bool { return s.name == ref.Name })
		if i < 0 {
			out = append(out, credentialSecret{name: ref.Name})
			i = len(out) - 1
		}
		if !slices.Contains(out[i].keys, ref.Key) {
			out[i].keys = append(out[i].keys, ref.Key)
		}
	}
	return out
}

func credentialVolume(i int) string { return fmt.Sprintf("credential-%d", i) }

// credentialVolumes are the router's credential mounts and the agent's
// trust volume. The Secrets are optional: a missing one leaves its
// binding without a value (the router refuses its placeholder) instead of
// keeping the pod from starting.
func credentialVolumes(in Input) (vols []corev1.Volume, routerMounts []corev1.VolumeMount) {
	for i, s := range credentialSecrets(in.Credentials) {
		var items []corev1.KeyToPath
		for _, k := range s.keys {
			items = append(items, corev1.KeyToPath{Key: k, Path: k})
		}
		vols = append(vols, corev1.Volume{Name: credentialVolume(i), VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: s.name, Items: items, Optional: ptr(true), DefaultMode: ptr(int32(0o444))}}})
		routerMounts = append(routerMounts, corev1.VolumeMount{Name: credentialVolume(i), MountPath: path.Join(RouterCredentialDir, s.name), ReadOnly: true})
	}
	if len(credentialTLSHosts(in.Credentials)) > 0 {
		q := resource.MustParse("1Mi")
		vols = append(vols, corev1.Volume{Name: volAgentTrust, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			Medium: corev1.StorageMediumMemory, SizeLimit: &q}}})
	}
	return vols, routerMounts
}

// trustContainer is the router-trust init container, or nil when no
// credential is bound to an HTTPS host.
func trustContainer(in Input) *corev1.Container {
	hosts := credentialTLSHosts(in.Credentials)
	if len(hosts) == 0 {
		return nil
	}
	return &corev1.Container{
		Name:  ContainerRouterTrust,
		Image: in.Env.Catalog.Image("kars-router"),
		Args:  []string{"trust", "--state=" + RouterStateDir, "--out=" + RouterTrustDir, "--hosts=" + strings.Join(hosts, ",")},
		VolumeMounts: []corev1.VolumeMount{
			{Name: volRouterState, MountPath: RouterStateRoot},
			{Name: volAgentTrust, MountPath: RouterTrustDir},
		},
		SecurityContext: restricted(RouterUID, runtimeDefault()),
		Resources:       resources("10m", "16Mi", "64Mi"),
	}
}

// agentTrustMount mounts the trust files into the agent, read-only.
func agentTrustMount(in Input) []corev1.VolumeMount {
	if len(credentialTLSHosts(in.Credentials)) == 0 {
		return nil
	}
	return []corev1.VolumeMount{{Name: volAgentTrust, MountPath: AgentTrustDir, ReadOnly: true}}
}
