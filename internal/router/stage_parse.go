package router

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/kars-io/kars/internal/inference"
)

// MaxRequestBytes bounds an agent's request body. Vision requests with
// inline images are the largest legitimate bodies.
const MaxRequestBytes = 32 << 20

// agentCredentialHeaders are removed from every agent request before any
// other stage sees it: whatever the agent sends as a key is meaningless
// here and must never travel upstream.
var agentCredentialHeaders = []string{"Authorization", "Api-Key", "X-Api-Key", "Proxy-Authorization", "Cookie"}

// parseStage drops the agent's credentials, reads and parses the body, and
// selects the targets that can serve the call.
type parseStage struct{ r *Router }

func (parseStage) Name() string { return "parse" }

// bodyCopies is what a buffered request body costs the buffer budget: the
// body as received and the rewritten copy sent upstream.
const bodyCopies = 2

func (s parseStage) Serve(c *Call, next func(*Call)) {
	for _, h := range agentCredentialHeaders {
		c.R.Header.Del(h)
	}
	if c.Route.Op != inference.OpModels {
		body, release, err := s.r.readBounded(c.R.Body, c.R.ContentLength, MaxRequestBytes, bodyCopies, 0)
		if err == nil && !s.r.buffers.take(answerAllowance) {
			release()
			err = errNoBuffer
		} else if err == nil {
			c.release = append(c.release, s.r.giveAllowance)
		}
		if err != nil {
			var tooBig errTooLarge
			switch {
			case errors.As(err, &tooBig):
				// Close the connection rather than drain a body this big.
				c.W.Header().Set("Connection", "close")
				c.Refuse(&inference.APIError{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Code: "kars_body_too_large",
					Message: fmt.Sprintf("request body exceeds %d bytes", MaxRequestBytes)})
			case errors.Is(err, errNoBuffer):
				c.W.Header().Set("Retry-After", "1")
				c.W.Header().Set("Connection", "close")
				c.Refuse(errBusy("buffered request bytes"))
			default:
				c.Refuse(&inference.APIError{Status: http.StatusBadRequest, Type: "invalid_request_error", Code: "kars_body_unreadable",
					Message: "could not read the request body: " + err.Error()})
			}
			return
		}
		c.release = append(c.release, release)
		c.Body = body
		req, err := inference.ParseRequest(c.Route.Op, body)
		if err != nil {
			c.Refuse(&inference.APIError{Status: http.StatusBadRequest, Type: "invalid_request_error", Code: "kars_bad_request",
				Message: "invalid request: " + err.Error()})
			return
		}
		c.Req = req
	}
	for _, u := range c.Gen.upstreams {
		if c.Route.Op == inference.OpModels || u.Serves(c.Route.Dialect, c.Route.Op) {
			c.Candidates = append(c.Candidates, u)
		}
	}
	if len(c.Candidates) == 0 {
		c.Refuse(&inference.APIError{Status: http.StatusBadRequest, Type: "invalid_request_error", Code: "kars_no_target",
			Message: fmt.Sprintf("no model configured for this sandbox serves %s in the %s API; check the InferencePolicy's modelPreference", c.Route.Op, c.Route.Dialect)})
		return
	}
	next(c)
}
