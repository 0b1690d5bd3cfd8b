package routerconfig

import "path/filepath"

// EnvRoot names the environment variable holding the root under which the
// router resolves every file path: its config's paths and the -config path
// itself. On Kubernetes it is unset and the paths are the mounts the
// controller renders (/etc/kars/router/router.json,
// /var/run/secrets/kars/admin/token, /var/lib/kars/audit, …). The local
// substrate materialises the same files under the router's private
// directory and sets the variable to it, so that one compiled config — and
// so one digest for the RouterEnforcing handshake — serves both substrates.
const EnvRoot = "KARS_ROUTER_ROOT"

// UnderRoot returns p resolved under root: filepath.Join(root, p) for an
// absolute p, with p cleaned first so that ".." cannot climb out of root.
// A relative p (relative to the router's working directory) and an empty
// root or p are returned unchanged.
func UnderRoot(root, p string) string {
	if root == "" || p == "" || !filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(root, filepath.Clean(p))
}

// Under returns a snapshot whose Config has every file path resolved under
// root (UnderRoot): the audit directory and checkpoint key, the admin token
// and TLS files, the state directory, each target's key file and federated
// token file, and each credential's value file. Digest and LoadedAt are
// s's: the digest stays that of the config as compiled, which is what the
// controller compares. s is not modified; an empty root returns s itself.
func (s *Snapshot) Under(root string) *Snapshot {
	if root == "" {
		return s
	}
	c := *s.Config
	c.Audit.Dir = UnderRoot(root, c.Audit.Dir)
	c.Audit.CheckpointKeyFile = UnderRoot(root, c.Audit.CheckpointKeyFile)
	c.Admin.TokenFile = UnderRoot(root, c.Admin.TokenFile)
	c.Admin.TLSCertFile = UnderRoot(root, c.Admin.TLSCertFile)
	c.Admin.TLSKeyFile = UnderRoot(root, c.Admin.TLSKeyFile)
	c.StateDir = UnderRoot(root, c.StateDir)
	c.A2A = c.A2A.under(root)
	c.Egress = c.Egress.under(root)
	c.Credentials = underCredentials(root, c.Credentials)
	c.Models.Primary = c.Models.Primary.under(root)
	if len(c.Models.Fallbacks) > 0 {
		fb := make([]Target, len(c.Models.Fallbacks))
		for i, t := range c.Models.Fallbacks {
			fb[i] = t.under(root)
		}
		c.Models.Fallbacks = fb
	}
	if c.Memory != nil && c.Memory.Auth != nil {
		m, a := *c.Memory, *c.Memory.Auth
		a.KeyFile = UnderRoot(root, a.KeyFile)
		a.FederatedTokenFile = UnderRoot(root, a.FederatedTokenFile)
		m.Auth = &a
		c.Memory = &m
	}
	if len(c.MCP) > 0 {
		ms := make([]MCPServer, len(c.MCP))
		for i, m := range c.MCP {
			ms[i] = m.under(root)
		}
		c.MCP = ms
	}
	return &Snapshot{Config: &c, Digest: s.Digest, LoadedAt: s.LoadedAt}
}

func (t Target) under(root string) Target {
	if t.Auth != nil {
		a := *t.Auth
		a.KeyFile = UnderRoot(root, a.KeyFile)
		a.FederatedTokenFile = UnderRoot(root, a.FederatedTokenFile)
		t.Auth = &a
	}
	return t
}
