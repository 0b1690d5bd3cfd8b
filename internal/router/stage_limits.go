package router

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"

	"github.com/kars-io/kars/internal/budget"
	"github.com/kars-io/kars/internal/inference"
)

// worstCase is the reservation for a call: the prompt estimate plus the
// completion cap the agent set (or the budget's default reserve) for each
// completion the upstream generates (n, best_of).
func worstCase(c *Call) int64 {
	switch c.Route.Op {
	case inference.OpModels:
		return 0
	case inference.OpEmbeddings:
		return c.Req.PromptEstimate
	}
	completion := c.Req.MaxTokens
	if completion == 0 {
		completion = c.Gen.snap.Config.Budget.Reserve()
	}
	return c.Req.PromptEstimate + completion*max(c.Req.Choices, 1)
}

// outputCap is the completion cap the router adds to a forwarded body that
// sets none, or 0. A background response answers before it is generated,
// so the router never sees its usage: it is charged its reservation, and
// the cap keeps the provider within what was charged.
func outputCap(c *Call) int64 {
	if c.Req.Background && c.Req.MaxTokens == 0 {
		return c.Gen.snap.Config.Budget.Reserve()
	}
	return 0
}

// charge is what a call costs the budget. An upstream's reported usage is
// the truth. A successful answer without usage — a provider that omits it,
// a background response, a stream cut before its usage event — and a call
// the agent abandoned after it went upstream (where generation may go on)
// are charged the larger of the reservation and what the router metered
// itself, so that no answer is free; the audit entry says
// usage_charged=reserved. Refusals and upstream errors cost what was
// metered (0 for a refusal).
func charge(c *Call, reserved int64) int64 {
	switch {
	case c.Usage.Reported:
		return c.Usage.Total()
	case c.Status == 499 && c.Attempts > 0,
		c.Upstream != "" && c.Status >= 200 && c.Status < 300:
		return max(reserved, c.Usage.Total())
	}
	return c.Usage.Total()
}

// refuseExceeded answers 429 naming the budget, with Retry-After.
func refuseExceeded(c *Call, e *budget.ExceededError) {
	typ, retryable := "insufficient_quota", false
	if e.Budget == "rpm" || e.Budget == "tpm" {
		typ, retryable = "rate_limit_exceeded", e.RetryAfter > 0
	}
	if e.RetryAfter > 0 {
		c.W.Header().Set("Retry-After", strconv.FormatInt(int64(math.Ceil(e.RetryAfter.Seconds())), 10))
	}
	c.Refuse(&inference.APIError{Status: http.StatusTooManyRequests, Type: typ, Retryable: retryable,
		Code:    "kars_budget_" + e.Budget,
		Message: fmt.Sprintf("kars %s for sandbox %s", e.Error(), c.Gen.sandbox)})
}

// rateLimitStage enforces rpm and tpm. Tokens taken here are settled to the
// call's usage afterwards.
type rateLimitStage struct{ r *Router }

func (rateLimitStage) Name() string { return "ratelimit" }

func (s rateLimitStage) Serve(c *Call, next func(*Call)) {
	n := worstCase(c)
	if err := s.r.limiter.Allow(n); err != nil {
		var e *budget.ExceededError
		if errors.As(err, &e) {
			refuseExceeded(c, e)
			return
		}
	}
	c.RateTokens = n
	c.onFinish(s)
	next(c)
}

// finish settles the tokens taken to the call's usage.
func (s rateLimitStage) finish(c *Call) { s.r.limiter.Settle(c.RateTokens, charge(c, c.RateTokens)) }

// budgetStage reserves the worst case against the per-request, daily and
// monthly budgets before forwarding, and settles to the upstream's usage
// after. Every operation passes through it, streams included.
type budgetStage struct{ r *Router }

func (budgetStage) Name() string { return "budget" }

func (s budgetStage) Serve(c *Call, next func(*Call)) {
	res, err := s.r.ledger.Reserve(worstCase(c))
	if err != nil {
		var e *budget.ExceededError
		if errors.As(err, &e) {
			refuseExceeded(c, e)
			return
		}
	}
	c.Reservation = res
	c.onFinish(s)
	next(c)
}

// finish settles the reservation to the call's usage.
func (s budgetStage) finish(c *Call) {
	c.Reservation.Settle(charge(c, c.Reservation.Tokens()))
	s.r.metrics.budget(s.r.ledger.State())
}
