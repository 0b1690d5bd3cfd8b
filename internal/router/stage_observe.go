package router

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/inference"
)

// observeStage is the outermost stage: it refuses calls while the audit log
// is failing (decisions fail closed), gives the call its Commit — one
// durable audit entry, which whoever answers the agent writes before the
// answer completes — and after every call updates metrics and logs one
// line. A call refused because the log is failing is itself audited; when
// that append succeeds the log is back.
type observeStage struct{ r *Router }

func (observeStage) Name() string { return "observe" }

func (s observeStage) Serve(c *Call, next func(*Call)) {
	c.commit = s.commit
	c.onFinish(s)
	defer s.recoverPanic(c)
	if s.r.auditFailing.Load() {
		// Probe: if this refusal can be audited, the log is back.
		c.Refuse(errAuditUnavailable)
		return
	}
	next(c)
}

// finish records the call (record) and gives back what it holds of the
// router's buffer budget.
func (s observeStage) finish(c *Call) {
	s.record(c)
	for _, release := range c.release {
		release()
	}
}

// recoverPanic, deferred in the handler, answers a call whose handling
// panicked (panicked); end records it as usual. http.ErrAbortHandler goes
// on up: net/http uses it to drop a connection on purpose.
func (s observeStage) recoverPanic(c *Call) {
	p := recover()
	if p == nil {
		return
	}
	if p == http.ErrAbortHandler {
		panic(p)
	}
	panicked(s.r, c, p)
}

// panicked logs a panic in c's handling and answers c with a 500 (or, once
// something was written, records it as one). A detached stream's goroutine
// recovers its own (detachedStream.end).
func panicked(r *Router, c *Call, p any) {
	r.log.Error("router panic", "panic", p, "path", c.R.URL.Path)
	c.Refuse(&inference.APIError{Status: http.StatusInternalServerError, Type: "server_error", Code: "kars_internal", Message: "kars-router internal error"})
}

// outcome names the call's decision for the audit entry and metrics.
func outcome(c *Call) string {
	if c.Action == "" || (c.Refusal != nil && c.Decision.Allowed()) {
		// Refused before governance ran (a malformed request, no target,
		// the audit log failing), or after it allowed the call: name the
		// operation, not a policy verdict.
		return "refused"
	}
	return c.Decision.Verdict.String()
}

// modelOf names the target that answered, or the first candidate.
func modelOf(c *Call) string {
	if c.Upstream != "" {
		return c.Upstream
	}
	if len(c.Candidates) > 0 {
		return c.Candidates[0].ID()
	}
	return ""
}

// payloadHash is the SHA-256 of the agent's request body, or "".
func payloadHash(body []byte) string {
	if len(body) == 0 {
		return ""
	}
	sum := sha256.Sum256(body)
	var hx [2 * sha256.Size]byte
	hex.Encode(hx[:], sum[:])
	return string(hx[:])
}

// commit appends the call's audit entry and waits until it is durable.
func (s observeStage) commit(c *Call) error {
	c.outcome = outcome(c)
	if c.Action == "" {
		c.Action = "inference:" + string(c.Route.Op)
	}
	attrs := map[string]string{
		"op":     string(c.Route.Op),
		"status": strconv.Itoa(c.Status),
		"model":  modelOf(c),
	}
	if c.Req.Stream {
		attrs["stream"] = "true"
	}
	if c.Usage.Total() > 0 || c.Upstream != "" {
		attrs["prompt_tokens"] = strconv.FormatInt(c.Usage.Prompt, 10)
		attrs["completion_tokens"] = strconv.FormatInt(c.Usage.Completion, 10)
		attrs["usage_reported"] = strconv.FormatBool(c.Usage.Reported)
	}
	if c.Reservation != nil {
		charged := charge(c, c.Reservation.Tokens())
		attrs["charged_tokens"] = strconv.FormatInt(charged, 10)
		if !c.Usage.Reported && charged > c.Usage.Total() {
			attrs["usage_charged"] = "reserved"
		}
	}
	if c.Refusal != nil {
		attrs["refusal"] = c.Refusal.Code
	}
	for i, f := range c.Fetches {
		attrs["provider_fetch."+strconv.Itoa(i)] = f.Action + " " + f.Decision.Verdict.String() + " " + ruleName(f.Decision)
	}
	for _, f := range c.Findings {
		if f.Blocking {
			attrs["safety_block"] = f.Where + ":" + f.Category
			break
		}
	}
	reason := c.Decision.Reason
	if c.Refusal != nil {
		reason = c.Refusal.Message
	}
	if c.payload == "" {
		c.payload = payloadHash(c.Body)
	}
	return s.r.appendAudit(c.R.Context(), audit.Record{
		Sandbox: c.Gen.sandbox, Agent: c.Gen.agent, Action: c.Action, Decision: c.outcome,
		Rule: c.Decision.Rule, Reason: reason, PayloadSHA256: c.payload, Latency: time.Since(c.Start), Attrs: attrs,
	})
}

// record finishes a call: its audit entry if nothing answered the agent
// (it went away, or the handler panicked before answering), metrics, one
// log line, and trust penalties for safety findings.
func (s observeStage) record(c *Call) {
	r := s.r
	c.Commit()
	lat := time.Since(c.Start)
	decision, model := c.outcome, modelOf(c)
	// Findings lower the agent's trust score; the store writes the penalty
	// durably, so this stays off the agent's path. Wait covers it.
	if r.opts.Trust != nil && len(c.Findings) > 0 {
		r.pending.Add(1)
		r.inflight.Add(1)
		go func() {
			defer r.pending.Done()
			defer r.inflight.Add(-1)
			for _, f := range c.Findings {
				r.opts.Trust.ReportFinding(c.Gen.agent, f)
			}
		}()
	}
	for _, f := range c.Findings {
		r.metrics.safetyFindings.WithLabelValues(f.Category, strconv.FormatBool(f.Blocking)).Inc()
	}
	r.metrics.observe(c, decision, model, lat)
	level := slog.LevelInfo
	if c.Status >= 500 {
		level = slog.LevelWarn
	}
	r.log.LogAttrs(c.R.Context(), level, "inference",
		slog.String("action", c.Action), slog.String("decision", decision), slog.String("model", model),
		slog.Int("status", c.Status), slog.Int64("prompt_tokens", c.Usage.Prompt),
		slog.Int64("completion_tokens", c.Usage.Completion), slog.Duration("latency", lat),
		slog.Duration("upstream_latency", c.UpstreamLatency), slog.Int("attempts", c.Attempts),
		slog.String("payload_sha256", c.payload))
}

// auditTimeout bounds one append: a log that cannot commit in this long
// (up to a second more) is treated as failing.
const auditTimeout = 10 * time.Second

// auditDeadline is a context that ends auditTimeout and a second after it
// was made. The appends that start within that second share it, so that
// bounding an append costs no context, timer and channel of its own.
type auditDeadline struct {
	ctx    context.Context
	cancel context.CancelFunc // left to the deadline: appends still use ctx
	made   time.Time
}

// auditContext returns the shared context for an append starting now.
func (r *Router) auditContext() context.Context {
	now := time.Now()
	if d := r.auditCtx.Load(); d != nil && now.Sub(d.made) < time.Second && now.Sub(d.made) >= 0 {
		return d.ctx
	}
	d := &auditDeadline{made: now}
	d.ctx, d.cancel = context.WithDeadline(context.Background(), now.Add(auditTimeout+time.Second))
	r.auditCtx.Store(d)
	return d.ctx
}

// appendAudit appends rec and waits until it is durable. A failure puts the
// router in the failing state, in which calls are refused until an append
// succeeds again; a success after failures leaves it. The append is not
// tied to the call's cancellation: an entry is written even if its caller
// left.
func (r *Router) appendAudit(_ context.Context, rec audit.Record) error {
	_, err := r.opts.Audit.Append(r.auditContext(), rec)
	if err != nil {
		if !r.auditFailing.Swap(true) {
			r.log.Error("audit append failed; refusing calls until it recovers", "err", err)
		}
		r.metrics.auditErrors.Inc()
		return err
	}
	if r.auditFailing.Swap(false) {
		r.log.Info("audit log recovered")
	}
	return nil
}
