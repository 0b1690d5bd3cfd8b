package router

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/inference"
)

// fetchStage decides what the request asks the provider to do on the
// agent's behalf — fetch a URL, search the web, call a remote MCP server,
// run a server-side tool (inference.ProviderFetches) — before the request
// is forwarded. Each is its own action (egress:, mcp:, tool:provider.),
// denied unless a rule allows it; the first one refused refuses the call
// and becomes the call's audited action and decision. Every decision is
// recorded in the call's audit entry.
type fetchStage struct{ r *Router }

func (fetchStage) Name() string { return "fetch" }

func (s fetchStage) Serve(c *Call, next func(*Call)) {
	if c.Route.Op == inference.OpModels || c.Route.Op == inference.OpEmbeddings || c.Route.Op == inference.OpCompletions {
		next(c) // these carry no content parts or tools
		return
	}
	fetches, err := inference.ProviderFetches(c.Route.Dialect, c.Route.Op, c.Body)
	if err != nil {
		msg := err.Error()
		if !errors.Is(err, inference.ErrFetchRefused) {
			msg = "kars could not read the request's provider-side fetches: " + msg
		}
		c.Refuse(&inference.APIError{Status: http.StatusBadRequest, Type: "invalid_request_error", Code: "kars_provider_fetch_ungovernable", Message: msg})
		return
	}
	for i, f := range fetches {
		d := c.Gen.gov.Decide(&governance.Request{Agent: c.Gen.agent, Action: f.Action})
		s.r.metrics.decided(d.Verdict)
		c.Fetches = append(c.Fetches, fetchDecision{Fetch: f, Decision: d})
		if d.Allowed() {
			continue
		}
		c.Action, c.Decision = f.Action, d
		status, typ, code := http.StatusForbidden, "permission_denied", "kars_policy_denied"
		switch d.Verdict {
		case governance.RateLimited:
			status, typ, code = http.StatusTooManyRequests, "rate_limit_exceeded", "kars_policy_rate_limited"
		case governance.RequireApproval:
			code = "kars_policy_requires_approval"
		}
		c.Refuse(&inference.APIError{Status: status, Type: typ, Code: code, Retryable: status == http.StatusTooManyRequests,
			Message: "kars policy: the request asks the provider to act for the agent (" + f.Where + "), and " + f.Action +
				" is " + d.Verdict.String() + " (rule " + ruleName(d) + "): " + d.Reason + " [provider-side fetch " + strconv.Itoa(i+1) + " of " + strconv.Itoa(len(fetches)) + "]"})
		return
	}
	next(c)
}

// fetchDecision is one provider-side action and what policy said of it.
type fetchDecision struct {
	inference.Fetch
	Decision governance.Decision
}

func ruleName(d governance.Decision) string {
	if d.Rule == "" {
		return "none"
	}
	return d.Rule
}
