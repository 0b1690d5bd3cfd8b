package v03

import (
	"errors"
	"maps"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/errordetails"
)

// codes are the JSON-RPC error codes of the a2a sentinels, in the order
// they are matched (an error wrapping two takes the first): JSON-RPC 2.0
// §5.1's, A2A 0.3's (-32001 … -32007, 0.3 §8.2), the two A2A 1.0 added,
// and the HTTP-like codes the A2A Go SDK gives authentication failures
// (kars's gateway and clients read those from 0.3 answers too).
var codes = []struct {
	err  error
	code int
}{
	{a2a.ErrTaskNotFound, -32001},
	{a2a.ErrTaskNotCancelable, -32002},
	{a2a.ErrPushNotificationNotSupported, -32003},
	{a2a.ErrUnsupportedOperation, -32004},
	{a2a.ErrUnsupportedContentType, -32005},
	{a2a.ErrInvalidAgentResponse, -32006},
	{a2a.ErrExtendedCardNotConfigured, -32007},
	{a2a.ErrExtensionSupportRequired, -32008},
	{a2a.ErrVersionNotSupported, -32009},
	{a2a.ErrUnauthenticated, -31401},
	{a2a.ErrUnauthorized, -31403},
	{a2a.ErrParseError, -32700},
	{a2a.ErrInvalidRequest, -32600},
	{a2a.ErrMethodNotFound, -32601},
	{a2a.ErrInvalidParams, -32602},
	{a2a.ErrServerError, -32000},
	{a2a.ErrInternalError, -32603},
}

// rpcError is a JSON-RPC error object (JSON-RPC 2.0 §5.1). Its data is
// the list of typed details the A2A Go SDK writes on both of its JSON-RPC
// bindings (the struct of the error's details, then a google.rpc.ErrorInfo
// naming the A2A reason), so that 0.3 answers read as they did when the
// SDK served them.
type rpcError struct {
	Code    int                   `json:"code"`
	Message string                `json:"message"`
	Data    []*errordetails.Typed `json:"data,omitempty"`
}

// toRPCError maps err to its JSON-RPC error; an error that wraps no a2a
// sentinel is an internal error.
func toRPCError(err error, now time.Time) *rpcError {
	out := &rpcError{Code: -32603, Message: err.Error()}
	reason := "INTERNAL_ERROR"
	for _, c := range codes {
		if errors.Is(err, c.err) {
			out.Code, reason = c.code, a2a.ErrorReason(c.err)
			break
		}
	}
	meta := map[string]string{"timestamp": now.UTC().Format(time.RFC3339)}
	var ae *a2a.Error
	if errors.As(err, &ae) {
		if len(ae.Details) > 0 {
			out.Data = append(out.Data, errordetails.NewFromStruct(ae.Details))
		}
		for _, d := range ae.TypedDetails {
			if d.TypeURL != errordetails.ErrorInfoType {
				out.Data = append(out.Data, d)
				continue
			}
			// The error's own ErrorInfo lends its metadata to the one
			// written here, which names the reason the code stands for.
			// (a2a.Error.WithErrorInfoMeta stores a map[string]string.)
			if m, ok := d.Value["metadata"].(map[string]string); ok {
				maps.Copy(meta, m)
			}
		}
	}
	out.Data = append(out.Data, errordetails.NewErrorInfo(reason, a2a.ProtocolDomain, meta))
	return out
}
