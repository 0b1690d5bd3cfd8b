package router

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/inference"
	"github.com/kars-io/kars/internal/strictjson"
)

// DecidePath is the agent API endpoint where an agent asks whether it may
// perform an action before it performs it (runtime contract v1, "Tool
// calls are decided by the router").
const DecidePath = "/kars/v1/decide"

// MaxDecideBytes bounds a decide request body.
const MaxDecideBytes = 64 << 10

// DecideRule names the pseudo-rule of decide requests refused before the
// governance engine saw them (a malformed body or action).
const DecideRule = "kars-decide"

// Decision is the decide endpoint's answer.
type Decision struct {
	// Decision is allow, deny, require_approval or rate_limited.
	Decision string `json:"decision"`
	Rule     string `json:"rule"`
	Reason   string `json:"reason"`
}

// decideRequest is a parsed decide body.
type decideRequest struct {
	action string
	args   map[string]any
	// payload is the SHA-256 of the args exactly as sent, or empty.
	payload string
	// await asks the router to hold a require_approval decision until a
	// person decides it (approvals.go), and answer allow or deny then.
	await bool
}

// badDecide is a decide body the router refuses; action reports whether
// the body named an action (which is then audited as denied).
type badDecide struct {
	msg    string
	action bool
}

func (e *badDecide) Error() string { return e.msg }

// parseDecide reads {"action":"<namespace>:<name>","args":{...}}. The
// action must be well formed (governance.CheckAction) and outside the
// inference namespace, which only the router itself decides; args, when
// present and not null, must be a JSON object. Any other member is an
// error, so that a misspelt field cannot pass unnoticed.
func parseDecide(body []byte) (decideRequest, error) {
	var req decideRequest
	// Strict JSON: a repeated "action" or argument would be read one way
	// here and perhaps another by the tool that acts on the allow.
	if err := strictjson.Validate(body); err != nil {
		return req, &badDecide{msg: `the body must be a JSON object {"action":"tool:<name>","args":{...}} in strict JSON: ` + err.Error()}
	}
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&fields); err != nil || fields == nil {
		return req, &badDecide{msg: `the body must be a JSON object {"action":"tool:<name>","args":{...}}`}
	}
	if _, err := dec.Token(); err != io.EOF {
		return req, &badDecide{msg: "trailing data after the JSON object"}
	}
	rawAction, ok := fields["action"]
	if !ok {
		return req, &badDecide{msg: `"action" is required, for example "tool:web_search"`}
	}
	if err := json.Unmarshal(rawAction, &req.action); err != nil {
		return req, &badDecide{msg: `"action" must be a string, for example "tool:web_search"`}
	}
	// From here on the body named an action, so a refusal is audited.
	for k := range fields {
		if k != "action" && k != "args" && k != "awaitApproval" {
			return req, &badDecide{msg: fmt.Sprintf("unknown member %q: the body has only \"action\", \"args\" and \"awaitApproval\"", k), action: true}
		}
	}
	if raw, ok := fields["awaitApproval"]; ok && json.Unmarshal(raw, &req.await) != nil {
		return req, &badDecide{msg: `"awaitApproval" must be true or false`, action: true}
	}
	if rawArgs, ok := fields["args"]; ok {
		req.payload = payloadHash(rawArgs)
		if !bytes.Equal(rawArgs, []byte("null")) {
			// Unmarshalling anything but an object into a map fails.
			if json.Unmarshal(rawArgs, &req.args) != nil {
				return req, &badDecide{msg: `"args" must be a JSON object`, action: true}
			}
		}
	}
	ns, bad := governance.CheckAction(req.action)
	if bad != "" {
		return req, &badDecide{msg: bad, action: true}
	}
	if ns == governance.NSInference {
		return req, &badDecide{msg: "inference actions are decided by the router on its inference API; " +
			"decide takes tool:, mcp:, shell:, memory:, spawn:, mesh:, a2a: and egress: actions", action: true}
	}
	return req, nil
}

// auditedAction bounds an action for the audit entry of a refusal: a
// malformed action may be long, and the audit log is no place for a payload
// smuggled in its name.
func auditedAction(a string) string {
	if len(a) <= governance.MaxActionLen {
		return a
	}
	return a[:governance.MaxActionLen] + "…"
}

// serveDecide answers POST /kars/v1/decide. It asks the same decision
// provider as inference — the behaviour monitor's Guard in front of the
// governance engine, with the engine's rule and sandbox rate limits — for
// the sandbox's agent, and appends exactly one audit entry, durably, before
// it answers: an agent acts on an allow only once the allow is on record.
// Every failure answers an error status, which the runtime contract tells
// the agent to treat as a denial.
func (r *Router) serveDecide(w http.ResponseWriter, req *http.Request) {
	start := time.Now()
	g := r.gen.Load()
	done, ok := r.admit(w, inference.DialectOpenAI)
	if !ok {
		return
	}
	defer done()
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		r.decideError(w, g, start, http.StatusMethodNotAllowed, "kars_method_not_allowed", DecidePath+" takes POST", "refused")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, MaxDecideBytes))
	if err != nil {
		msg := "could not read the request body: " + err.Error()
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			msg = fmt.Sprintf("the request body exceeds %d bytes", MaxDecideBytes)
		}
		r.decideError(w, g, start, http.StatusBadRequest, "kars_bad_request", msg, "refused")
		return
	}
	dr, err := parseDecide(body)
	rec := audit.Record{Sandbox: g.sandbox, Agent: g.agent, Action: auditedAction(dr.action),
		PayloadSHA256: dr.payload, Attrs: map[string]string{"op": "decide"}}
	var bad *badDecide
	if errors.As(err, &bad) {
		label := "refused"
		if bad.action {
			label = "deny"
			// A refused request is a denial: audit it, and let the
			// behaviour monitor count it.
			d := governance.Decision{Verdict: governance.Deny, Rule: DecideRule, Reason: bad.msg}
			g.monitor.ObserveDecision(g.agent, d)
			rec.Decision, rec.Rule, rec.Reason, rec.Latency = "deny", DecideRule, bad.msg, time.Since(start)
			rec.Attrs["status"] = strconv.Itoa(http.StatusBadRequest)
			r.appendAudit(req.Context(), rec)
		}
		r.decideError(w, g, start, http.StatusBadRequest, "kars_bad_request", "invalid decide request: "+bad.msg, label)
		return
	}
	if r.auditFailing.Load() {
		// Fail closed without deciding; the refusal's own entry probes
		// whether the log is back.
		msg := "kars-router cannot write its audit log, so it decides nothing until it can"
		rec.Decision, rec.Reason, rec.Latency = "refused", msg, time.Since(start)
		rec.Attrs["status"] = strconv.Itoa(http.StatusServiceUnavailable)
		r.appendAudit(req.Context(), rec)
		r.decideError(w, g, start, http.StatusServiceUnavailable, "kars_audit_unavailable", msg, "refused")
		return
	}
	d := g.gov.Decide(&governance.Request{Agent: g.agent, Action: dr.action, Args: dr.args})
	verdict := d.Verdict.String()
	r.metrics.decisions.WithLabelValues(verdict).Inc()
	rec.Decision, rec.Rule, rec.Reason, rec.Latency = verdict, d.Rule, d.Reason, time.Since(start)
	rec.Attrs["status"] = strconv.Itoa(http.StatusOK)
	if d.Verdict == governance.RequireApproval && dr.await {
		// Held until a person decides; the pending and the final entries
		// are durable when it returns (approvals.go).
		d, err = r.holdForApproval(req.Context(), g, held{start: start, action: dr.action, payload: dr.payload, args: dr.args}, d, rec)
		verdict = d.Verdict.String()
	} else {
		err = r.appendAudit(req.Context(), rec)
	}
	if err != nil {
		// Not on record, so not decided: the agent must not act on it.
		r.decideError(w, g, start, http.StatusServiceUnavailable, "kars_audit_unavailable",
			"kars-router could not write the decision to its audit log: "+err.Error(), "refused")
		return
	}
	b, _ := json.Marshal(Decision{Decision: verdict, Rule: d.Rule, Reason: d.Reason})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(append(b, '\n'))
	r.decideObserved(req, g, dr.action, verdict, d.Rule, http.StatusOK, dr.payload, start)
}

// decideError answers a decide request with an error in the OpenAI error
// shape the rest of the agent API uses.
func (r *Router) decideError(w http.ResponseWriter, g *generation, start time.Time, status int, code, msg, decision string) {
	typ := "invalid_request_error"
	if status >= 500 {
		typ = "server_error"
	}
	(&inference.APIError{Status: status, Type: typ, Code: code, Message: msg}).Write(w, inference.DialectOpenAI)
	r.metrics.requests.WithLabelValues("decide", "", strconv.Itoa(status), decision).Inc()
	r.metrics.duration.WithLabelValues("decide").Observe(time.Since(start).Seconds())
	r.log.Info("decide refused", "sandbox", g.sandbox, "status", status, "code", code, "reason", msg)
}

// decideObserved updates metrics and logs one line for an answered decide.
func (r *Router) decideObserved(req *http.Request, g *generation, action, verdict, rule string, status int, payload string, start time.Time) {
	lat := time.Since(start)
	r.metrics.requests.WithLabelValues("decide", "", strconv.Itoa(status), verdict).Inc()
	r.metrics.duration.WithLabelValues("decide").Observe(lat.Seconds())
	r.log.LogAttrs(req.Context(), slog.LevelInfo, "decide",
		slog.String("action", action), slog.String("decision", verdict), slog.String("rule", rule),
		slog.Duration("latency", lat), slog.String("payload_sha256", payload))
}
