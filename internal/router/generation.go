package router

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/kars-io/kars/internal/behavior"
	"github.com/kars-io/kars/internal/credential"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/inference"
	"github.com/kars-io/kars/internal/mcpgateway"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/safety"
	"github.com/prometheus/client_golang/prometheus"
)

// generation is everything derived from one config snapshot. A call holds
// the generation it started with, so a reload never changes the rules, the
// targets or the upstream client under an in-flight call; the old
// generation is garbage once its last call ends.
type generation struct {
	snap      *routerconfig.Snapshot
	upstreams []*upstream
	safety    *safety.Policy
	// gov decides every action: the behaviour monitor's Guard in front of
	// the governance engine (or DefaultPolicy).
	gov     governance.DecisionProvider
	monitor *behavior.Monitor
	// behavior is the monitor's config, to reuse it across reloads.
	behavior routerconfig.Behavior
	sandbox  string
	agent    string
	// mcp is the MCP gateway for the config's servers.
	mcp *mcpgateway.Gateway
	// memory is the KarsMemory binding, nil without one.
	memory *memoryBinding
}

// upstream is a callable target with its transport, health and what the
// router derives from its target once per generation rather than per call.
type upstream struct {
	inference.Upstream
	// rt carries the upstream request. It is a RoundTripper, not an
	// http.Client: the router sends each request exactly where the config
	// says and relays the answer as it is, redirects included (a client
	// following a redirect would send the target's key to whatever host the
	// Location names), and a client's per-request redirect and deadline
	// machinery (a header copy, a request clone) is a cost on every call.
	rt     http.RoundTripper
	health *health
	// id is Upstream.ID(), which builds the string on every call.
	id string
	// latency is the upstream latency histogram's series for id.
	latency prometheus.Observer
	// actions are the governance actions "inference:<op>:<model>" of
	// calling this target, by operation.
	actions map[inference.Op]string
}

// action is the governance action of calling u for op.
func (u *upstream) action(op inference.Op) string {
	if a, ok := u.actions[op]; ok {
		return a
	}
	return "inference:" + string(op) + ":" + u.Target.Model
}

// ID names the target in metrics, logs and the audit log.
func (u *upstream) ID() string { return u.id }

// health tracks a target's recent failures for failover ordering. It is
// keyed by target ID and shared across generations, so a reload does not
// forget that a deployment is throttled.
type health struct {
	mu       sync.Mutex
	until    time.Time
	failures int
}

// healthy reports whether the target is outside its cool-down.
func (h *health) healthy(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !now.Before(h.until)
}

// fail starts a cool-down: the upstream's Retry-After when given, else an
// exponential back-off from one second, capped at a minute.
func (h *health) fail(now time.Time, retryAfter time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failures++
	d := retryAfter
	if d <= 0 {
		d = time.Second << min(h.failures-1, 6)
	}
	h.until = now.Add(min(d, time.Minute))
}

func (h *health) succeed() {
	h.mu.Lock()
	h.failures = 0
	h.until = time.Time{}
	h.mu.Unlock()
}

// buildGeneration derives a generation from snap, reusing credential
// sources (and so their cached tokens) and health records by key.
func (r *Router) buildGeneration(snap *routerconfig.Snapshot) (*generation, error) {
	c := snap.Config
	g := &generation{
		snap:    snap,
		safety:  safety.NewPolicy(c.ContentSafety),
		sandbox: c.Sandbox.Namespace + "/" + c.Sandbox.Name,
		agent:   c.Sandbox.AgentID,
	}
	for i, t := range c.Targets() {
		cred, err := r.credentialFor(t)
		if err != nil {
			return nil, fmt.Errorf("target %d (%s %s): %w", i, t.Provider, t.Model, err)
		}
		u := &upstream{Upstream: inference.Upstream{Target: t, Cred: cred}, rt: r.opts.Transport}
		if t.Provider == routerconfig.ProviderOffline {
			u.rt = inference.OfflineTransport{}
		}
		u.id = u.Upstream.ID()
		u.actions = map[inference.Op]string{}
		for _, op := range []inference.Op{inference.OpChat, inference.OpCompletions, inference.OpResponses, inference.OpEmbeddings, inference.OpModels, inference.OpMessages} {
			u.actions[op] = "inference:" + string(op) + ":" + t.Model
		}
		u.latency = r.metrics.upstreamLatency.WithLabelValues(u.id)
		u.health = r.healthFor(u.id)
		g.upstreams = append(g.upstreams, u)
	}
	if c.Behavior != nil {
		g.behavior = *c.Behavior
	}
	mon, err := r.monitorFor(g.behavior, c.StateDir)
	if err != nil {
		return nil, err
	}
	g.monitor = mon
	var base governance.DecisionProvider = r.engine
	if c.Governance == nil {
		base = DefaultPolicy(c)
	} else if err := r.engine.LoadFrom(routerconfig.FileName, withA2ARules(c.Governance, c)); err != nil {
		// One engine for the router's life: Load swaps the compiled
		// profile atomically and carries rule rate-limit state across
		// reloads. An invalid policy is rejected whole and the engine
		// keeps the old one.
		return nil, fmt.Errorf("governance policy: %w", err)
	}
	g.gov = &behavior.Guard{Next: base, Monitor: mon}
	g.mcp = mcpgateway.New(c.MCP, r.mcpPool, mcpGovernor{r, g}, r.log)
	if g.memory, err = r.newMemoryBinding(c.Memory); err != nil {
		return nil, err
	}
	return g, nil
}

// QuarantineFile is the behaviour monitor's state file in the state
// directory: quarantines survive restarts.
const QuarantineFile = "quarantine.json"

// monitorFor returns the live generation's behaviour monitor when its
// config is unchanged, so that counters and quarantines carry across
// reloads; otherwise a new monitor, which reloads the persisted quarantines.
func (r *Router) monitorFor(b routerconfig.Behavior, stateDir string) (*behavior.Monitor, error) {
	path := filepath.Join(stateDir, QuarantineFile)
	if old := r.gen.Load(); old != nil && old.behavior == b && old.snap.Config.StateDir == stateDir {
		return old.monitor, nil
	}
	m, err := behavior.New(behavior.Config{
		MaxCalls: b.MaxCallsPerMinute, CallWindow: time.Minute,
		MaxDenials: b.MaxDenialsPerMinute, DenialWindow: time.Minute,
		Quarantine: b.Quarantine, StatePath: path,
		OnAlert: func(a behavior.Alert) {
			r.log.Warn("behaviour monitor alert", "agent", a.Agent, "kind", string(a.Kind), "detail", a.Detail, "quarantined", a.Quarantined)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("behaviour monitor: %w", err)
	}
	return m, nil
}

func (r *Router) credentialFor(t routerconfig.Target) (credential.Source, error) {
	key, _ := json.Marshal(struct {
		P routerconfig.Provider
		A *routerconfig.Auth
	}{t.Provider, t.Auth})
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.creds[string(key)]; ok {
		return s, nil
	}
	s, err := credential.New(t.Auth, r.tokenClient, r.opts.Root)
	if err != nil {
		return nil, err
	}
	r.creds[string(key)] = s
	return s, nil
}

func (r *Router) healthFor(id string) *health {
	r.mu.Lock()
	defer r.mu.Unlock()
	h, ok := r.health[id]
	if !ok {
		h = &health{}
		r.health[id] = h
	}
	return h
}

// DefaultPolicy is the governance used when the config carries none: allow
// inference to the configured models, inbound A2A calls to the advertised
// skills while the sandbox is exposed, calls to the registered A2A agents
// that list the sandbox, and nothing else. It exists so that a
// router is never ungoverned, not as a substitute for a ToolPolicy.
func DefaultPolicy(c *routerconfig.Config) governance.DecisionProvider {
	allowed := configuredModels{models: map[string]bool{}, c: c}
	for _, t := range c.Targets() {
		allowed.models[t.Model] = true
	}
	return allowed
}

type configuredModels struct {
	models map[string]bool
	c      *routerconfig.Config
}

func (m configuredModels) Decide(req *governance.Request) governance.Decision {
	if rule, ok := a2aAllowed(m.c, req.Action); ok {
		return governance.Decision{Verdict: governance.Allow, Rule: rule, Reason: "advertised skill or registered agent"}
	}
	rest, ok := strings.CutPrefix(req.Action, "inference:")
	if !ok {
		return governance.Decision{Verdict: governance.Deny, Rule: "kars-default", Reason: "only inference is allowed by the default policy"}
	}
	_, model, _ := strings.Cut(rest, ":")
	if !m.models[model] {
		return governance.Decision{Verdict: governance.Deny, Rule: "kars-default", Reason: "model " + model + " is not in the sandbox's InferencePolicy"}
	}
	return governance.Decision{Verdict: governance.Allow, Rule: "kars-default", Reason: "configured model"}
}
