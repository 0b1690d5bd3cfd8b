package router

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/credential"
	"github.com/kars-io/kars/internal/egress/credbind"
	"github.com/kars-io/kars/internal/egress/proxy"
	"github.com/kars-io/kars/internal/egress/sandboxca"
	"github.com/kars-io/kars/internal/routerconfig"
)

// CADir is where, under the router's state directory, the sandbox's
// credential CA lives (internal/egress/sandboxca). Its key never leaves
// the router's volume.
const CADir = sandboxca.DirName

// credentials is the router's credential broker (proxy.Broker): the
// credential bindings of the config generation in force, the sandbox CA
// that lets the proxy terminate TLS to their hosts, and the audit entry of
// every credential placed and every placeholder refused. No secret value
// reaches a log line, an audit entry or an answer to the agent.
type credentials struct {
	e     *Egress
	caDir string
	m     *credentialMetrics

	compiled atomic.Pointer[credentialSet]
	mu       sync.Mutex
	// files are the value files, kept across generations so that a reload
	// does not re-read an unchanged file.
	files map[string]*credential.KeyFile
	ca    *sandboxca.CA
}

// credentialSet is one generation's bindings, compiled.
type credentialSet struct {
	gen   *generation
	set   *credbind.Set
	hosts []string
	err   error
}

type credentialMetrics struct {
	uses, findings *prometheus.CounterVec
}

func newCredentials(e *Egress, stateDir string, reg *prometheus.Registry) *credentials {
	const ns = "kars_router_credential"
	m := &credentialMetrics{
		uses: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "uses_total",
			Help: "Requests that got a bound credential, by binding."}, []string{"binding"}),
		findings: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "findings_total",
			Help: "Requests refused because a credential placeholder was where its binding does not allow, by binding (\"\" for none)."}, []string{"binding"}),
	}
	reg.MustRegister(m.uses, m.findings)
	return &credentials{e: e, caDir: filepath.Join(stateDir, CADir), m: m, files: map[string]*credential.KeyFile{}}
}

// current returns the bindings of the generation in force, compiling them
// the first time it is seen.
func (c *credentials) current() *credentialSet {
	g := c.e.r.gen.Load()
	if cs := c.compiled.Load(); cs != nil && cs.gen == g {
		return cs
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cs := c.compiled.Load(); cs != nil && cs.gen == g {
		return cs
	}
	cs := &credentialSet{gen: g}
	bs, err := routerconfig.Bindings(g.snap.Config.Credentials, c.valueOf)
	if err == nil {
		cs.set, err = credbind.Compile(bs)
	}
	if err != nil {
		// Validate refused such configs; fail closed all the same.
		cs.err = err
		c.e.log.Error("credential bindings not usable; every placeholder is refused", "err", err)
	}
	cs.hosts = cs.set.TLSHosts()
	if len(cs.hosts) > 0 && (c.ca == nil || !permitsAll(c.ca, cs.hosts)) {
		ca, err := sandboxca.Ensure(c.caDir, cs.hosts, c.e.now())
		if err != nil {
			c.e.log.Error("credential CA unusable; hosts with bound credentials are refused", "err", err)
		} else {
			c.ca = ca
		}
	}
	c.compiled.Store(cs)
	return cs
}

func permitsAll(ca *sandboxca.CA, hosts []string) bool {
	for _, h := range hosts {
		if !ca.Permits(h) {
			return false
		}
	}
	return true
}

// valueOf reads a value file, re-read when it changes (a rotated Secret).
func (c *credentials) valueOf(file string) func() ([]byte, error) {
	kf := c.files[file]
	if kf == nil {
		kf = &credential.KeyFile{Path: file}
		c.files[file] = kf
	}
	return func() ([]byte, error) {
		cr, err := kf.Credential(context.Background())
		if err != nil {
			return nil, errors.New("the credential's file cannot be read")
		}
		return []byte(cr.Secret), nil
	}
}

// Certificate implements proxy.Broker.
func (c *credentials) Certificate(host string, port uint16) (*tls.Certificate, error) {
	cs := c.current()
	if !cs.set.Terminates(host, port) {
		return nil, nil
	}
	c.mu.Lock()
	ca := c.ca
	c.mu.Unlock()
	if ca == nil {
		return nil, errors.New("the sandbox's credential CA is not available")
	}
	return ca.Leaf(host, cs.hosts, c.e.now())
}

// Inspect implements proxy.Broker: every use of a credential and every
// finding is audited, durably, before the request goes on or is refused.
func (c *credentials) Inspect(ctx context.Context, dest proxy.Request, r credbind.Request) credbind.Result {
	cs := c.current()
	res := cs.set.Inspect(r)
	if cs.err != nil && res.Finding == nil && len(res.Used) > 0 {
		res = credbind.Result{Target: r.Target, Header: r.Header, Finding: &credbind.Finding{Where: "request", Reason: "the router's credential bindings are not usable"}}
	}
	switch {
	case res.Finding != nil:
		c.finding(ctx, dest, r, res.Finding)
	case len(res.Used) > 0:
		for _, name := range res.Used {
			c.m.uses.WithLabelValues(name).Inc()
			if err := c.record(ctx, dest, r, "allow", name, name, "credential placed", nil); err != nil {
				return credbind.Result{Target: r.Target, Header: r.Header,
					Finding: &credbind.Finding{Binding: name, Where: "request", Reason: "the use could not be written to the audit log"}}
			}
		}
	}
	return res
}

// BodyFinding implements proxy.Broker.
func (c *credentials) BodyFinding(ctx context.Context, dest proxy.Request, r credbind.Request) {
	c.finding(ctx, dest, r, &credbind.Finding{Where: "body", Reason: credbind.ErrPlaceholderInBody.Error() + "; a credential is never placed in a body"})
}

func (c *credentials) finding(ctx context.Context, dest proxy.Request, r credbind.Request, f *credbind.Finding) {
	c.m.findings.WithLabelValues(f.Binding).Inc()
	c.record(ctx, dest, r, "deny", f.Binding, "credential-binding", f.Reason, map[string]string{"finding": "true", "where": f.Where})
	c.e.log.LogAttrs(ctx, slog.LevelWarn, "credential placeholder refused",
		slog.String("binding", f.Binding), slog.String("where", f.Where), slog.String("host", dest.Host),
		slog.Int("port", int(dest.Port)), slog.String("reason", f.Reason))
}

// record writes the audit entry of one use or finding. The request target
// recorded is the agent's, which holds placeholders, never values.
func (c *credentials) record(ctx context.Context, dest proxy.Request, r credbind.Request, decision, binding, rule, reason string, extra map[string]string) error {
	g := c.e.r.gen.Load()
	target := r.Target
	if len(target) > 512 {
		target = target[:512] + "…"
	}
	attrs := map[string]string{"op": "credential", "scheme": r.Scheme, "host": dest.Host, "port": strconv.Itoa(int(dest.Port)),
		"via": string(dest.Via), "target": target}
	if dest.Method != "" {
		attrs["method"] = dest.Method
	}
	for k, v := range extra {
		attrs[k] = v
	}
	action := "credential:" + binding
	if binding == "" {
		action = "credential:(none)"
	}
	return c.e.r.appendAudit(ctx, audit.Record{Sandbox: g.sandbox, Agent: g.agent, Action: action,
		Decision: decision, Rule: rule, Reason: reason, Attrs: attrs})
}

// credentialHosts are the egress allowlist entries of a binding's
// endpoints: a credential bound to a host lets the agent reach that host
// and port (docs/credentials.md).
func credentialHosts(c routerconfig.Credential) []string {
	var out []string
	for _, raw := range c.Endpoints {
		e, err := credbind.ParseEndpoint(raw)
		if err != nil {
			continue // Validate refused such configs
		}
		entry := e.Host
		if strings.IndexByte(entry, ':') >= 0 {
			entry = "[" + entry + "]"
		}
		out = append(out, fmt.Sprintf("%s:%d", entry, e.Port))
	}
	return out
}
