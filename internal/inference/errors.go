package inference

import (
	"encoding/json"
	"net/http"
)

// APIError is an error the router itself answers with, rendered in the
// agent's dialect so that its SDK raises the matching exception class.
type APIError struct {
	Status int
	// Type is the OpenAI error type (invalid_request_error,
	// insufficient_quota, rate_limit_exceeded, permission_denied, ...).
	Type string
	// Code is a stable machine-readable code, prefixed "kars_" for the
	// router's own conditions (kars_budget_daily, kars_policy_denied, ...).
	Code    string
	Message string
	// Retryable tells SDKs whether retrying can help. When false the
	// router sends "x-should-retry: false", which the OpenAI and Anthropic
	// SDKs honour, so an exhausted daily budget is not hammered.
	Retryable bool
}

// Error implements error.
func (e *APIError) Error() string { return e.Message }

// Body renders the error body in dialect d.
func (e *APIError) Body(d Dialect) []byte {
	var v any
	if d == DialectAnthropic {
		v = map[string]any{"type": "error", "error": map[string]any{"type": anthropicErrorType(e.Status), "message": e.Message}}
	} else {
		v = map[string]any{"error": map[string]any{"message": e.Message, "type": e.Type, "param": nil, "code": e.Code}}
	}
	b, _ := json.Marshal(v)
	return b
}

// Write sends the error as a complete JSON response.
func (e *APIError) Write(w http.ResponseWriter, d Dialect) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if !e.Retryable {
		h.Set("X-Should-Retry", "false")
	}
	w.WriteHeader(e.Status)
	w.Write(e.Body(d))
}

// anthropicErrorType maps a status to the Messages API error type.
func anthropicErrorType(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "invalid_request_error"
	case http.StatusUnauthorized:
		return "authentication_error"
	case http.StatusForbidden:
		return "permission_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusTooManyRequests:
		return "rate_limit_error"
	case http.StatusServiceUnavailable, 529:
		return "overloaded_error"
	}
	return "api_error"
}
