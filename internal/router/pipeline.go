// Package router is kars-router's HTTP surface: the agent-facing inference
// API on 127.0.0.1:8443, the admin API, and the request pipeline between
// them and the upstream providers.
//
// A call moves through an ordered list of small stages (see Stages), each
// with one job — parse, rate-limit, decide, reserve, check, forward — in the
// manner of a Caddy handler chain or an Envoy filter chain. Later features
// (the egress forward proxy, the MCP gateway, A2A ingress, the mesh bridge)
// add routes to the agent mux or listeners to the Server, and reuse the
// stages that apply to them.
//
// Security: the agent's own credentials are dropped at the first stage and
// never forwarded; upstream credentials are injected only into the upstream
// request and scrubbed from anything returned.
package router

import (
	"context"
	"net/http"
	"time"

	"github.com/kars-io/kars/internal/budget"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/inference"
	"github.com/kars-io/kars/internal/safety"
)

// Call is one agent request on its way through the pipeline. Stages fill it
// in; the observe stage turns it into an audit entry, metrics and a log line.
type Call struct {
	W     http.ResponseWriter
	R     *http.Request
	Start time.Time
	// Gen is the config generation the call started with; it keeps it to
	// the end even if the config is swapped meanwhile.
	Gen *generation

	Route inference.Route
	Body  []byte
	Req   inference.Request
	// Candidates are the targets that serve this call and that policy
	// allows, in failover order.
	Candidates []*upstream
	Action     string
	Decision   governance.Decision
	// govReq is the governance request being decided, kept here so that
	// deciding allocates nothing of its own.
	govReq governance.Request
	// Fetches are the provider-side actions the request carries, with
	// their decisions (fetchStage).
	Fetches []fetchDecision

	Reservation *budget.Reservation
	// RateTokens is what the tpm limiter holds for this call.
	RateTokens int64

	// Upstream is the ID of the target that answered, if any.
	Upstream string
	Status   int
	Usage    inference.Usage
	// Findings are the content-safety findings seen on the response.
	Findings []safety.Finding
	// Refusal is set when the router itself answered with an error.
	Refusal *inference.APIError
	// UpstreamLatency is the time to the upstream's response headers.
	UpstreamLatency time.Duration
	// Attempts counts upstream tries, including failovers.
	Attempts int

	// release gives back what the call holds of the router's buffer
	// budget; the observe stage runs them when the call is finished.
	release []func()

	written bool
	// commit appends the call's audit entry; the observe stage sets it.
	commit    func(*Call) error
	committed bool
	commitErr error
	// payload (the request body's SHA-256) and outcome (the audited
	// decision) are set by the commit.
	payload, outcome string

	// finishers are what stages do once the call is over — settle the
	// rate limit and the budget, count and log the call, give back what
	// it holds — run last-added first by end. They are kept here rather
	// than run as each stage's chain returns so that a stream can outlive
	// the handler that started it (see detach).
	finishers [maxFinishers]finisher
	nfinish   int
	detached  bool
	// ctx, when set, is the context upstream requests are made with
	// (Context): a stream's, which can be detached from the agent
	// request's (streamContext).
	ctx      context.Context
	cancel   context.CancelFunc
	unfollow func() bool
}

// finisher is a stage's (or the admission's) part in ending a call.
type finisher interface{ finish(c *Call) }

// maxFinishers bounds the finishers of one call: admission, observe, rate
// limit and budget.
const maxFinishers = 4

// onFinish adds f to what end runs. Stages pass themselves: a stage is a
// struct holding one pointer, so this allocates nothing.
func (c *Call) onFinish(f finisher) {
	c.finishers[c.nfinish] = f
	c.nfinish++
}

// end runs the finishers, last added first, unless the call was detached:
// then the goroutine relaying its stream ends it.
func (c *Call) end() {
	if c.detached {
		return
	}
	c.runFinishers()
}

func (c *Call) runFinishers() {
	for c.nfinish > 0 {
		c.nfinish--
		f := c.finishers[c.nfinish]
		c.finishers[c.nfinish] = nil
		f.finish(c)
	}
	if c.cancel != nil {
		c.cancel()
	}
}

// Context is the context of the call's upstream requests: the agent
// request's, or for a stream, one that follows it until the stream is
// detached from the handler (streamContext).
func (c *Call) Context() context.Context {
	if c.ctx != nil {
		return c.ctx
	}
	return c.R.Context()
}

// streamContext makes the call's context one that is cancelled when the
// agent request's is — until detach — or when the call ends. net/http
// cancels a request's context when its handler returns, also for a
// connection taken over; a detached stream must outlive that.
func (c *Call) streamContext() context.Context {
	if c.ctx == nil {
		parent := c.R.Context()
		c.ctx, c.cancel = context.WithCancel(context.WithoutCancel(parent))
		c.unfollow = context.AfterFunc(parent, c.cancel)
	}
	return c.ctx
}

// Commit makes the call's audit entry durable, once, and returns the
// append's error. Whoever answers the agent calls it before the answer
// completes — before any byte of a whole response, before a stream's
// terminal event — so that no call finishes without being on record. The
// entry records the call as it stands: status, usage and findings so far.
func (c *Call) Commit() error {
	if !c.committed {
		c.committed = true
		if c.commit != nil {
			c.commitErr = c.commit(c)
		}
	}
	return c.commitErr
}

// errAuditUnavailable answers a call whose audit entry could not be
// written: the answer is withheld (decisions fail closed).
var errAuditUnavailable = &inference.APIError{Status: http.StatusServiceUnavailable, Type: "server_error",
	Code: "kars_audit_unavailable", Message: "kars-router cannot write its audit log, so it refuses calls until it can", Retryable: true}

// Refuse answers the agent with err in its dialect, once the refusal is on
// record. Stages call it and return without calling next.
func (c *Call) Refuse(err *inference.APIError) {
	c.Refusal = err
	c.Status = err.Status
	if c.written {
		return
	}
	c.written = true
	// A refusal that cannot be recorded is still a refusal: it is sent as
	// it is, and the failing log refuses the calls that follow.
	c.Commit()
	d := c.Route.Dialect
	if d == 0 {
		d = inference.DialectOpenAI
	}
	err.Write(c.W, d)
}

// Stage is one step of the pipeline. Serve either calls next to pass the call
// on, or answers (usually with Call.Refuse) and returns. What a stage does
// once the call is over belongs in a finisher (Call.onFinish), not after
// next returns: a stream is relayed on after the chain has returned.
type Stage interface {
	Name() string
	Serve(c *Call, next func(*Call))
}

// Chain runs stages in order. The closures linking them are built once, so
// running a call allocates nothing for the chain itself.
type Chain struct {
	stages []Stage
	entry  func(*Call)
}

// NewChain links stages; the last must answer every call it receives.
func NewChain(stages ...Stage) *Chain {
	next := func(c *Call) {
		c.Refuse(&inference.APIError{Status: http.StatusInternalServerError, Type: "server_error",
			Code: "kars_pipeline", Message: "kars-router: the pipeline ended without an answer"})
	}
	for i := len(stages) - 1; i >= 0; i-- {
		st, n := stages[i], next
		next = func(c *Call) { st.Serve(c, n) }
	}
	return &Chain{stages: stages, entry: next}
}

// Run sends c through the chain.
func (ch *Chain) Run(c *Call) { ch.entry(c) }

// Names lists the stages in order, for the admin API and docs.
func (ch *Chain) Names() []string {
	out := make([]string, len(ch.stages))
	for i, s := range ch.stages {
		out[i] = s.Name()
	}
	return out
}
