package routerconfig

import (
	"fmt"
	"net/url"
)

// Mesh makes the router the agent's AgentMesh endpoint (docs/mesh.md): it
// holds the agent's mesh identity and ratchet state in StateDir, registers
// with Registry and keeps a connection to Relay. Which peers it may talk
// to is not part of the config: the controller pushes the paired peers and
// the verified trust graph to the admin API (PUT /admin/v1/mesh/policy),
// so that a revocation takes effect in seconds, not when the kubelet next
// refreshes a mounted ConfigMap.
type Mesh struct {
	// Registry is the registry's base URL (http or https).
	Registry string `json:"registry"`
	// Relay is the relay's WebSocket URL (ws or wss).
	Relay string `json:"relay"`
	// TrustThreshold is the score (0..1000) a peer needs for a KNOCK to
	// be sent to it or accepted from it (KarsSandbox
	// spec.governance.trustThreshold).
	TrustThreshold int `json:"trustThreshold"`
	// RegistryMode is "local" (this cluster's registry only) or "global"
	// (published for federation).
	RegistryMode string `json:"registryMode,omitempty"`
}

// EnvMeshDial names the environment variable that, when set to
// "unix:<path>", makes the router reach the mesh registry and relay
// through that Unix socket (resolved under EnvRoot) whatever host their
// URLs name. The local substrate sets it: its routers live in network
// namespaces of their own, and kars-mesh runs in the dev daemon on the
// host's loopback.
const EnvMeshDial = "KARS_MESH_DIAL"

// validateMesh reports problems with m.
func validateMesh(m *Mesh, bad func(field, format string, args ...any)) {
	check := func(field, raw string, schemes ...string) {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			bad(field, "%q is not a URL", raw)
			return
		}
		for _, s := range schemes {
			if u.Scheme == s {
				return
			}
		}
		bad(field, "%q: scheme must be one of %v", raw, schemes)
	}
	check("mesh.registry", m.Registry, "http", "https")
	check("mesh.relay", m.Relay, "ws", "wss")
	if m.TrustThreshold < 0 || m.TrustThreshold > 1000 {
		bad("mesh.trustThreshold", "%d is outside 0..1000", m.TrustThreshold)
	}
	switch m.RegistryMode {
	case "", "local", "global":
	default:
		bad("mesh.registryMode", "%q is not local or global", m.RegistryMode)
	}
}

// String names the mesh endpoints, for logs.
func (m *Mesh) String() string { return fmt.Sprintf("registry %s, relay %s", m.Registry, m.Relay) }
