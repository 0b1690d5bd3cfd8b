package router

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/behavior"
	"github.com/kars-io/kars/internal/egress/allowlist"
	"github.com/kars-io/kars/internal/egress/artifact"
	"github.com/kars-io/kars/internal/egress/blocklist"
	"github.com/kars-io/kars/internal/egress/dns"
	"github.com/kars-io/kars/internal/egress/learn"
	"github.com/kars-io/kars/internal/egress/policy"
	"github.com/kars-io/kars/internal/egress/proxy"
	"github.com/kars-io/kars/internal/egress/resolve"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig"
)

// Egress is the router's egress side: the forward proxy (mounted on the
// agent port for explicit proxying, and on its own listener for
// connections the egress guard redirects), the DNS stub, the blocklist
// loader and the learned-destinations record. Every destination is decided
// by internal/egress/policy for the config generation in force, passed
// through the governance engine as egress:<host>:<port>, audited (durably,
// before anything is sent upstream) and recorded.
type Egress struct {
	r        *Router
	log      *slog.Logger
	proxy    *proxy.Proxy
	dns      *dns.Server
	resolver *resolve.Resolver
	learned  *learn.Recorder
	creds    *credentials
	events   *eventHub
	m        *egressMetrics
	stateDir string
	ctx      context.Context
	now      func() time.Time

	compiled atomic.Pointer[egressPolicy]
	// state is the egress state file in force (nil: none; the config's
	// own fields apply).
	state atomic.Pointer[routerconfig.EgressState]
	blMu  sync.Mutex
	bl    atomic.Pointer[blocklistRunner]
}

// egressPolicy is the policy compiled from one config generation and
// egress state.
type egressPolicy struct {
	gen   *generation
	state *routerconfig.EgressState
	// eg is the merged egress configuration the policy was built from.
	eg  *routerconfig.Egress
	pol policy.Policy
	gov governance.DecisionProvider
	// blocklist is the runner the policy consults (nil: none).
	blocklist *blocklistRunner
}

// blocklistRunner is one blocklist configuration's loader.
type blocklistRunner struct {
	key    string
	loader *blocklist.Loader
	ready  atomic.Bool
	cancel context.CancelFunc
}

// Contains implements policy.Blocklist.
func (b *blocklistRunner) Contains(host string) (string, bool) { return b.loader.Contains(host) }

// NewEgress builds the egress side of r. stateDir holds the learned
// record and the blocklist cache. Run it with Start.
func NewEgress(r *Router, stateDir string, resolvers []string) (*Egress, error) {
	rec, err := learn.Open(filepath.Join(stateDir, learn.FileName))
	if err != nil {
		return nil, err
	}
	e := &Egress{r: r, log: r.log, learned: rec, events: newEventHub(1024), m: newEgressMetrics(r.opts.Registry),
		stateDir: stateDir, ctx: context.Background(), now: time.Now}
	e.resolver = resolve.New(resolve.SystemLookup(resolvers))
	e.creds = newCredentials(e, stateDir, r.opts.Registry)
	e.proxy = &proxy.Proxy{Decider: e, Resolver: e.resolver, Log: r.log, Broker: e.creds}
	e.dns = &dns.Server{Resolver: e.resolver, Log: r.log, Decide: e.decideName, Observe: e.observeDNS}
	return e, nil
}

// Start runs the background work (expiry sweeps, the learned record's
// writer, the blocklist loader) until ctx is done, and serves the
// transparent proxy and the DNS stub on the configured addresses (or on
// the given listeners). It returns once the listeners are bound.
func (e *Egress) Start(ctx context.Context, cfg *routerconfig.Config, wg *sync.WaitGroup) error {
	e.ctx = ctx
	// Egress fails closed until the blocklist is loaded: give the first
	// load (the cached list, or the first fetch) a moment before serving.
	if b := e.policyFor(e.r.gen.Load()).blocklist; b != nil {
		deadline := time.Now().Add(30 * time.Second)
		for !b.ready.Load() && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
		if !b.ready.Load() {
			e.log.Warn("blocklist not loaded yet; egress is refused until it is")
		}
	}
	wg.Go(func() { e.proxy.Run(ctx) })
	wg.Go(func() {
		e.learned.Run(ctx, 5*time.Second, func(err error) { e.log.Error("learned egress record write failed", "err", err) })
	})
	var closers []func() error
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	eg := cfg.Egress
	if eg != nil && eg.TransparentListen != "" {
		ln, err := net.Listen("tcp4", eg.TransparentListen)
		if err != nil {
			return fmt.Errorf("egress transparent listener: %w", err)
		}
		closers = append(closers, ln.Close)
		wg.Go(func() {
			if err := e.proxy.ServeTransparent(ln); err != nil {
				e.log.Error("transparent egress listener failed", "err", err)
			}
		})
	}
	if eg != nil && eg.DNSListen != "" {
		pc, err := net.ListenPacket("udp4", eg.DNSListen)
		if err != nil {
			closeAll()
			return fmt.Errorf("egress DNS listener (udp): %w", err)
		}
		closers = append(closers, pc.Close)
		ln, err := net.Listen("tcp4", eg.DNSListen)
		if err != nil {
			closeAll()
			return fmt.Errorf("egress DNS listener (tcp): %w", err)
		}
		closers = append(closers, ln.Close)
		wg.Go(func() { e.dns.ServeUDP(pc) })
		wg.Go(func() { e.dns.ServeTCP(ln) })
	}
	wg.Go(func() {
		<-ctx.Done()
		closeAll()
		e.proxy.Close()
		if b := e.bl.Load(); b != nil {
			b.cancel()
		}
	})
	return nil
}

// SetState puts an egress state in force (nil: none).
func (e *Egress) SetState(s *routerconfig.EgressState) {
	e.state.Store(s)
	e.policyFor(e.r.gen.Load())
}

// WatchState reads the egress state file at path, then keeps it in force,
// checking it every second on wg, until ctx is done: a changed file is validated and
// swapped in; an invalid one is logged and the previous state stays; a
// missing one means no state. root prefixes its blocklist file sources
// (KARS_ROUTER_ROOT).
func (e *Egress) WatchState(ctx context.Context, path, root string, wg *sync.WaitGroup) {
	var last []byte
	var missing bool
	check := func() {
		raw, err := os.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if !missing {
				missing, last = true, nil
				e.SetState(nil)
			}
			return
		case err != nil:
			e.log.Error("egress state unreadable; the previous one stays in force", "path", path, "err", err)
			return
		}
		if !missing && last != nil && bytes.Equal(raw, last) {
			return
		}
		missing, last = false, raw
		st, err := routerconfig.ParseEgressState(raw)
		if err != nil {
			e.log.Error("egress state rejected; the previous one stays in force", "path", path, "err", err)
			return
		}
		e.SetState(st.Under(root))
		e.log.Info("egress state loaded", "approvals", len(st.Approvals), "allowlist", st.Allowlist != nil, "blocklist", st.Blocklist != nil)
	}
	check()
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				check()
			}
		}
	})
}

// Wrap serves proxy requests (CONNECT, absolute-form HTTP) arriving on the
// agent port with the forward proxy, and everything else with next.
func (e *Egress) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if proxy.IsProxyRequest(req) {
			e.proxy.ServeHTTP(w, req)
			return
		}
		next.ServeHTTP(w, req)
	})
}

// policyFor returns the egress policy of generation g, compiling it the
// first time g is seen. A new generation re-checks the open tunnels.
func (e *Egress) policyFor(g *generation) *egressPolicy {
	st := e.state.Load()
	if p := e.compiled.Load(); p != nil && p.gen == g && p.state == st {
		return p
	}
	c := g.snap.Config
	ep := &egressPolicy{gen: g, state: st}
	var rules []allowlist.Rule
	eg := &routerconfig.Egress{}
	if c.Egress != nil {
		merged := *c.Egress
		eg = &merged
	}
	if st != nil {
		eg.Allowlist, eg.Approvals, eg.Blocklist = st.Allowlist, st.Approvals, st.Blocklist
	}
	ep.eg = eg
	if eg.Mode == routerconfig.EgressLearn {
		ep.pol.Mode = policy.Learn
	}
	add := func(name string, hosts []string, ports []int32, expires time.Time, into *[]allowlist.Rule) {
		for _, h := range hosts {
			en, err := allowlist.ParseEntry(h)
			if err != nil {
				continue // Validate refused such configs
			}
			if len(ports) > 0 && len(en.Ports) == 0 {
				for _, p := range ports {
					en.Ports = append(en.Ports, uint16(p))
				}
			}
			*into = append(*into, allowlist.Rule{Entry: en, Name: name + " " + en.String(), Expires: expires})
		}
	}
	add("allowedHosts", eg.AllowedHosts, nil, time.Time{}, &rules)
	for _, cr := range c.Credentials {
		add("credential "+cr.Name, credentialHosts(cr), nil, time.Time{}, &rules)
	}
	if a := eg.Allowlist; a != nil {
		add("allowlist "+shortDigest(a.Digest), a.Hosts, nil, time.Time{}, &rules)
	}
	ep.pol.Allowlist = allowlist.Compile(rules)
	var approvals []allowlist.Rule
	for _, a := range eg.Approvals {
		add("approval "+a.Name, a.Hosts, a.Ports, a.ExpiresAt, &approvals)
	}
	ep.pol.Approvals = allowlist.Compile(approvals)
	if b := e.blocklistFor(eg.Blocklist); b != nil {
		ep.blocklist = b
		ep.pol.Blocklist = b
		ep.pol.BlocklistRule = "blocklist"
	}
	var base governance.DecisionProvider
	if c.Governance != nil {
		base = e.r.engine
	}
	ep.gov = &behavior.Guard{Next: policy.NoRuleAllows{Next: base}, Monitor: g.monitor}
	if old := e.compiled.Swap(ep); old != nil {
		go e.proxy.Sweep(e.now(), true)
	}
	return ep
}

func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}

// blocklistFor returns the runner for cfg, starting a new loader when the
// configuration changed.
func (e *Egress) blocklistFor(cfg *routerconfig.Blocklist) *blocklistRunner {
	e.blMu.Lock()
	defer e.blMu.Unlock()
	if cfg == nil || len(cfg.Sources) == 0 {
		if old := e.bl.Swap(nil); old != nil {
			old.cancel()
		}
		return nil
	}
	keyRaw, _ := json.Marshal(cfg)
	if cur := e.bl.Load(); cur != nil && cur.key == string(keyRaw) {
		return cur
	}
	var srcs []blocklist.Source
	client := &http.Client{Timeout: 2 * time.Minute, Transport: DefaultTransport()}
	for _, s := range cfg.Sources {
		switch {
		case s.File != "":
			name := s.Name
			if name == "" {
				name = "file:" + s.File
			}
			srcs = append(srcs, blocklist.FileSource(name, s.File))
		case s.URL != "":
			src, err := blocklist.URLSource(s.URL, client, false)
			if err == nil {
				srcs = append(srcs, src)
			}
		case s.OCI != "":
			ref := s.OCI
			srcs = append(srcs, blocklist.Source{Name: "oci://" + ref, Fetch: func(ctx context.Context, w io.Writer, etag string) (string, bool, error) {
				return artifact.FetchBlob(ctx, artifact.Options{HTTPClient: client}, ref, etag, w, blocklist.MaxListBytes)
			}})
		}
	}
	ctx, cancel := context.WithCancel(e.ctx)
	b := &blocklistRunner{key: string(keyRaw), cancel: cancel}
	b.loader = &blocklist.Loader{Dir: filepath.Join(e.stateDir, "blocklist"), Sources: srcs, Interval: cfg.RefreshInterval(), Log: e.log,
		OnUpdate: func(s *blocklist.Snapshot) {
			if s.Version != "" {
				b.ready.Store(true)
			}
			e.m.blocklist(s)
		}}
	go func() {
		if err := b.loader.Start(ctx); err != nil {
			e.log.Warn("blocklist: a source failed; the last good list stays in force", "err", err)
		}
		b.loader.Run(ctx)
	}()
	if old := e.bl.Swap(b); old != nil {
		old.cancel()
	}
	return b
}

// Decide implements proxy.Decider: decide, then record durably.
func (e *Egress) Decide(ctx context.Context, req proxy.Request) proxy.Verdict {
	start := e.now()
	g := e.r.gen.Load()
	ep := e.policyFor(g)
	var d policy.Decision
	switch {
	case e.r.auditFailing.Load():
		// Fail closed; the refusal's own entry probes the log.
		d = policy.Decision{Step: policy.StepInvalid, Rule: "kars-audit", Reason: "kars-router cannot write its audit log, so it allows no egress until it can"}
	case ep.blocklist != nil && !ep.blocklist.ready.Load():
		d = policy.Decision{Step: policy.StepBlocklist, Rule: "blocklist", Reason: "the blocklist has not been loaded yet; egress fails closed until it is"}
	default:
		d = ep.pol.Decide(req.Host, req.Port, start)
		if d.Allow {
			d = policy.Govern(d, ep.gov, g.agent, req.Host, req.Port)
		} else {
			g.monitor.ObserveDecision(g.agent, governance.Decision{Verdict: governance.Deny, Rule: d.Rule, Reason: d.Reason})
		}
	}
	v := verdictOf(req, d)
	rec := e.record(g, req, d, start)
	if err := e.r.appendAudit(ctx, rec); err != nil {
		v = proxy.Verdict{Status: http.StatusServiceUnavailable, Rule: "kars-audit",
			Message: "kars egress: " + destOf(req) + " refused: the decision could not be written to the audit log (" + err.Error() + ")"}
		d.Allow = false
	}
	e.after(req, d, v, start)
	return v
}

// Still implements proxy.Decider: the current policy's verdict, without
// recording.
func (e *Egress) Still(req proxy.Request, now time.Time) proxy.Verdict {
	g := e.r.gen.Load()
	ep := e.policyFor(g)
	d := ep.pol.Decide(req.Host, req.Port, now)
	if d.Allow {
		d = policy.Govern(d, ep.gov, g.agent, req.Host, req.Port)
	}
	return verdictOf(req, d)
}

// Refused implements proxy.Decider: an allowed name that resolved only to
// refused addresses.
func (e *Egress) Refused(ctx context.Context, req proxy.Request, reason string) {
	start := e.now()
	g := e.r.gen.Load()
	d := policy.Decision{Step: policy.StepAddress, Rule: "refused-range", Reason: reason}
	e.r.appendAudit(ctx, e.record(g, req, d, start))
	e.after(req, d, verdictOf(req, d), start)
}

func destOf(req proxy.Request) string { return policy.Action(req.Host, req.Port)[len("egress:"):] }

// verdictOf turns a decision into the proxy's verdict, with the message
// the agent sees.
func verdictOf(req proxy.Request, d policy.Decision) proxy.Verdict {
	if d.Allow {
		return proxy.Verdict{Allow: true, Rule: d.Rule, Expires: d.Expires}
	}
	status := http.StatusForbidden
	if d.Verdict == governance.RateLimited {
		status = http.StatusTooManyRequests
	}
	if d.Rule == "kars-audit" {
		status = http.StatusServiceUnavailable
	}
	why := d.Reason
	if d.Matched != "" {
		why += " (" + d.Matched + ")"
	}
	return proxy.Verdict{Status: status, Rule: d.Rule,
		Message: "kars egress: " + destOf(req) + " refused by " + d.Step.String() + " rule " + strconv.Quote(d.Rule) + ": " + why}
}

// record is the decision's audit entry.
func (e *Egress) record(g *generation, req proxy.Request, d policy.Decision, start time.Time) audit.Record {
	verdict := "deny"
	switch {
	case d.Allow:
		verdict = "allow"
	case d.Step == policy.StepGovernance:
		verdict = d.Verdict.String()
	}
	attrs := map[string]string{"op": "egress", "step": d.Step.String(), "via": string(req.Via)}
	if req.OrigDst.IsValid() {
		attrs["orig_dst"] = req.OrigDst.String()
	}
	if req.Method != "" {
		attrs["method"] = req.Method
	}
	if d.Matched != "" {
		attrs["matched"] = d.Matched
	}
	if d.Step == policy.StepBlocklist {
		if b := e.bl.Load(); b != nil {
			attrs["blocklist_version"] = b.loader.Current().Version
		}
	}
	if !d.Expires.IsZero() {
		attrs["expires"] = d.Expires.UTC().Format(time.RFC3339)
	}
	return audit.Record{Sandbox: g.sandbox, Agent: g.agent, Action: policy.Action(req.Host, req.Port),
		Decision: verdict, Rule: d.Rule, Reason: d.Reason, Latency: e.now().Sub(start), Attrs: attrs}
}

// after records a decision in the learned record, the metrics, the event
// stream and the log.
func (e *Egress) after(req proxy.Request, d policy.Decision, v proxy.Verdict, start time.Time) {
	now := e.now()
	e.learned.Record(req.Host, req.Port, v.Allow, d.Step.String(), d.Rule, now)
	verdict := "deny"
	if v.Allow {
		verdict = "allow"
	}
	e.m.decisions.WithLabelValues(d.Step.String(), verdict, string(req.Via)).Inc()
	e.events.publish(Event{Time: now, Kind: "connect", Host: req.Host, Port: req.Port, Via: string(req.Via),
		OrigDst: addrString(req), Verdict: verdict, Step: d.Step.String(), Rule: d.Rule, Reason: v.Message})
	e.log.LogAttrs(context.Background(), slog.LevelInfo, "egress",
		slog.String("host", req.Host), slog.Int("port", int(req.Port)), slog.String("via", string(req.Via)),
		slog.String("decision", verdict), slog.String("step", d.Step.String()), slog.String("rule", d.Rule),
		slog.Duration("latency", now.Sub(start)))
}

func addrString(req proxy.Request) string {
	if req.OrigDst.IsValid() {
		return req.OrigDst.String()
	}
	return ""
}

// decideName answers the DNS stub: whether some connection to name could
// be allowed now.
func (e *Egress) decideName(name string) dns.Decision {
	ep := e.policyFor(e.r.gen.Load())
	if ep.blocklist != nil && !ep.blocklist.ready.Load() {
		return dns.Decision{Rule: "blocklist", Reason: "the blocklist has not been loaded yet"}
	}
	d := ep.pol.DecideHost(name, e.now())
	return dns.Decision{Allow: d.Allow, Rule: d.Rule, Reason: d.Reason}
}

func (e *Egress) observeDNS(q dns.Query) {
	e.m.dns.WithLabelValues(q.RCode).Inc()
	verdict := "allow"
	if q.RCode != "RCodeSuccess" {
		verdict = "deny"
	}
	e.events.publish(Event{Time: e.now(), Kind: "dns", Host: q.Name, Verdict: verdict, Rule: q.Rule, Reason: q.Reason, DNSType: q.Type, RCode: q.RCode})
}
