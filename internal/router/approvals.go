package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/kars-io/kars/internal/approval"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/mcpgateway"
	"github.com/prometheus/client_golang/prometheus"
)

// Approvals: an MCP tools/call that the policy decides require_approval
// is held in the router (internal/approval) until a person approves or
// denies it on the admin API, its timeout passes, or the agent's request
// ends. Every step is in the audit log: the pending entry is durable
// before the call is listed, and the call's outcome — approved (then the
// call goes the way of any allowed call), denied, timed out, abandoned —
// is its own entry with the approval id and who decided. A router that
// stops cleanly ends the calls it holds as it begins shutting down
// (Serve); a call whose router process ended before its outcome
// gets it from the next start (approvalrestart.go).

// newApprovals builds the router's approval queue, bounded by capacity,
// and its metrics.
func newApprovals(reg *prometheus.Registry, capacity int) (*approval.Queue, *prometheus.CounterVec) {
	q := approval.New(capacity)
	outcomes := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kars_router", Name: "approvals_total",
		Help: "Calls held for approval, by how they ended (approved, denied, timeout, abandoned)."}, []string{"outcome"})
	reg.MustRegister(outcomes, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "kars_router", Name: "approvals_pending",
		Help: "Calls held for approval now."}, func() float64 { return float64(q.Len()) }))
	return q, outcomes
}

// argsSummaryLen bounds the arguments the admin API shows a person
// deciding: enough to see what is asked, never a large payload.
const argsSummaryLen = 512

// holdForApproval holds c, decided d (require_approval), until it is
// decided, and returns the decision the call goes on with: allow when a
// person approved it, deny otherwise. rec is the call's audit record as
// Decide filled it. The entries it writes are durable when it returns;
// an error means one could not be written, and the call is not forwarded.
func (m mcpGovernor) holdForApproval(ctx context.Context, c *mcpgateway.Call, d governance.Decision, rec audit.Record) (governance.Decision, error) {
	return m.r.holdForApproval(ctx, m.g, held{start: c.Start, action: c.Action, payload: c.Payload, args: c.Args}, d, rec)
}

// held is the call holdForApproval holds.
type held struct {
	start           time.Time
	action, payload string
	args            map[string]any
}

// holdForApproval holds a call of generation g, decided d
// (require_approval), as the MCP gateway's version above says; the decide
// endpoint holds the calls whose agent asked it to (awaitApproval).
func (r *Router) holdForApproval(ctx context.Context, g *generation, c held, d governance.Decision, rec audit.Record) (governance.Decision, error) {
	refuse := func(outcome, reason string, kv ...string) (governance.Decision, error) {
		out := governance.Decision{Verdict: governance.Deny, Rule: d.Rule, Reason: reason}
		rec := withAttrs(rec, append([]string{"approval", outcome}, kv...)...)
		rec.Decision, rec.Reason, rec.Latency = out.Verdict.String(), reason, time.Since(c.start)
		return out, r.appendAudit(ctx, rec)
	}
	var req approval.Request
	if a := d.Approval; a != nil {
		if a.MinApprovals > 1 {
			return refuse("unsupported", fmt.Sprintf("%s; the rule asks for %d approvals and kars-router takes one decision per call, so it is refused", d.Reason, a.MinApprovals))
		}
		req.Approvers, req.Timeout = a.Approvers, a.Timeout
	}
	req.Action, req.Rule, req.Reason, req.ArgsSHA256 = c.action, d.Rule, d.Reason, c.payload
	req.Timeout = g.snap.Config.ApprovalTimeout(req.Timeout)
	req.Args = argsSummary(c.args)
	t, err := r.approvals.Open(req)
	switch {
	case errors.Is(err, approval.ErrStopped):
		// Never held (as over the bound), so not counted as an outcome.
		return refuse(string(approval.Abandoned), d.Reason+"; kars-router is stopping, so the call is not held for approval and was not forwarded",
			"abandoned_because", stopAbandoned)
	case err != nil:
		return refuse("full", d.Reason+"; "+err.Error()+", so it is refused")
	}
	pend := withAttrs(rec, "approval", "pending", "approval_id", t.ID(), "approval_expires", t.Expires().UTC().Format(time.RFC3339Nano))
	pend.Latency = time.Since(c.start)
	if err := r.appendAudit(ctx, pend); err != nil {
		t.Close()
		return governance.Decision{}, err
	}
	t.Publish()
	res := t.Wait(ctx)
	out := governance.Decision{Verdict: governance.Deny, Rule: d.Rule}
	outcome := string(res.Outcome)
	switch res.Outcome {
	case approval.Approved:
		out.Verdict, out.Reason = governance.Allow, "approved by "+res.By+" ("+t.ID()+")"
		if q, ok := r.gen.Load().monitor.Quarantined(g.agent); ok {
			// Quarantined while the call waited: the quarantine wins, as
			// it wins over every allow.
			out.Verdict, outcome = governance.Deny, "quarantined"
			out.Reason = "approved by " + res.By + " (" + t.ID() + ") but the agent was quarantined meanwhile: " + q.Detail
		}
	case approval.Denied:
		out.Reason = "approval " + t.ID() + " denied by " + res.By + ": " + d.Reason
	case approval.TimedOut:
		out.Reason = "approval timed out after " + req.Timeout.String() + " (" + t.ID() + "): " + d.Reason
	default:
		out.Reason = "the agent's request ended while awaiting approval " + t.ID()
		if res.Stopped {
			out.Reason = "kars-router stopped while approval " + t.ID() + " awaited a decision, so the call was not forwarded"
		}
	}
	fin := withAttrs(rec, "approval", outcome, "approval_id", t.ID())
	if res.By != "" {
		fin.Attrs["decided_by"] = res.By
	}
	if res.Stopped {
		fin.Attrs["abandoned_because"] = stopAbandoned
		r.log.Warn("approval ended: the router is stopping; the call did not run", "approval_id", t.ID(), "action", c.action)
	}
	fin.Decision, fin.Reason, fin.Latency = out.Verdict.String(), out.Reason, time.Since(c.start)
	r.approvalOutcomes.WithLabelValues(outcome).Inc()
	return out, r.appendAudit(ctx, fin)
}

// stopAbandoned is attrs.abandoned_because of a call ended because the
// router was stopping.
const stopAbandoned = "router_stopping"

// argsSummary is the arguments' JSON cut to argsSummaryLen bytes, between
// characters; "" for none.
func argsSummary(args map[string]any) string {
	if args == nil {
		return ""
	}
	b, _ := json.Marshal(args)
	if len(b) > argsSummaryLen {
		n := argsSummaryLen
		for n > 0 && !utf8.RuneStart(b[n]) {
			n--
		}
		b = append(b[:n:n], "…"...)
	}
	return string(b)
}

// withAttrs copies rec with its attributes and kv added.
func withAttrs(rec audit.Record, kv ...string) audit.Record {
	attrs := make(map[string]string, len(rec.Attrs)+len(kv)/2)
	for k, v := range rec.Attrs {
		attrs[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		attrs[kv[i]] = kv[i+1]
	}
	rec.Attrs = attrs
	return rec
}

// serveApprovals answers GET /admin/v1/approvals: the held calls, oldest
// first.
func (r *Router) serveApprovals(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"approvals": r.approvals.List()})
}

// serveApprovalDecision answers POST /admin/v1/approvals/{id}
// ?decision=approve|deny&by=<name>. A call is decided once: a second
// decision is 409, an id no held call has 404. The decision is written to
// the audit log by the held call itself, with who decided, before the
// call goes on.
func (r *Router) serveApprovalDecision(w http.ResponseWriter, req *http.Request) {
	id := req.PathValue("id")
	approve, by, err := approvalQuery(id, req.URL.RawQuery)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	p, err := r.approvals.Decide(id, approve, by)
	switch {
	case errors.Is(err, approval.ErrUnknown):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no call awaits approval " + id})
		return
	case errors.Is(err, approval.ErrDecided):
		writeJSON(w, http.StatusConflict, map[string]string{"error": "approval " + id + " is already decided (approved, denied, timed out or abandoned)"})
		return
	case errors.Is(err, approval.ErrNotApprover):
		writeJSON(w, http.StatusForbidden, map[string]any{"error": by + " is not one of the approvers of rule " + p.Rule, "approvers": p.Approvers})
		return
	case err != nil:
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	decision := "deny"
	if approve {
		decision = "approve"
	}
	r.log.Info("approval decided", "id", id, "action", p.Action, "decision", decision, "by", by)
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "action": p.Action, "rule": p.Rule, "decision": decision, "by": by})
}

// approvalQuery reads an approval decision: a well-formed id, and a query
// of exactly decision=approve|deny and by=<name>, each once.
func approvalQuery(id, rawQuery string) (approve bool, by string, err error) {
	if !approval.ValidID(id) {
		return false, "", errors.New("not an approval id: " + strconv.QuoteToASCII(cut(id, 64)))
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return false, "", err
	}
	for k, v := range q {
		switch {
		case k != "decision" && k != "by":
			return false, "", errors.New("unknown query parameter " + strconv.QuoteToASCII(cut(k, 64)) + "; takes decision and by")
		case len(v) != 1:
			return false, "", errors.New(k + " given more than once")
		}
	}
	switch q.Get("decision") {
	case "approve":
		approve = true
	case "deny":
	default:
		return false, "", errors.New("decision must be approve or deny")
	}
	by = q.Get("by")
	if err := approval.CheckName(by); err != nil {
		return false, "", err
	}
	return approve, by, nil
}

func cut(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
