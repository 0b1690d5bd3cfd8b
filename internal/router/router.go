package router

import (
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kars-io/kars/internal/approval"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/budget"
	"github.com/kars-io/kars/internal/credential"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/inference"
	"github.com/kars-io/kars/internal/mcpgateway"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/safety"
	"github.com/kars-io/kars/internal/upstreamhttp"
	"github.com/prometheus/client_golang/prometheus"
)

// TrustReporter receives content-safety findings so that the trust store
// can lower the agent's score. Implementations must not block.
type TrustReporter interface {
	ReportFinding(agent string, f safety.Finding)
}

// Options are the router's collaborators. Audit and Ledger are required.
type Options struct {
	// Audit receives one record per call. An Append error fails the router
	// closed until an append succeeds again.
	Audit audit.Sink
	// Ledger meters token budgets; its limits follow the config.
	Ledger *budget.Ledger
	// Trust receives safety findings; nil drops them.
	Trust TrustReporter
	// Transport carries upstream requests; nil means a tuned default.
	Transport http.RoundTripper
	// TokenClient carries Entra and IMDS token requests; nil means a
	// client with a 30 s timeout.
	TokenClient *http.Client
	// Registry receives the router's metrics; nil means a new registry.
	Registry *prometheus.Registry
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
	// MaxInflight bounds the agent calls in progress; more are refused
	// with 503. Zero means DefaultMaxInflight.
	MaxInflight int64
	// BufferBytes bounds the bytes of request bodies and whole answers
	// buffered at once, across all calls; a call that would exceed it is
	// refused with 503. Zero means DefaultBufferBytes.
	BufferBytes int64
	// Root prefixes file paths the router takes from its environment
	// (AZURE_FEDERATED_TOKEN_FILE), as routerconfig.Snapshot.Under does
	// for the config's own paths.
	Root string
}

// Router serves agents' inference calls under one sandbox's config.
type Router struct {
	opts           Options
	log            *slog.Logger
	gen            atomic.Pointer[generation]
	ledger         *budget.Ledger
	limiter        *budget.Limiter
	metrics        *metrics
	chain          *Chain
	upstreamClient *http.Client
	tokenClient    *http.Client
	auditFailing   atomic.Bool
	auditCtx       atomic.Pointer[auditDeadline]
	inflight       atomic.Int64
	maxInflight    int64
	buffers        *byteBudget
	// giveAllowance gives an answer allowance back to buffers; made once,
	// not per call.
	giveAllowance func()
	pending       sync.WaitGroup // trust penalties still being written
	engine        *governance.Engine
	mcpPool       *mcpgateway.Pool
	// approvals holds the calls awaiting a person's decision (approvals.go).
	approvals        *approval.Queue
	approvalOutcomes *prometheus.CounterVec

	mu     sync.Mutex
	creds  map[string]credential.Source
	health map[string]*health
}

// New builds a router enforcing snap.
func New(snap *routerconfig.Snapshot, opts Options) (*Router, error) {
	if opts.Audit == nil || opts.Ledger == nil {
		return nil, fmt.Errorf("router: an audit sink and a budget ledger are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.Transport == nil {
		opts.Transport = DefaultTransport()
	}
	if opts.TokenClient == nil {
		opts.TokenClient = &http.Client{Timeout: 30 * time.Second}
	}
	if opts.MaxInflight <= 0 {
		opts.MaxInflight = DefaultMaxInflight
	}
	if opts.BufferBytes <= 0 {
		opts.BufferBytes = DefaultBufferBytes
	}
	r := &Router{
		opts:           opts,
		log:            opts.Logger,
		ledger:         opts.Ledger,
		limiter:        budget.NewLimiter(0, 0),
		metrics:        newMetrics(opts.Registry),
		upstreamClient: &http.Client{Transport: opts.Transport},
		tokenClient:    opts.TokenClient,
		creds:          map[string]credential.Source{},
		health:         map[string]*health{},
		engine:         governance.NewEngine(),
		maxInflight:    opts.MaxInflight,
		buffers:        newByteBudget(opts.BufferBytes),
		mcpPool:        mcpgateway.NewPool(opts.Transport, opts.TokenClient),
	}
	r.giveAllowance = func() { r.buffers.give(answerAllowance) }
	registerAuditSyncs(opts.Registry, opts.Audit)
	r.approvals, r.approvalOutcomes = newApprovals(opts.Registry, snap.Config.MaxPendingApprovals())
	r.chain = NewChain(
		observeStage{r},
		parseStage{r},
		governStage{r},
		fetchStage{r},
		rateLimitStage{r},
		budgetStage{r},
		forwardStage{r},
	)
	if err := r.Apply(snap); err != nil {
		return nil, err
	}
	return r, nil
}

// DefaultTransport is the upstream transport: connection pools sized for a
// busy agent, no overall timeout (streams may run for minutes; the agent's
// request context bounds each call), and a bound on waiting for headers.
// It is upstreamhttp's rather than net/http's because a router holds one
// upstream request open for each agent stream: upstreamhttp serves
// HTTP/1.1 on the caller's goroutine (no read and write loop goroutines
// per connection) and dials one HTTP/2 connection per host at a time (no
// TLS handshake per call in a burst).
func DefaultTransport() http.RoundTripper {
	return &upstreamhttp.Transport{
		DialTimeout:           10 * time.Second,
		KeepAlive:             30 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 10 * time.Minute,
		IdleTimeout:           90 * time.Second,
		MaxIdlePerHost:        1024,
	}
}

// Apply makes snap the live config. In-flight calls finish under the
// generation they started with. On error nothing changes.
func (r *Router) Apply(snap *routerconfig.Snapshot) error {
	g, err := r.buildGeneration(snap)
	if err != nil {
		return err
	}
	c := snap.Config
	var lim budget.Limits
	if b := c.Budget; b != nil {
		lim = budget.Limits{PerRequest: b.PerRequest, Daily: b.Daily, Monthly: b.Monthly}
	}
	r.ledger.SetLimits(lim)
	if rl := c.RateLimit; rl != nil {
		r.limiter.SetLimits(int64(rl.RPM), rl.TPM)
	} else {
		r.limiter.SetLimits(0, 0)
	}
	old := r.gen.Swap(g)
	r.mcpPool.Retain(c.MCP)
	r.metrics.configInfo(snap.Digest, old)
	r.metrics.reloads.Inc()
	return nil
}

// Snapshot returns the live config snapshot.
func (r *Router) Snapshot() *routerconfig.Snapshot { return r.gen.Load().snap }

// Ledger returns the budget ledger.
func (r *Router) Ledger() *budget.Ledger { return r.ledger }

// Stages lists the pipeline's stages in order.
func (r *Router) Stages() []string { return r.chain.Names() }

// AgentHandler returns the agent-facing API. Later features add their
// routes to the returned mux.
func (r *Router) AgentHandler() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/v1/", http.HandlerFunc(r.serveInference))
	mux.Handle("/openai/", http.HandlerFunc(r.serveInference))
	mux.Handle(DecidePath, http.HandlerFunc(r.serveDecide))
	mux.Handle(routerconfig.MCPPathPrefix, http.HandlerFunc(r.serveMCP))
	mux.Handle(mcpgateway.IndexPath, http.HandlerFunc(r.serveMCPIndex))
	mux.Handle(MemoryPath, http.HandlerFunc(r.serveMemory))
	mux.Handle(MemoryPath+"/", http.HandlerFunc(r.serveMemory))
	mux.HandleFunc("/", notFound)
	return mux
}

func notFound(w http.ResponseWriter, req *http.Request) {
	(&inference.APIError{Status: http.StatusNotFound, Type: "invalid_request_error", Code: "kars_unknown_endpoint",
		Message: fmt.Sprintf("kars-router does not serve %s %s; it serves the OpenAI (/v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings, /v1/models), Azure OpenAI (/openai/deployments/{deployment}/...) and Anthropic (/v1/messages) APIs, and POST "+DecidePath, req.Method, req.URL.Path)}).
		Write(w, inference.DialectOpenAI)
}

func (r *Router) serveInference(w http.ResponseWriter, req *http.Request) {
	route, ok := inference.Match(req.Method, req.URL.Path)
	if !ok {
		notFound(w, req)
		return
	}
	if !r.admitCall(w, route.Dialect) {
		return
	}
	c := &Call{W: w, R: req, Start: time.Now(), Gen: r.gen.Load(), Route: route}
	c.onFinish(admission{r})
	defer c.end()
	r.chain.Run(c)
}

// Wait blocks until the trust penalties started so far are written. Call it
// after the listeners have stopped and before closing the trust store. (A
// call's audit entry is written within the call, so stopping the listeners
// waits for it.)
func (r *Router) Wait() { r.pending.Wait() }

// InFlight returns the number of agent calls in progress, including the
// bookkeeping (settlement, trust penalties) that follows a call's last
// byte.
func (r *Router) InFlight() int64 { return r.inflight.Load() }
