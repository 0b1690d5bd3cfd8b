package router

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/inference"
	"github.com/kars-io/kars/internal/mcpgateway"
)

// The MCP gateway (internal/mcpgateway) is mounted on the agent API at
// /mcp/<server>, with the index of the sandbox's servers at /kars/v1/mcp.
// The router is its Governor: tools/call is decided by the same decision
// provider as inference and decide (behaviour monitor, ToolPolicy rules,
// conditions, rate limits, approval), and each call's audit entry is
// durable before its answer reaches the agent — written while an allowed
// call is forwarded (docs/audit.md, "MCP tool calls").

// mcpGovernor is the Governor of one config generation.
type mcpGovernor struct {
	r *Router
	g *generation
}

// Visible implements mcpgateway.Governor: with a ToolPolicy, whatever one
// of its rules could allow or hold for approval (approvals.go); without
// one (the default policy allows only inference), nothing.
func (m mcpGovernor) Visible(action string) bool {
	if m.g.snap.Config.Governance == nil {
		return false
	}
	return m.r.engine.Profile().MayRun(m.g.agent, action)
}

// Decide implements mcpgateway.Governor. The decision is made at once;
// the audit entry is appended on its own goroutine, so that an allowed
// call is forwarded while the entry is being made durable (docs/audit.md,
// "MCP tool calls"), and the gateway waits for it before it answers.
func (m mcpGovernor) Decide(ctx context.Context, c *mcpgateway.Call) (governance.Decision, func() error, error) {
	g := m.g
	rec := audit.Record{Sandbox: g.sandbox, Agent: g.agent, Action: c.Action, PayloadSHA256: c.Payload,
		Attrs: map[string]string{"op": "mcp", "server": c.Server}}
	if m.r.auditFailing.Load() {
		// Fail closed without deciding; the refusal's own entry probes
		// whether the log is back.
		rec.Decision, rec.Reason, rec.Latency = "refused", "kars-router cannot write its audit log", time.Since(c.Start)
		rec.Attrs["status"] = strconv.Itoa(http.StatusServiceUnavailable)
		m.r.appendAudit(ctx, rec)
		return governance.Decision{}, nil, errors.New("audit log unavailable")
	}
	var d governance.Decision
	if c.Refused != nil {
		d = *c.Refused
		// A refused call is a denial the behaviour monitor counts, as the
		// decide endpoint's malformed requests are.
		g.monitor.ObserveDecision(g.agent, d)
	} else {
		d = g.gov.Decide(&governance.Request{Agent: g.agent, Action: c.Action, Args: c.Args})
	}
	verdict := d.Verdict.String()
	m.r.metrics.decisions.WithLabelValues(verdict).Inc()
	rec.Decision, rec.Rule, rec.Reason, rec.Latency = verdict, d.Rule, d.Reason, time.Since(c.Start)
	rec.Attrs["status"] = strconv.Itoa(http.StatusOK)
	if d.Verdict == governance.RequireApproval && c.Refused == nil {
		// Held until a person decides (approvals.go); its entries are
		// durable when it returns.
		d, err := m.holdForApproval(ctx, c, d, rec)
		if err != nil {
			return d, nil, err
		}
		return d, func() error { return nil }, nil
	}
	done := make(chan error, 1)
	go func() { done <- m.r.appendAudit(ctx, rec) }()
	return d, func() error { return <-done }, nil
}

// Finished implements mcpgateway.Governor.
func (m mcpGovernor) Finished(c *mcpgateway.Call, d governance.Decision, outcome string, took time.Duration) {
	verdict := d.Verdict.String()
	m.r.metrics.requests.WithLabelValues("mcp", "", outcome, verdict).Inc()
	m.r.metrics.duration.WithLabelValues("mcp").Observe(took.Seconds())
	m.r.log.LogAttrs(context.Background(), slog.LevelInfo, "mcp",
		slog.String("server", c.Server), slog.String("action", c.Action), slog.String("decision", verdict),
		slog.String("rule", d.Rule), slog.String("outcome", outcome), slog.Duration("latency", took),
		slog.String("payload_sha256", c.Payload))
}

// serveMCP admits an MCP message, charges its body to the buffer budget
// and hands it to the generation's gateway.
func (r *Router) serveMCP(w http.ResponseWriter, req *http.Request) {
	done, ok := r.admit(w, inference.DialectOpenAI)
	if !ok {
		return
	}
	defer done()
	g := r.gen.Load()
	if req.Body != nil && req.Method == http.MethodPost {
		body, release, err := r.readBounded(req.Body, req.ContentLength, mcpgateway.MaxRequestBytes, 1, 0)
		if err != nil {
			var tooBig errTooLarge
			switch {
			case errors.As(err, &tooBig):
				http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			case errors.Is(err, errNoBuffer):
				w.Header().Set("Retry-After", "1")
				http.Error(w, "kars-router is at its bound on buffered bytes; retry shortly", http.StatusServiceUnavailable)
			default:
				http.Error(w, "could not read the request body: "+err.Error(), http.StatusBadRequest)
			}
			return
		}
		defer release()
		req.Body = http.NoBody
		if len(body) > 0 {
			req.Body = readCloser{bytes.NewReader(body)}
		}
	}
	g.mcp.ServeHTTP(w, req)
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

func (r *Router) serveMCPIndex(w http.ResponseWriter, req *http.Request) {
	r.gen.Load().mcp.ServeIndex(w, req)
}
