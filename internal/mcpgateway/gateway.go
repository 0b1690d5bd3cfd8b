// Package mcpgateway is the router's MCP gateway: it serves the Model
// Context Protocol (streamable HTTP, every revision the official Go SDK
// speaks, 2026-07-28 included) to the agent at a stable local path per
// server, /mcp/<server> on the agent API, and is the MCP client toward the
// server.
//
// The agent sees only what the sandbox may call: tools/list is the
// server's list filtered by the McpServer's tool allowlist (empty allows
// nothing) and by the governance policy. Each tools/call is decided as the
// action mcp:<server>.<tool> (Governor) before it is forwarded, and its
// audit entry is durable before the answer reaches the agent (it is
// written while an allowed call is forwarded); a refused call never
// reaches the server. Credentials toward the server (a bearer token from a
// Secret, an OAuth 2.1 client credentials grant, or an RFC 8693 token
// exchange of the sandbox's workload identity) live in the router and are
// never visible to the agent: the gateway builds every upstream request
// itself, forwarding only the tool's name and arguments.
//
// Resources, prompts, completion, sampling and elicitation are not
// relayed: the gateway is a tool surface, and every tool call goes through
// policy. The protocol is the SDK's (github.com/modelcontextprotocol/go-sdk),
// except that tools/call takes a direct relay (relay.go) that answers it as
// the SDK would, at a fraction of the cost; this package adds the policy
// seam, the argument checks, the relay and the upstream sessions. It must
// not import the router or Kubernetes packages.
package mcpgateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/strictjson"
	"github.com/kars-io/kars/internal/version"
)

// Governor is the router's side of the gateway: policy and audit.
type Governor interface {
	// Visible reports whether the policy could allow action, to decide
	// what tools/list shows. It must not consume rate limits or count as
	// a decision.
	Visible(action string) bool
	// Decide decides c — or records c.Refused as the decision when the
	// gateway refused the call itself — and starts writing its audit
	// entry. durable reports once the entry is on record (nil) or could
	// not be written; the gateway calls it exactly once, before it
	// answers the agent. An error means the call cannot be put on record
	// at all (the audit log is failing), and the call is not forwarded.
	// It may hold the call — a require_approval decision awaiting a
	// person — until the decision, a timeout or the end of ctx.
	Decide(ctx context.Context, c *Call) (d governance.Decision, durable func() error, err error)
	// Finished reports what became of a decided call, for metrics and the
	// log: Outcome* constants.
	Finished(c *Call, d governance.Decision, outcome string, took time.Duration)
}

// Call is one tools/call the agent made.
type Call struct {
	Server, Tool string
	// Action is mcp:<server>.<tool>, or the call's refused form cut to the
	// action grammar's bound when the name cannot form an action.
	Action string
	// Args are the arguments, for policy conditions; nil when absent.
	Args map[string]any
	// Payload is the hex SHA-256 of the arguments exactly as sent, or ""
	// when there were none.
	Payload string
	// Refused is set when the gateway refuses the call before policy (a
	// tool outside the allowlist, malformed arguments): Decide records it
	// as the decision.
	Refused *governance.Decision
	// Start is when the call arrived.
	Start time.Time
}

// Outcomes of a decided call.
const (
	OutcomeOK            = "ok"             // forwarded; the tool answered
	OutcomeToolError     = "tool_error"     // forwarded; the tool answered isError
	OutcomeUpstreamError = "upstream_error" // forwarded; the server or the connection failed
	OutcomeRefused       = "refused"        // not forwarded: policy, allowlist or bad arguments
	OutcomeUnaudited     = "unaudited"      // not forwarded: the audit entry could not be written
)

// Gateway serves one config generation's MCP servers. Build a new one on
// every reload; the Pool carries sessions across.
type Gateway struct {
	servers map[string]*server
	names   []string
	log     *slog.Logger
}

// New builds the gateway for servers. Sessions toward them come from pool;
// gov decides and audits.
func New(servers []routerconfig.MCPServer, pool *Pool, gov Governor, log *slog.Logger) *Gateway {
	if log == nil {
		log = slog.Default()
	}
	g := &Gateway{servers: map[string]*server{}, log: log}
	for _, cfg := range servers {
		s := &server{cfg: cfg, up: pool.upstream(cfg), gov: gov, log: log,
			impl: &mcp.Implementation{Name: "kars-mcp-gateway", Title: "kars MCP gateway: " + cfg.Name, Version: version.Version}}
		s.sdk = mcp.NewServer(s.impl,
			&mcp.ServerOptions{
				// Tools only; no logging capability (the SDK's default).
				Capabilities: &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{}},
				Instructions: "Tools of the MCP server " + cfg.Name + ", as the sandbox's policy allows them. Every call is decided and audited by kars.",
			})
		s.sdk.AddReceivingMiddleware(s.intercept)
		// Stateless: every POST stands alone, so a reload or a restart of
		// the router loses nothing, and the 2026-07-28 protocol (which
		// has no sessions) is served alongside the handshake-era ones.
		s.http = mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s.sdk },
			&mcp.StreamableHTTPOptions{Stateless: true, JSONResponse: true, PropagateRequestCancellation: true,
				MaxRequestBodyBytes: MaxRequestBytes})
		g.servers[cfg.Name] = s
		g.names = append(g.names, cfg.Name)
	}
	slices.Sort(g.names)
	return g
}

// MaxRequestBytes bounds one MCP message from the agent.
const MaxRequestBytes = 4 << 20

// ServeHTTP serves /mcp/<server>.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name, ok := strings.CutPrefix(r.URL.Path, routerconfig.MCPPathPrefix)
	name = strings.TrimSuffix(name, "/")
	s := g.servers[name]
	if !ok || s == nil || strings.Contains(name, "/") {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no MCP server %q in this sandbox; GET %s lists them", name, IndexPath))
		return
	}
	if !s.noRelay && s.relay(w, r) {
		s.relayed.Add(1)
		return
	}
	s.http.ServeHTTP(w, r)
}

// IndexPath lists the sandbox's MCP servers on the agent API.
const IndexPath = "/kars/v1/mcp"

// Entry is one server in the index.
type Entry struct {
	Name string `json:"name"`
	// Path is the server's gateway endpoint on the agent API.
	Path string `json:"path"`
}

// Index lists the servers, by name.
func (g *Gateway) Index() []Entry {
	out := make([]Entry, 0, len(g.names))
	for _, n := range g.names {
		out = append(out, Entry{Name: n, Path: routerconfig.MCPPath(n)})
	}
	return out
}

// ServeIndex answers GET /kars/v1/mcp: {"servers":[{"name","path"}]}.
func (g *Gateway) ServeIndex(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writeError(w, http.StatusMethodNotAllowed, IndexPath+" takes GET")
		return
	}
	b, _ := json.Marshal(struct {
		Servers []Entry `json:"servers"`
	}{g.Index()})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(append(b, '\n'))
}

// ServerStatus is what the admin API reports of one server.
type ServerStatus struct {
	Name string `json:"name"`
	URL  string `json:"url"`
	// Tools is everything the server lists; Visible what the agent sees.
	Tools   []string `json:"tools"`
	Visible []string `json:"visible"`
	Error   string   `json:"error,omitempty"`
	// Reason classifies Error: ReasonCredential when the router could not
	// obtain its credential for the server.
	Reason string `json:"reason,omitempty"`
}

// ReasonCredential is the ServerStatus reason of a credential failure (a
// refused or failed OAuth grant, a missing token file).
const ReasonCredential = "credential"

// Status lists each server's tools, asking the servers now.
func (g *Gateway) Status(ctx context.Context) []ServerStatus {
	out := make([]ServerStatus, 0, len(g.names))
	for _, n := range g.names {
		s := g.servers[n]
		st := ServerStatus{Name: n, URL: s.cfg.URL, Tools: []string{}, Visible: []string{}}
		tools, err := s.up.listTools(ctx)
		if err != nil {
			st.Error = err.Error()
			var ce *CredentialError
			if errors.As(err, &ce) {
				st.Reason = ReasonCredential
			}
		}
		for _, t := range tools {
			st.Tools = append(st.Tools, t.Name)
			if s.visible(t.Name) {
				st.Visible = append(st.Visible, t.Name)
			}
		}
		out = append(out, st)
	}
	return out
}

func writeError(w http.ResponseWriter, status int, msg string) {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"code": "kars_mcp", "message": msg}})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// server is one MCP server behind the gateway.
type server struct {
	cfg  routerconfig.MCPServer
	up   *upstream
	gov  Governor
	sdk  *mcp.Server
	http *mcp.StreamableHTTPHandler
	log  *slog.Logger
	impl *mcp.Implementation
	// noRelay sends every message through the SDK (tests compare the
	// two paths); relayed counts the calls the relay answered.
	noRelay bool
	relayed atomic.Int64
}

// intercept answers tools/list and tools/call from the server behind the
// gateway; every other method (initialize, server/discover, ping, the
// empty resource and prompt lists) is the SDK's.
func (s *server) intercept(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		switch r := req.(type) {
		case *mcp.ListToolsRequest:
			return s.listTools(ctx, r)
		case *mcp.CallToolRequest:
			return s.callTool(ctx, r)
		}
		return next(ctx, method, req)
	}
}

// visible reports whether the agent may see tool: in the allowlist, a
// well-formed action, and not ruled out by policy.
func (s *server) visible(tool string) bool {
	if !s.cfg.Allows(tool) {
		return false
	}
	action := routerconfig.MCPAction(s.cfg.Name, tool)
	if _, bad := governance.CheckAction(action); bad != "" {
		return false
	}
	return s.gov.Visible(action)
}

// listTools answers with the server's tools the agent may see, in one
// page (the server's pages are gathered by the gateway).
func (s *server) listTools(ctx context.Context, _ *mcp.ListToolsRequest) (mcp.Result, error) {
	tools, err := s.up.listTools(ctx)
	if err != nil {
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: "kars MCP gateway: " + s.agentMessage(err)}
	}
	// The list is this sandbox's (allowlist and policy), and a reload can
	// change it at any moment: private, and stale at once (2026-07-28
	// cacheable results, SEP-2549).
	out := &mcp.ListToolsResult{Tools: []*mcp.Tool{}, Cacheable: mcp.Cacheable{TTLMs: 0, CacheScope: "private"}}
	for _, t := range tools {
		if s.visible(t.Name) {
			out.Tools = append(out.Tools, t)
		}
	}
	return out, nil
}

// callTool decides, audits and forwards one tools/call through the SDK.
func (s *server) callTool(ctx context.Context, req *mcp.CallToolRequest) (mcp.Result, error) {
	p := req.Params
	c, d, durable, res, err := s.admit(ctx, p.Name, p.Arguments)
	if c == nil {
		if res != nil {
			return forAgent(req, res)
		}
		return nil, err
	}
	up, modern, err := s.up.callTool(ctx, p.Name, p.Arguments)
	if err != nil {
		err = s.agentError(err)
		return nil, s.settle(c, d, durable, OutcomeUpstreamError, err)
	}
	if up.NeedsInput() {
		// The server asks the client for input (sampling, elicitation:
		// SEP-2322); the gateway relays no server-to-client requests.
		if err := s.settle(c, d, durable, OutcomeToolError, nil); err != nil {
			return nil, err
		}
		return forAgent(req, &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{
			Text: "the MCP server " + s.cfg.Name + " asked for client input (sampling or elicitation), which the kars gateway does not relay"}}})
	}
	outcome := OutcomeOK
	if up.IsError {
		outcome = OutcomeToolError
	}
	if err := s.settle(c, d, durable, outcome, nil); err != nil {
		return nil, err
	}
	if modern == (req.ProtocolVersion() >= modernProtocol) {
		return up, nil // the server's result type is already what the agent expects
	}
	return forAgent(req, up)
}

// admit decides one tools/call and has its audit entry written. When the
// call is not to be forwarded it returns a nil Call and the answer: a tool
// result (a policy refusal the model can read) or a JSON-RPC error. When
// it is, durable reports once the call's entry is on record; the caller
// forwards the call meanwhile and must settle it before answering.
func (s *server) admit(ctx context.Context, name string, rawArgs json.RawMessage) (c *Call, d governance.Decision, durable func() error, res *mcp.CallToolResult, err error) {
	c = &Call{Server: s.cfg.Name, Tool: name, Action: routerconfig.MCPAction(s.cfg.Name, name), Start: time.Now()}
	args, payload, argErr := ReadArguments(rawArgs)
	c.Args, c.Payload = args, payload
	switch {
	case !s.cfg.Allows(name):
		c.Refused = &governance.Decision{Rule: RuleAllowlist, Reason: "tool " + quoteTool(name) + " is not in the McpServer's tool allowlist"}
	case argErr != nil:
		c.Refused = &governance.Decision{Rule: RuleArguments, Reason: argErr.Error()}
	default:
		if _, bad := governance.CheckAction(c.Action); bad != "" {
			c.Refused = &governance.Decision{Rule: RuleArguments, Reason: "tool name cannot be governed: " + bad}
		}
	}
	if c.Refused != nil {
		c.Action = auditedAction(c.Action)
	}
	d, durable, err = s.gov.Decide(ctx, c)
	if err == nil && (c.Refused != nil || !d.Allowed()) {
		// Nothing is forwarded, so nothing waits on the entry: it is
		// durable before the refusal is answered.
		err = durable()
	}
	if err != nil {
		s.gov.Finished(c, d, OutcomeUnaudited, time.Since(c.Start))
		return nil, d, nil, nil, errUnaudited("did not forward it")
	}
	switch {
	case c.Refused != nil && c.Refused.Rule == RuleAllowlist:
		// Invisible tools stay invisible: the agent gets what a server
		// that does not have the tool answers.
		s.gov.Finished(c, d, OutcomeRefused, time.Since(c.Start))
		return nil, d, nil, nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: fmt.Sprintf("unknown tool %q", name)}
	case c.Refused != nil:
		s.gov.Finished(c, d, OutcomeRefused, time.Since(c.Start))
		return nil, d, nil, nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "kars MCP gateway: " + c.Refused.Reason}
	case !d.Allowed():
		// A policy refusal is a tool error the model can read and act on
		// (MCP "Tools", error handling), as the runtime contract asks.
		s.gov.Finished(c, d, OutcomeRefused, time.Since(c.Start))
		return nil, d, nil, &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: refusal(c, d)}}}, nil
	}
	return c, d, durable, nil, nil
}

// settle waits until a forwarded call's audit entry is durable, then
// reports the call finished. An entry that could not be written withholds
// the answer: the agent gets kars_audit_unavailable in its place (the
// tool has run; docs/audit.md says why the gateway forwards while the
// entry is being written). Otherwise it returns answerErr.
func (s *server) settle(c *Call, d governance.Decision, durable func() error, outcome string, answerErr error) error {
	if err := durable(); err != nil {
		s.gov.Finished(c, d, OutcomeUnaudited, time.Since(c.Start))
		s.log.Error("mcp call forwarded but its audit entry failed; answer withheld",
			slog.String("server", c.Server), slog.String("action", c.Action), slog.String("error", err.Error()))
		return errUnaudited("withheld the server's answer")
	}
	s.gov.Finished(c, d, outcome, time.Since(c.Start))
	return answerErr
}

func errUnaudited(what string) *jsonrpc.Error {
	return &jsonrpc.Error{Code: jsonrpc.CodeInternalError,
		Message: "kars_audit_unavailable: kars-router could not write the call to its audit log, so it " + what}
}

// agentError is the JSON-RPC error the agent gets for a failed call
// toward the server: the server's own error as it sent it, or, for
// anything else (a credential, the connection), the gateway's account of
// it (agentMessage).
func (s *server) agentError(err error) error {
	var werr *jsonrpc.Error
	var cerr *CredentialError
	if !errors.As(err, &cerr) && errors.As(err, &werr) {
		return &jsonrpc.Error{Code: werr.Code, Message: werr.Message, Data: werr.Data}
	}
	return &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: "kars MCP gateway: " + s.agentMessage(err)}
}

// agentMessage is what the agent is told of a failure toward the server.
// A credential failure is logged (Finished) and reported in the admin
// status, which the McpServer's conditions show; the agent learns only
// that the router holds no credential: the authorization server's answer
// is none of its business, and must not become a channel for what the
// router was given.
func (s *server) agentMessage(err error) string {
	var ce *CredentialError
	if errors.As(err, &ce) {
		s.log.Warn("mcp credential", slog.String("server", s.cfg.Name), slog.String("error", ce.Error()))
		return "the router holds no credential for the MCP server " + s.cfg.Name +
			" right now; the McpServer's status and the router's log say why"
	}
	return "the MCP server " + s.cfg.Name + " failed: " + err.Error()
}

// forAgent gives a tool result the result type the agent's protocol
// revision expects: "complete" for 2026-07-28 and later (SEP-2322 makes it
// required there), none before. The SDK sets it only on results of tools
// registered with it, and the gateway's are relayed; the field is
// unexported, so the result passes through its own JSON form.
func forAgent(req *mcp.CallToolRequest, res *mcp.CallToolResult) (*mcp.CallToolResult, error) {
	b, err := json.Marshal(res)
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	delete(m, "resultType")
	if req.ProtocolVersion() >= modernProtocol {
		m["resultType"] = json.RawMessage(`"complete"`)
	}
	if b, err = json.Marshal(m); err != nil {
		return nil, err
	}
	out := new(mcp.CallToolResult)
	return out, json.Unmarshal(b, out)
}

// modernProtocol is the first revision without the initialize handshake.
const modernProtocol = "2026-07-28"

// Pseudo-rules of calls the gateway refuses before policy.
const (
	RuleAllowlist = "mcp-allowlist"
	RuleArguments = "mcp-arguments"
)

func refusal(c *Call, d governance.Decision) string {
	rule := d.Rule
	if rule == "" {
		rule = "none"
	}
	return fmt.Sprintf("kars policy: %s is %s (rule %s): %s", c.Action, d.Verdict, rule, d.Reason)
}

// ReadArguments checks a tools/call's arguments as the agent sent them:
// absent, null or a JSON object in strict JSON (no duplicate names, valid
// UTF-8; the same reading as the decide endpoint), so that the policy
// decides on exactly what the server will read. It returns the decoded
// object for policy conditions and the SHA-256 of the bytes as sent.
func ReadArguments(raw json.RawMessage) (map[string]any, string, error) {
	if len(raw) == 0 {
		return nil, "", nil
	}
	sum := sha256.Sum256(raw)
	payload := hex.EncodeToString(sum[:])
	if err := strictjson.Validate(raw); err != nil {
		return nil, payload, fmt.Errorf("arguments are not strict JSON: %w", err)
	}
	if string(raw) == "null" {
		return nil, payload, nil
	}
	var args map[string]any
	if err := json.Unmarshal(raw, &args); err != nil {
		return nil, payload, errors.New("arguments must be a JSON object")
	}
	return args, payload, nil
}

// auditedAction bounds an action built from an untrusted tool name for
// the audit entry of a refusal.
func auditedAction(a string) string {
	if len(a) <= governance.MaxActionLen {
		return a
	}
	return a[:governance.MaxActionLen] + "…"
}

func quoteTool(name string) string {
	if len(name) > 128 {
		name = name[:128] + "…"
	}
	return fmt.Sprintf("%q", name)
}
