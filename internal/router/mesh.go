package router

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/mesh/bridge"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/trust"
)

// MeshDir is the bridge's folder in the state directory.
const MeshDir = "mesh"

// meshGovernance gives the bridge the router's live policy and audit log.
type meshGovernance struct{ r *Router }

func (m meshGovernance) Decide(action string) governance.Decision {
	g := m.r.gen.Load()
	d := g.gov.Decide(&governance.Request{Agent: g.agent, Action: action})
	m.r.metrics.decisions.WithLabelValues(d.Verdict.String()).Inc()
	return d
}

func (m meshGovernance) Audit(ctx context.Context, rec audit.Record) error {
	g := m.r.gen.Load()
	rec.Sandbox, rec.Agent = g.sandbox, g.agent
	return m.r.appendAudit(ctx, rec)
}

func (m meshGovernance) AuditFailing() bool { return m.r.auditFailing.Load() }

// openMesh opens the mesh bridge for cfg.Mesh (Run connects it); nil
// when the config has no mesh section. A reload applies a new trust
// threshold; endpoints take effect on restart.
func (r *Router) openMesh(cfg *routerconfig.Config, root string, ts *trust.Store) (*bridge.Bridge, error) {
	if cfg.Mesh == nil {
		return nil, nil
	}
	o := bridge.Options{
		Dir: filepath.Join(cfg.StateDir, MeshDir), Registry: cfg.Mesh.Registry, Relay: cfg.Mesh.Relay,
		Self: []string{cfg.Sandbox.AgentID}, Threshold: cfg.Mesh.TrustThreshold, Global: cfg.Mesh.RegistryMode == "global",
		Gov: meshGovernance{r}, Trust: ts, Registerer: r.opts.Registry, Logger: r.log,
	}
	if v := os.Getenv(routerconfig.EnvMeshDial); v != "" {
		sock, ok := strings.CutPrefix(v, "unix:")
		if !ok || sock == "" {
			return nil, fmt.Errorf("%s=%q: want unix:<path>", routerconfig.EnvMeshDial, v)
		}
		sock = routerconfig.UnderRoot(root, sock)
		o.Dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "unix", sock)
		}
	}
	b, err := bridge.Open(o)
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	return b, nil
}

// meshReloaded applies a reloaded config's mesh threshold.
func meshReloaded(b *bridge.Bridge, c *routerconfig.Config) {
	if b != nil && c.Mesh != nil {
		b.SetThreshold(c.Mesh.TrustThreshold)
	}
}

// meshAdmin is the bridge's admin handler, nil without a bridge.
func meshAdmin(b *bridge.Bridge) http.Handler {
	if b == nil {
		return nil
	}
	return b.AdminHandler()
}
