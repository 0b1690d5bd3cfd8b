// Package v03 serves A2A 0.3's JSON-RPC binding (A2A specification 0.3,
// §7 methods, §6 data objects, §8 errors) over the v1 request handler of
// the official Go SDK (a2asrv.RequestHandler), the one kars's A2A 1.0
// binding calls: it translates 0.3 requests to v1 types, v1 results and
// events back to 0.3's shapes ("kind" discriminators, lowercase roles and
// task states, "final" on status updates), and a2a errors to 0.3's
// JSON-RPC codes.
//
// It exists so that kars-router does not link the SDK's a2av0 package,
// which brings the v0 SDK, gRPC and generated protobuf code into the
// binary and their init-touched pages into its resident memory. This
// package must not import a2av0, the v0 SDK (github.com/a2aproject/a2a-go
// v0) or google.golang.org/grpc; cmd/kars-router's dependency test checks
// the router.
//
// Served: message/send, message/stream, tasks/get, tasks/cancel and
// tasks/resubscribe. The push-notification config methods are answered
// with PushNotificationNotSupportedError (0.3 §7.5: kars has no push),
// and agent/getAuthenticatedExtendedCard with the handler's error, or
// UnsupportedOperationError when the handler has a card (this binding
// does not carry 0.3's card shape).
package v03

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"iter"
	"net/http"
	"strings"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2asrv"
)

// MaxBodyBytes bounds a request body. kars's ingress caps bodies far
// lower, per sandbox, before this handler reads them; the bound keeps the
// handler safe where it is used alone.
const MaxBodyBytes = 8 << 20

// NewHandler returns the 0.3 JSON-RPC binding of h.
func NewHandler(h a2asrv.RequestHandler) http.Handler {
	return &handler{h: h, now: time.Now}
}

type handler struct {
	h   a2asrv.RequestHandler
	now func() time.Time
}

// response is a JSON-RPC 2.0 response (§5): a result or an error.
type response struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Result  any             `json:"result,omitempty"`
	Error   *rpcError       `json:"error,omitempty"`
}

// ServeHTTP implements http.Handler.
func (hd *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, _ := a2asrv.NewCallContext(r.Context(), serviceParams(r.Header))
	if r.Method != http.MethodPost {
		hd.writeJSON(w, response{Error: toRPCError(fmt.Errorf("%w: JSON-RPC calls are POSTed", a2a.ErrInvalidRequest), hd.now())})
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		hd.writeJSON(w, response{Error: toRPCError(fmt.Errorf("%w: reading the body: %v", a2a.ErrInvalidRequest, err), hd.now())})
		return
	}
	c, err := parse(body)
	if streams(c.method) {
		hd.stream(ctx, w, c, err)
		return
	}
	var result any
	if err == nil {
		result, err = hd.answer(ctx, c)
	}
	resp := response{ID: c.id, Result: result}
	if err != nil {
		resp.Result, resp.Error = nil, toRPCError(err, hd.now())
	}
	hd.writeJSON(w, resp)
}

// answer runs a call whose answer is one response.
func (hd *handler) answer(ctx context.Context, c call) (any, error) {
	switch p := c.params.(type) {
	case *a2a.SendMessageRequest:
		res, err := hd.h.SendMessage(ctx, p)
		if err != nil {
			return nil, err
		}
		return fromEvent(res)
	case *a2a.GetTaskRequest:
		t, err := hd.h.GetTask(ctx, p)
		if err != nil {
			return nil, err
		}
		return fromTask(t)
	case *a2a.CancelTaskRequest:
		t, err := hd.h.CancelTask(ctx, p)
		if err != nil {
			return nil, err
		}
		return fromTask(t)
	}
	switch c.method {
	case MethodExtendedCard:
		if _, err := hd.h.GetExtendedAgentCard(ctx, &a2a.GetExtendedAgentCardRequest{}); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: the authenticated extended card is not served over A2A 0.3 here", a2a.ErrUnsupportedOperation)
	case MethodPushSet, MethodPushGet, MethodPushList, MethodPushDelete:
		return nil, a2a.ErrPushNotificationNotSupported
	}
	return nil, fmt.Errorf("%w: %s has no handler", a2a.ErrInternalError, c.method)
}

// stream answers a streaming call with Server-Sent Events, one JSON-RPC
// response per event (0.3 §7.2), errors included: a call that fails
// before its first event gets the error as the stream's only event. The
// status line and headers go with the first event, so that they follow
// the handler's decision on the call (kars audits the call when its
// answer starts).
func (hd *handler) stream(ctx context.Context, w http.ResponseWriter, c call, err error) {
	f, ok := w.(http.Flusher)
	if !ok {
		hd.writeJSON(w, response{ID: c.id, Error: toRPCError(fmt.Errorf("%w: the connection cannot stream", a2a.ErrInternalError), hd.now())})
		return
	}
	started := false
	start := func() {
		if !started {
			started = true
			h := w.Header()
			h.Set("Content-Type", "text/event-stream")
			h.Set("Cache-Control", "no-cache")
			h.Set("X-Accel-Buffering", "no")
			w.WriteHeader(http.StatusOK)
		}
	}
	send := func(resp response) bool {
		resp.JSONRPC, resp.ID = "2.0", c.id
		b, err := json.Marshal(resp)
		if err != nil {
			b, _ = json.Marshal(response{JSONRPC: "2.0", ID: c.id, Error: toRPCError(fmt.Errorf("%w: encoding an event: %v", a2a.ErrInternalError, err), hd.now())})
		}
		start()
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return false
		}
		f.Flush()
		return true
	}
	if err != nil {
		send(response{Error: toRPCError(err, hd.now())})
		return
	}
	var events iter.Seq2[a2a.Event, error]
	switch p := c.params.(type) {
	case *a2a.SendMessageRequest:
		events = hd.h.SendStreamingMessage(ctx, p)
	case *a2a.SubscribeToTaskRequest:
		events = hd.h.SubscribeToTask(ctx, p)
	default:
		send(response{Error: toRPCError(fmt.Errorf("%w: %s has no handler", a2a.ErrInternalError, c.method), hd.now())})
		return
	}
	// The events are written as the handler yields them; a caller gone
	// away (a failed write) ends the iteration, and with it the handler's
	// subscription.
	for ev, err := range events {
		var out any
		if err == nil {
			out, err = fromEvent(ev)
		}
		if err != nil {
			send(response{Error: toRPCError(err, hd.now())})
			return
		}
		if !send(response{Result: out}) {
			return
		}
	}
	// A stream the handler ended without an event is still a stream.
	start()
}

func (hd *handler) writeJSON(w http.ResponseWriter, resp response) {
	resp.JSONRPC = "2.0"
	b, err := json.Marshal(resp)
	if err != nil {
		b, _ = json.Marshal(response{JSONRPC: "2.0", ID: resp.ID, Error: toRPCError(fmt.Errorf("%w: encoding the answer: %v", a2a.ErrInternalError, err), hd.now())})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(append(b, '\n'))
}

// serviceParams are the request's headers as A2A service parameters
// (lowercase names). 0.3 clients name the extensions header
// X-A2A-Extensions; 1.0 calls it A2A-Extensions.
func serviceParams(h http.Header) *a2asrv.ServiceParams {
	legacy := "x-" + strings.ToLower(a2a.SvcParamExtensions)
	m := make(map[string][]string, len(h))
	for k, v := range h {
		k = strings.ToLower(k)
		if k == legacy {
			k = strings.ToLower(a2a.SvcParamExtensions)
		}
		m[k] = v
	}
	return a2asrv.NewServiceParams(m)
}
