// Package rpc is the JSON-RPC 2.0 surface kars's A2A front edge shares
// between the public gateway and the router's ingress: the envelope parser
// (strict JSON, untrusted input, fuzzed), the protocol version the
// A2A-Version header selects, the methods each version names, the refusal
// format, and the headers the gateway and the router exchange.
//
// The package is pure: no I/O beyond writing a refusal to an
// http.ResponseWriter.
package rpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/kars-io/kars/internal/strictjson"
)

// Headers. A2A-Version is the protocol's (A2A 1.0 "Service Parameters");
// the Kars-A2A-* headers are kars's.
const (
	// HeaderVersion selects the protocol version; empty means 0.3.
	HeaderVersion = "A2A-Version"
	// HeaderCallerCard carries the caller's signed AgentCard, base64url
	// (unpadded) of its JSON, from the caller to the gateway and from the
	// gateway to the router, which verifies it again.
	HeaderCallerCard = "Kars-A2A-Caller-Card"
	// Set by the gateway on the calls it forwards (the router trusts them
	// only over the gateway's pinned mTLS connection):
	HeaderCallerThumbprint = "Kars-A2A-Caller-Thumbprint"
	HeaderCallerSubject    = "Kars-A2A-Caller-Subject"
	HeaderCallerTrust      = "Kars-A2A-Caller-Trust"
	// HeaderGatewayLatency is the gateway's time on the call before
	// forwarding it, in microseconds.
	HeaderGatewayLatency = "Kars-A2A-Gateway-Latency"
	// Set by the router on its answers:
	// HeaderRouterLatency is the router's time to its decision (streams)
	// or to its answer, in microseconds.
	HeaderRouterLatency = "Kars-A2A-Router-Latency"
	// HeaderDecision is the router's audited decision (allow, deny,
	// refused, …), so the gateway's trust store can count denials.
	HeaderDecision = "Kars-A2A-Decision"
)

// Version is an A2A protocol version kars serves.
type Version uint8

// The versions, chosen by the A2A-Version header.
const (
	V03 Version = iota + 1
	V10
)

// String returns the version as the header spells it.
func (v Version) String() string {
	switch v {
	case V03:
		return "0.3"
	case V10:
		return "1.0"
	}
	return "unknown"
}

// ErrVersionNotSupported: the A2A-Version header names a version kars
// does not serve.
var ErrVersionNotSupported = errors.New("A2A-Version not supported (kars serves 1.0 and 0.3)")

// VersionOf maps an A2A-Version header value to a version. An empty or
// absent header means 0.3 (A2A 1.0, "Protocol Versioning": clients that
// send none are 0.3 clients); a patch level ("1.0.0") is ignored.
func VersionOf(header string) (Version, error) {
	h := strings.TrimSpace(header)
	if h == "" {
		return V03, nil
	}
	major, rest, _ := strings.Cut(h, ".")
	minor, _, _ := strings.Cut(rest, ".")
	switch major + "." + minor {
	case "0.3":
		return V03, nil
	case "1.0":
		return V10, nil
	}
	return 0, ErrVersionNotSupported
}

// Op is a JSON-RPC operation kars serves, whatever its version calls it.
type Op uint8

// The operations.
const (
	OpSendMessage Op = iota + 1
	OpSendStreamingMessage
	OpGetTask
	OpListTasks
	OpCancelTask
	OpSubscribeToTask
)

// String returns the A2A 1.0 method name.
func (o Op) String() string {
	switch o {
	case OpSendMessage:
		return "SendMessage"
	case OpSendStreamingMessage:
		return "SendStreamingMessage"
	case OpGetTask:
		return "GetTask"
	case OpListTasks:
		return "ListTasks"
	case OpCancelTask:
		return "CancelTask"
	case OpSubscribeToTask:
		return "SubscribeToTask"
	}
	return "unknown"
}

// Sends reports whether the operation hands a message to the agent.
func (o Op) Sends() bool { return o == OpSendMessage || o == OpSendStreamingMessage }

// Streams reports whether the answer is a Server-Sent Events stream.
func (o Op) Streams() bool { return o == OpSendStreamingMessage || o == OpSubscribeToTask }

// v10Methods are A2A 1.0's PascalCase names; push-notification config and
// the extended card are not served (no push, no extended card).
var v10Methods = map[string]Op{
	"SendMessage":          OpSendMessage,
	"SendStreamingMessage": OpSendStreamingMessage,
	"GetTask":              OpGetTask,
	"ListTasks":            OpListTasks,
	"CancelTask":           OpCancelTask,
	"SubscribeToTask":      OpSubscribeToTask,
}

// v03Methods are A2A 0.3's slash-separated names.
var v03Methods = map[string]Op{
	"message/send":      OpSendMessage,
	"message/stream":    OpSendStreamingMessage,
	"tasks/get":         OpGetTask,
	"tasks/cancel":      OpCancelTask,
	"tasks/resubscribe": OpSubscribeToTask,
}

// Lookup maps a method name of version v to its operation.
func Lookup(v Version, method string) (Op, bool) {
	var op Op
	var ok bool
	switch v {
	case V03:
		op, ok = v03Methods[method]
	case V10:
		op, ok = v10Methods[method]
	}
	return op, ok
}

// MaxMethodLen bounds a method name: longer ones are malformed, and the
// name goes into audit entries.
const MaxMethodLen = 64

// Envelope is a JSON-RPC 2.0 request (JSON-RPC 2.0 §4).
type Envelope struct {
	// ID is the request id as sent (a string or a number); A2A requests
	// are never notifications, so it is required.
	ID json.RawMessage
	// Method is the method name.
	Method string
	// Params is the params member, an object (or absent).
	Params json.RawMessage
}

// ParseEnvelope reads a JSON-RPC 2.0 request from body: strict JSON (no
// duplicate member, whose two readings would let the gateway route one
// method and the agent run another), an object with "jsonrpc":"2.0", a
// string "method" of printable ASCII, a string or number "id", an object
// "params" when present, and no other member. Batches are not accepted.
// When the body names an id the returned envelope carries it even on
// error, so that the refusal can echo it.
func ParseEnvelope(body []byte) (Envelope, error) {
	var env Envelope
	if err := strictjson.Validate(body); err != nil {
		return env, &Error{Code: CodeParseError, Message: "the body is not strict JSON: " + err.Error()}
	}
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&fields); err != nil || fields == nil {
		return env, &Error{Code: CodeInvalidRequest, Message: "the body must be one JSON-RPC 2.0 request object (batches are not accepted)"}
	}
	if _, err := dec.Token(); err != io.EOF {
		return env, &Error{Code: CodeInvalidRequest, Message: "trailing data after the request object"}
	}
	if id, ok := fields["id"]; ok && validID(id) {
		env.ID = id
	}
	bad := func(msg string) (Envelope, error) {
		return env, &Error{Code: CodeInvalidRequest, Message: msg}
	}
	for k := range fields {
		switch k {
		case "jsonrpc", "method", "params", "id":
		default:
			return bad(fmt.Sprintf("unknown member %q in the request", k))
		}
	}
	var ver string
	if json.Unmarshal(fields["jsonrpc"], &ver) != nil || ver != "2.0" {
		return bad(`"jsonrpc" must be "2.0"`)
	}
	if env.ID == nil {
		return bad(`"id" must be a string or a number (A2A requests are not notifications)`)
	}
	if json.Unmarshal(fields["method"], &env.Method) != nil || env.Method == "" {
		return bad(`"method" must be a non-empty string`)
	}
	if len(env.Method) > MaxMethodLen {
		return bad(fmt.Sprintf(`"method" is longer than %d bytes`, MaxMethodLen))
	}
	for i := 0; i < len(env.Method); i++ {
		if c := env.Method[i]; c <= 0x20 || c >= 0x7f {
			return bad(`"method" must be printable ASCII without spaces`)
		}
	}
	if p, ok := fields["params"]; ok {
		if len(p) == 0 || p[0] != '{' {
			return bad(`"params" must be an object`)
		}
		env.Params = p
	}
	return env, nil
}

// validID accepts the id forms JSON-RPC 2.0 §4 allows that A2A uses: a
// string or a number.
func validID(raw json.RawMessage) bool {
	if len(raw) == 0 {
		return false
	}
	switch c := raw[0]; {
	case c == '"':
		return true
	case c == '-' || (c >= '0' && c <= '9'):
		return true
	}
	return false
}

// JSON-RPC error codes: JSON-RPC 2.0 §5.1, A2A 1.0's (-32001 … -32009),
// and the HTTP-like codes the A2A Go SDK maps authentication failures to.
// CodeRateLimited is kars's, outside the ranges the two specifications
// reserve.
const (
	CodeParseError          = -32700
	CodeInvalidRequest      = -32600
	CodeMethodNotFound      = -32601
	CodeInvalidParams       = -32602
	CodeInternalError       = -32603
	CodeTaskNotFound        = -32001
	CodeUnsupportedOp       = -32004
	CodeVersionNotSupported = -32009
	CodeUnauthenticated     = -31401
	CodeUnauthorized        = -31403
	CodeRateLimited         = -31429
)

// Error is a JSON-RPC error object (JSON-RPC 2.0 §5.1). Reason, when set,
// is a stable kars code (kars_…) for the refusal, carried in data as a
// google.rpc.ErrorInfo of domain kars.io.
type Error struct {
	Code    int
	Message string
	Reason  string
}

// Error implements error.
func (e *Error) Error() string { return fmt.Sprintf("jsonrpc %d: %s", e.Code, e.Message) }

// errorResponse is the JSON-RPC 2.0 §5 response carrying an error.
type errorResponse struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Error   errorObject     `json:"error"`
}

type errorObject struct {
	Code    int         `json:"code"`
	Message string      `json:"message"`
	Data    []errorInfo `json:"data,omitempty"`
}

// errorInfo is a google.rpc.ErrorInfo detail, the form A2A 1.0 gives
// JSON-RPC error data (a list of typed details) and the SDKs decode.
type errorInfo struct {
	Type   string `json:"@type"`
	Reason string `json:"reason"`
	Domain string `json:"domain"`
}

// ErrorDomain names kars in the errors' details.
const ErrorDomain = "kars.io"

// Write sends e as a JSON-RPC error response for the request with id
// (nil: null) under HTTP status.
func (e *Error) Write(w http.ResponseWriter, status int, id json.RawMessage) {
	if id == nil {
		id = json.RawMessage("null")
	}
	resp := errorResponse{JSONRPC: "2.0", ID: id, Error: errorObject{Code: e.Code, Message: e.Message}}
	if e.Reason != "" {
		resp.Error.Data = []errorInfo{{Type: "type.googleapis.com/google.rpc.ErrorInfo", Reason: e.Reason, Domain: ErrorDomain}}
	}
	b, _ := json.Marshal(resp)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// Relay answers w with resp: the named headers, the status, and the body
// as it arrives, flushed after every read so that a Server-Sent Events
// stream reaches the caller event by event. It returns when the body ends
// or the caller goes away.
func Relay(w http.ResponseWriter, resp *http.Response, headers ...string) {
	for _, h := range headers {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	flusher, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if err != nil {
			return
		}
	}
}
