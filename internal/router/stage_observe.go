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
// is failing (decisions fail closed), and after every call writes one audit
// record, updates metrics and logs one line. It records outcomes, so it runs
// after the call: the record carries the tokens and latency the call
// actually had. A call refused because the log is failing is itself
// audited; when that append succeeds the log is back.
type observeStage struct{ r *Router }

func (observeStage) Name() string { return "observe" }

func (s observeStage) Serve(c *Call, next func(*Call)) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.r.log.Error("router panic", "panic", p, "path", c.R.URL.Path)
			c.Refuse(&inference.APIError{Status: http.StatusInternalServerError, Type: "server_error", Code: "kars_internal", Message: "kars-router internal error"})
		}
		s.record(c)
	}()
	if s.r.auditFailing.Load() {
		// Probe: if this refusal can be audited, the log is back.
		c.Refuse(&inference.APIError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "kars_audit_unavailable",
			Message: "kars-router cannot write its audit log, so it refuses calls until it can", Retryable: true})
		return
	}
	next(c)
}

func (s observeStage) record(c *Call) {
	r := s.r
	lat := time.Since(c.Start)
	decision := c.Decision.Verdict.String()
	if c.Action == "" {
		// Refused before governance ran (a malformed request, no target,
		// the audit log failing): name the operation, not a policy verdict.
		c.Action = "inference:" + string(c.Route.Op)
		decision = "refused"
	} else if c.Refusal != nil && c.Decision.Allowed() {
		decision = "refused"
	}
	model := ""
	if c.Upstream != "" {
		model = c.Upstream
	} else if len(c.Candidates) > 0 {
		model = c.Candidates[0].ID()
	}
	attrs := map[string]string{
		"op":     string(c.Route.Op),
		"status": strconv.Itoa(c.Status),
		"model":  model,
	}
	if c.Req.Stream {
		attrs["stream"] = "true"
	}
	if c.Usage.Total() > 0 || c.Upstream != "" {
		attrs["prompt_tokens"] = strconv.FormatInt(c.Usage.Prompt, 10)
		attrs["completion_tokens"] = strconv.FormatInt(c.Usage.Completion, 10)
		attrs["usage_reported"] = strconv.FormatBool(c.Usage.Reported)
	}
	if c.Refusal != nil {
		attrs["refusal"] = c.Refusal.Code
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
	var payload string
	if len(c.Body) > 0 {
		sum := sha256.Sum256(c.Body)
		payload = hex.EncodeToString(sum[:])
	}
	rec := audit.Record{
		Sandbox: c.Gen.sandbox, Agent: c.Gen.agent, Action: c.Action, Decision: decision,
		Rule: c.Decision.Rule, Reason: reason, PayloadSHA256: payload, Latency: lat, Attrs: attrs,
	}
	// The entry is appended after the answer has gone out, off the
	// agent's path: Append waits for the log's group commit (an fdatasync),
	// and the connection should not sit idle for it. Durability is the same
	// as appending before returning — either way the answer was already
	// sent — and a failing log still fails the router closed for the next
	// call. The router's in-flight count covers the append, and Wait blocks
	// on it at shutdown, so no entry is dropped by stopping.
	r.inflight.Add(1)
	r.pending.Add(1)
	go func() {
		defer r.pending.Done()
		defer r.inflight.Add(-1)
		r.appendAudit(context.Background(), rec)
		// Findings lower the agent's trust score; the store writes the
		// penalty durably, so this too stays off the agent's path.
		if r.opts.Trust != nil {
			for _, f := range c.Findings {
				r.opts.Trust.ReportFinding(c.Gen.agent, f)
			}
		}
	}()
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
		slog.String("payload_sha256", payload))
}

// auditTimeout bounds one append: a log that cannot commit in this long is
// treated as failing.
const auditTimeout = 10 * time.Second

// appendAudit appends rec and waits until it is durable. A failure puts the
// router in the failing state, in which calls are refused until an append
// succeeds again; a success after failures leaves it. The append is not
// tied to ctx's cancellation: an entry is written even if its caller left.
func (r *Router) appendAudit(ctx context.Context, rec audit.Record) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditTimeout)
	_, err := r.opts.Audit.Append(ctx, rec)
	cancel()
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
