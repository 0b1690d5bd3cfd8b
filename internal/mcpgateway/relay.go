package mcpgateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/kars-io/kars/internal/strictjson"
)

// The relay is the gateway's direct path for tools/call, the one message
// whose cost matters. The SDK's handler builds a server session for every
// stateless POST and its client re-encodes the call through a JSON-RPC
// connection; both cost more than the policy decision and the durable
// audit entry together. The relay reads the agent's request, runs the very
// same admission (admit: allowlist, argument checks, policy, audit) and
// posts the call to the server on the router's session (its session id,
// negotiated revision and credential), then hands the server's result to
// the agent as the server wrote it.
//
// It takes only what it can answer exactly as the SDK would: one JSON-RPC
// request (no batch) with method tools/call, a protocol revision the SDK
// serves, the headers the SDK requires, and params with no member the
// relay does not know. Anything else — initialize, tools/list, pings,
// malformed or unusual requests — goes to the SDK's handler, which
// answers or refuses it. Toward the server likewise: the SSE transport, a
// tool whose schema asks for Mcp-Param headers, or a session the SDK has
// not negotiated go through the SDK client.

// relayVersions are the revisions whose tools/call the relay answers.
var relayVersions = []string{"2025-03-26", "2025-06-18", "2025-11-25", modernProtocol}

// maxResultBytes bounds a tool result the relay reads from a server.
const maxResultBytes = 32 << 20

// relayRequest is a tools/call as the relay reads it.
type relayRequest struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params"`
}

type relayParams struct {
	Name      string          `json:"name"`
	Arguments json.RawMessage `json:"arguments"`
	Meta      json.RawMessage `json:"_meta"`
}

// readRelayRequest decides whether the relay can take r, whose body is
// body: it returns the request's id, tool name and raw arguments, and
// ok=false for anything it leaves to the SDK.
func readRelayRequest(r *http.Request, body []byte) (id json.RawMessage, name string, args json.RawMessage, ok bool) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return nil, "", nil, false
	}
	if !acceptsBoth(r.Header.Values("Accept")) {
		return nil, "", nil, false
	}
	pv := r.Header.Get("Mcp-Protocol-Version")
	if !slices.Contains(relayVersions, pv) {
		return nil, "", nil, false
	}
	if local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr); local != nil && loopbackAddr(local.String()) && !loopbackAddr(r.Host) {
		return nil, "", nil, false // the SDK's DNS rebinding guard answers
	}
	if strictjson.Validate(body) != nil {
		return nil, "", nil, false
	}
	var req relayRequest
	if decodeKnown(body, &req) != nil || req.JSONRPC != "2.0" || req.Method != "tools/call" || !validID(req.ID) {
		return nil, "", nil, false
	}
	var p relayParams
	if decodeKnown(req.Params, &p) != nil || p.Name == "" {
		return nil, "", nil, false
	}
	if pv >= modernProtocol {
		// 2026-07-28: the standard headers must match the body, and the
		// request carries its revision in _meta.
		if r.Header.Get("Mcp-Method") != "tools/call" || r.Header.Get("Mcp-Name") != p.Name {
			return nil, "", nil, false
		}
		var meta map[string]json.RawMessage
		if json.Unmarshal(p.Meta, &meta) != nil || string(meta[mcp.MetaKeyProtocolVersion]) != strconv.Quote(pv) {
			return nil, "", nil, false
		}
		// The SDK requires clientCapabilities and reads clientInfo; the
		// relay takes the request only when both are well-formed objects
		// (the gateway declares and uses no client capability).
		var caps map[string]json.RawMessage
		if json.Unmarshal(meta[mcp.MetaKeyClientCapabilities], &caps) != nil || caps == nil {
			return nil, "", nil, false
		}
		if info, ok := meta[mcp.MetaKeyClientInfo]; ok {
			var impl mcp.Implementation
			if decodeKnown(info, &impl) != nil || impl.Name == "" {
				return nil, "", nil, false
			}
		}
	} else if len(p.Meta) > 0 {
		return nil, "", nil, false
	}
	return req.ID, p.Name, p.Arguments, true
}

func decodeKnown(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("trailing data")
	}
	return nil
}

// validID accepts a JSON-RPC id the relay echoes: a string or an integer.
func validID(id json.RawMessage) bool {
	if len(id) == 0 {
		return false
	}
	if id[0] == '"' {
		var s string
		return json.Unmarshal(id, &s) == nil
	}
	_, err := strconv.ParseInt(string(id), 10, 64)
	return err == nil
}

func acceptsBoth(values []string) bool {
	var jsonOK, streamOK bool
	for _, v := range values {
		for _, raw := range strings.Split(v, ",") {
			base, _, _ := strings.Cut(strings.TrimSpace(raw), ";")
			switch strings.ToLower(strings.TrimSpace(base)) {
			case "application/json", "application/*":
				jsonOK = true
			case "text/event-stream", "text/*":
				streamOK = true
			case "*/*":
				jsonOK, streamOK = true, true
			}
		}
	}
	return jsonOK && streamOK
}

// loopbackAddr reports whether a host or host:port names the loopback.
func loopbackAddr(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// relay answers one tools/call the agent posted, or reports false, with
// r.Body intact, for the SDK to handle.
func (s *server) relay(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodPost || r.Body == nil {
		return false
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxRequestBytes+1))
	r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil || len(body) > MaxRequestBytes {
		return false
	}
	id, name, args, ok := readRelayRequest(r, body)
	if !ok {
		return false
	}
	agentModern := r.Header.Get("Mcp-Protocol-Version") >= modernProtocol
	ctx := r.Context()
	c, d, durable, res, err := s.admit(ctx, name, args)
	if c == nil {
		if res != nil {
			s.writeResult(w, id, s.ownResult(res, agentModern))
		} else {
			writeRPCError(w, id, err, agentModern)
		}
		return true
	}
	raw, upModern, err := s.up.relayCall(ctx, name, args)
	if errors.Is(err, errNoRelay) {
		// The server's side needs the SDK client; the answer is the same.
		var up *mcp.CallToolResult
		up, upModern, err = s.up.callTool(ctx, name, args)
		if err == nil {
			raw, err = json.Marshal(up)
		}
	}
	if err != nil {
		err = s.agentError(err)
		writeRPCError(w, id, s.settle(c, d, durable, OutcomeUpstreamError, err), agentModern)
		return true
	}
	var head struct {
		IsError    bool   `json:"isError"`
		ResultType string `json:"resultType"`
		Meta       struct {
			ServerInfo json.RawMessage `json:"io.modelcontextprotocol/serverInfo"`
		} `json:"_meta"`
	}
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &head) != nil {
		err := &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: "kars MCP gateway: the MCP server " + s.cfg.Name + " answered a result that is not a JSON object"}
		writeRPCError(w, id, s.settle(c, d, durable, OutcomeUpstreamError, err), agentModern)
		return true
	}
	if head.ResultType != "" && head.ResultType != "complete" {
		// input_required (SEP-2322): the gateway relays no
		// server-to-client requests.
		if err := s.settle(c, d, durable, OutcomeToolError, nil); err != nil {
			writeRPCError(w, id, err, agentModern)
			return true
		}
		s.writeResult(w, id, s.ownResult(&mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{
			Text: "the MCP server " + s.cfg.Name + " asked for client input (sampling or elicitation), which the kars gateway does not relay"}}}, agentModern))
		return true
	}
	outcome := OutcomeOK
	if head.IsError {
		outcome = OutcomeToolError
	}
	if err := s.settle(c, d, durable, outcome, nil); err != nil {
		writeRPCError(w, id, err, agentModern)
		return true
	}
	// The server's result is already what the agent expects when both
	// speak the same era and, for 2026-07-28, it names its type and its
	// server; otherwise it is shaped.
	ready := !agentModern && !upModern && head.ResultType == "" ||
		agentModern && upModern && head.ResultType == "complete" && len(head.Meta.ServerInfo) > 0
	if !ready {
		if raw, err = s.shape(raw, agentModern); err != nil {
			writeRPCError(w, id, &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: "kars MCP gateway: " + err.Error()}, agentModern)
			return true
		}
	}
	s.writeResult(w, id, raw)
	return true
}

// ownResult encodes a result the gateway makes itself (a refusal) as the
// SDK's server would.
func (s *server) ownResult(res *mcp.CallToolResult, modern bool) json.RawMessage {
	b, _ := json.Marshal(res)
	b, _ = s.shape(b, modern)
	return b
}

// shape gives a result object what the agent's revision expects, as the
// SDK's server does: for 2026-07-28 and later, resultType "complete"
// (SEP-2322) and, unless the result names its server already, the
// gateway's serverInfo in _meta (SEP-2575); for earlier revisions, no
// resultType.
func (s *server) shape(raw json.RawMessage, modern bool) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, errors.New("the server's result is not a JSON object")
	}
	delete(m, "resultType")
	if modern {
		m["resultType"] = json.RawMessage(`"complete"`)
		var meta map[string]json.RawMessage
		if len(m["_meta"]) > 0 && string(m["_meta"]) != "null" {
			if err := json.Unmarshal(m["_meta"], &meta); err != nil {
				return nil, errors.New("the server's result has a _meta that is not an object")
			}
		}
		if _, ok := meta[mcp.MetaKeyServerInfo]; !ok {
			if meta == nil {
				meta = map[string]json.RawMessage{}
			}
			meta[mcp.MetaKeyServerInfo], _ = json.Marshal(s.impl)
			m["_meta"], _ = json.Marshal(meta)
		}
	}
	return json.Marshal(m)
}

func (s *server) writeResult(w http.ResponseWriter, id, result json.RawMessage) {
	b := make([]byte, 0, len(result)+len(id)+40)
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = append(b, id...)
	b = append(b, `,"result":`...)
	b = append(b, result...)
	b = append(b, '}')
	writeRPC(w, http.StatusOK, b)
}

// writeRPCError answers a JSON-RPC error. For 2026-07-28 the HTTP status
// follows the error as the SDK sets it (SEP-2575: method not found 404,
// invalid params 400).
func writeRPCError(w http.ResponseWriter, id json.RawMessage, err error, modern bool) {
	var werr *jsonrpc.Error
	if !errors.As(err, &werr) {
		werr = &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: err.Error()}
	}
	status := http.StatusOK
	if modern {
		switch werr.Code {
		case jsonrpc.CodeMethodNotFound:
			status = http.StatusNotFound
		case jsonrpc.CodeInvalidParams:
			status = http.StatusBadRequest
		}
	}
	e, _ := json.Marshal(werr)
	b := make([]byte, 0, len(e)+len(id)+40)
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = append(b, id...)
	b = append(b, `,"error":`...)
	b = append(b, e...)
	b = append(b, '}')
	writeRPC(w, status, b)
}

func writeRPC(w http.ResponseWriter, status int, b []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-cache, no-transform")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// errNoRelay means the server's side of a call needs the SDK client.
var errNoRelay = errors.New("not relayable")

var relayIDs atomic.Int64

// relayCall posts tools/call to the server on the router's session and
// returns the raw result and whether the session speaks 2026-07-28. It
// returns errNoRelay when the SDK client must make the call. Like
// callTool, it sends the call again only when the server answered that
// the session is gone (it never ran it).
func (u *upstream) relayCall(ctx context.Context, name string, args json.RawMessage) (json.RawMessage, bool, error) {
	if u.cfg.Transport == "sse" || u.annotated(name) {
		return nil, false, errNoRelay
	}
	ctx, cancel := detach(ctx)
	defer cancel()
	for attempt := 0; ; attempt++ {
		cs, err := u.connect()
		if err != nil {
			return nil, false, err
		}
		ir := cs.InitializeResult()
		if ir == nil || !slices.Contains(relayVersions, ir.ProtocolVersion) {
			return nil, false, errNoRelay
		}
		pv := ir.ProtocolVersion
		modern := pv >= modernProtocol
		body, id := u.relayBody(name, args, pv)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.cfg.URL, bytes.NewReader(body))
		if err != nil {
			return nil, false, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Mcp-Protocol-Version", pv)
		sid := cs.ID()
		if sid != "" {
			req.Header.Set("Mcp-Session-Id", sid)
		}
		if modern {
			req.Header.Set("Mcp-Method", "tools/call")
			req.Header.Set("Mcp-Name", name)
		}
		resp, err := u.http.Do(req)
		if err != nil {
			var ce *CredentialError
			if errors.As(err, &ce) {
				return nil, false, ce
			}
			return nil, false, fmt.Errorf("MCP server %s: tools/call: %w", u.cfg.Name, err)
		}
		if resp.StatusCode == http.StatusNotFound && sid != "" && attempt == 0 {
			// The server forgot the session (streamable HTTP, "Session
			// Management"): it never ran the call.
			resp.Body.Close()
			u.drop(cs)
			continue
		}
		raw, err := readRelayResponse(resp, id)
		resp.Body.Close()
		u.relayed.Add(1)
		if err != nil {
			var werr *jsonrpc.Error
			if errors.As(err, &werr) {
				return nil, false, werr
			}
			return nil, false, fmt.Errorf("MCP server %s: tools/call: %w", u.cfg.Name, err)
		}
		return raw, modern, nil
	}
}

// relayBody encodes the call as the SDK client would for revision pv.
func (u *upstream) relayBody(name string, args json.RawMessage, pv string) ([]byte, string) {
	id := "kars-" + strconv.FormatInt(relayIDs.Add(1), 10)
	if len(args) == 0 {
		args = json.RawMessage("{}")
	}
	p := map[string]any{"name": name, "arguments": args}
	if pv >= modernProtocol {
		p["_meta"] = map[string]any{
			mcp.MetaKeyProtocolVersion:    pv,
			mcp.MetaKeyClientInfo:         clientImpl,
			mcp.MetaKeyClientCapabilities: map[string]any{},
		}
	}
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": p})
	return b, id
}

// rpcResponse is a JSON-RPC response as the relay reads it.
type rpcResponse struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Result json.RawMessage `json:"result"`
	Error  *jsonrpc.Error  `json:"error"`
}

// readRelayResponse reads the server's answer to the request with id
// from a JSON body or an SSE stream (streamable HTTP, "Sending Messages to
// the Server"), skipping the server's notifications and requests.
func readRelayResponse(resp *http.Response, id string) (json.RawMessage, error) {
	body := io.LimitReader(resp.Body, maxResultBytes+1)
	want := strconv.Quote(id)
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode/100 != 2 || mt == "application/json" {
		b, err := io.ReadAll(body)
		if err != nil {
			return nil, err
		}
		if len(b) > maxResultBytes {
			return nil, fmt.Errorf("the answer exceeds %d bytes", maxResultBytes)
		}
		var m rpcResponse
		if json.Unmarshal(b, &m) != nil {
			if resp.StatusCode/100 != 2 {
				return nil, fmt.Errorf("HTTP %d", resp.StatusCode)
			}
			return nil, errors.New("the answer is not a JSON-RPC response")
		}
		return m.answer(want)
	}
	if mt != "text/event-stream" {
		return nil, fmt.Errorf("HTTP %d with Content-Type %q", resp.StatusCode, mt)
	}
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 64<<10), maxResultBytes)
	var data bytes.Buffer
	for {
		more := sc.Scan()
		line := sc.Bytes()
		if more && len(line) > 0 {
			if v, ok := bytes.CutPrefix(line, []byte("data:")); ok {
				if data.Len() > 0 {
					data.WriteByte('\n')
				}
				data.Write(bytes.TrimPrefix(v, []byte(" ")))
			}
			continue
		}
		if data.Len() > 0 { // end of an event
			var m rpcResponse
			if json.Unmarshal(data.Bytes(), &m) == nil && m.Method == "" && string(m.ID) == want {
				return m.answer(want)
			}
			data.Reset()
		}
		if !more {
			if err := sc.Err(); err != nil {
				return nil, err
			}
			return nil, errors.New("the server's stream ended without the answer")
		}
	}
}

func (m *rpcResponse) answer(want string) (json.RawMessage, error) {
	// An error may come without the id (the server could not read the
	// request, JSON-RPC 2.0 §5); a result is the relay's only with its id.
	if m.Error != nil && (string(m.ID) == want || len(m.ID) == 0 || string(m.ID) == "null") {
		return nil, m.Error
	}
	if string(m.ID) != want {
		return nil, errors.New("the answer is for another request")
	}
	if m.Error != nil {
		return nil, m.Error
	}
	if len(m.Result) == 0 {
		return nil, errors.New("the answer has neither result nor error")
	}
	return m.Result, nil
}
