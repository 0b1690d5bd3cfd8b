package mcpgateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/version"
)

// Pool holds the router's client sessions toward MCP servers. It outlives
// config generations: a reload that leaves a server's entry unchanged keeps
// its session (and its OAuth token), as the router keeps inference
// credentials. Safe for concurrent use.
type Pool struct {
	base        http.RoundTripper
	tokenClient *http.Client

	mu    sync.Mutex
	conns map[string]*upstream
}

// NewPool returns a pool whose sessions use base for MCP traffic (nil:
// http.DefaultTransport's settings without a proxy) and tokenClient for
// OAuth discovery and grants (nil: a 30 s client).
func NewPool(base http.RoundTripper, tokenClient *http.Client) *Pool {
	if base == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.Proxy = nil // the router is the egress; never chain to an env proxy
		base = t
	}
	if tokenClient == nil {
		tokenClient = &http.Client{Timeout: 30 * time.Second}
	}
	return &Pool{base: base, tokenClient: tokenClient, conns: map[string]*upstream{}}
}

// upstream returns the session holder for s, creating it on first use.
func (p *Pool) upstream(s routerconfig.MCPServer) *upstream {
	key, _ := json.Marshal(s)
	p.mu.Lock()
	defer p.mu.Unlock()
	if u, ok := p.conns[string(key)]; ok {
		return u
	}
	u := &upstream{cfg: s, http: &http.Client{Transport: newAuthTransport(p.base, s, p.tokenClient)}}
	p.conns[string(key)] = u
	return u
}

// Retain closes the sessions of servers not in keep (a reload removed or
// changed them).
func (p *Pool) Retain(keep []routerconfig.MCPServer) {
	want := map[string]bool{}
	for _, s := range keep {
		key, _ := json.Marshal(s)
		want[string(key)] = true
	}
	p.mu.Lock()
	var drop []*upstream
	for k, u := range p.conns {
		if !want[k] {
			drop = append(drop, u)
			delete(p.conns, k)
		}
	}
	p.mu.Unlock()
	for _, u := range drop {
		u.close()
	}
}

// Close ends every session.
func (p *Pool) Close() { p.Retain(nil) }

// upstream is one MCP server: a client session, connected on first use and
// again after the server ended it.
type upstream struct {
	cfg  routerconfig.MCPServer
	http *http.Client

	mu      sync.Mutex
	session *mcp.ClientSession
	// headered names the tools whose input schema asks for Mcp-Param
	// headers (x-mcp-header), which only the SDK client sends: the relay
	// leaves their calls to it. Learnt from every listing.
	headered map[string]bool
	// relayed counts the calls the relay posted itself.
	relayed atomic.Int64
}

// annotated reports whether the last listing showed tool asking for
// Mcp-Param headers.
func (u *upstream) annotated(tool string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.headered[tool]
}

// clientImpl identifies the router to MCP servers.
var clientImpl = &mcp.Implementation{Name: "kars-router", Title: "kars MCP gateway", Version: version.Version}

// connectTimeout bounds connecting to a server; tool calls themselves are
// bounded by the agent's request.
const connectTimeout = 15 * time.Second

func (u *upstream) connect() (*mcp.ClientSession, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.session != nil {
		return u.session, nil
	}
	var t mcp.Transport
	if u.cfg.Transport == "sse" {
		t = &mcp.SSEClientTransport{Endpoint: u.cfg.URL, HTTPClient: u.http}
	} else {
		// Server-initiated messages are not relayed to agents (the
		// router declares no client capability), so no standalone
		// stream is opened.
		t = &mcp.StreamableClientTransport{Endpoint: u.cfg.URL, HTTPClient: u.http, DisableStandaloneSSE: true, MaxRetries: 1}
	}
	// Not the agent's context: a connection outlives the call that opened
	// it, and the SDK reads request-scoped values (the agent's protocol
	// version) from contexts.
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	cs, err := mcp.NewClient(clientImpl, &mcp.ClientOptions{Capabilities: &mcp.ClientCapabilities{}}).Connect(ctx, t, nil)
	if err != nil {
		return nil, fmt.Errorf("connect to MCP server %s at %s: %w", u.cfg.Name, u.cfg.URL, err)
	}
	u.session = cs
	return cs, nil
}

// drop forgets cs when it is still the current session, so that the next
// call reconnects.
func (u *upstream) drop(cs *mcp.ClientSession) {
	u.mu.Lock()
	if u.session == cs {
		u.session = nil
	}
	u.mu.Unlock()
	cs.Close()
}

func (u *upstream) close() {
	u.mu.Lock()
	cs := u.session
	u.session = nil
	u.mu.Unlock()
	if cs != nil {
		cs.Close()
	}
}

// gone reports whether err means the session is over (closed by the
// server, or unknown to it after a restart): reconnecting may help.
func gone(err error) bool {
	return errors.Is(err, mcp.ErrConnectionClosed) || errors.Is(err, mcp.ErrSessionMissing)
}

// listTools lists every tool of the server, page by page. Listing is
// idempotent, so a session the server ended is replaced once.
func (u *upstream) listTools(ctx context.Context) ([]*mcp.Tool, error) {
	ctx, cancel := detach(ctx)
	defer cancel()
	for attempt := 0; ; attempt++ {
		cs, err := u.connect()
		if err != nil {
			return nil, err
		}
		tools, err := collectTools(ctx, cs)
		if err == nil {
			headered := map[string]bool{}
			for _, t := range tools {
				if b, _ := json.Marshal(t.InputSchema); bytes.Contains(b, []byte("x-mcp-header")) {
					headered[t.Name] = true
				}
			}
			u.mu.Lock()
			u.headered = headered
			u.mu.Unlock()
			return tools, nil
		}
		if gone(err) {
			u.drop(cs)
			if attempt == 0 {
				continue
			}
		}
		return nil, fmt.Errorf("MCP server %s: tools/list: %w", u.cfg.Name, err)
	}
}

func collectTools(ctx context.Context, cs *mcp.ClientSession) ([]*mcp.Tool, error) {
	var tools []*mcp.Tool
	for t, err := range cs.Tools(ctx, nil) {
		if err != nil {
			return nil, err
		}
		if len(tools) == maxUpstreamTools {
			return nil, fmt.Errorf("the server lists more than %d tools", maxUpstreamTools)
		}
		tools = append(tools, t)
	}
	return tools, nil
}

// maxUpstreamTools bounds what one server may list: the list is held in
// memory and filtered per request.
const maxUpstreamTools = 4096

// callTool forwards one allowed call. It is not retried on a lost
// session unless the session was already gone when the call was sent:
// a tool may have side effects, and running it twice is worse than
// reporting a failure.
//
// modern reports whether the session speaks 2026-07-28 or later, whose
// results carry a result type.
func (u *upstream) callTool(ctx context.Context, name string, args json.RawMessage) (res *mcp.CallToolResult, modern bool, err error) {
	ctx, cancel := detach(ctx)
	defer cancel()
	for attempt := 0; ; attempt++ {
		cs, err := u.connect()
		if err != nil {
			return nil, false, err
		}
		params := &mcp.CallToolParams{Name: name}
		if len(args) > 0 {
			params.Arguments = args
		}
		res, err := cs.CallTool(ctx, params)
		if err != nil && errors.Is(err, mcp.ErrSessionMissing) && attempt == 0 {
			// The server answered 404 for the session: it never ran the
			// call (streamable HTTP, "Session Management").
			u.drop(cs)
			continue
		}
		if err != nil && gone(err) {
			u.drop(cs)
		}
		ir := cs.InitializeResult()
		return res, ir != nil && ir.ProtocolVersion >= modernProtocol, err
	}
}

// detach returns a context that ends when ctx ends (cancellation and
// deadline) but carries none of its values: the agent's request context
// holds the SDK's server-side values (its negotiated protocol version,
// among others), which must not steer the router's client session toward
// the server.
func detach(ctx context.Context) (context.Context, context.CancelFunc) {
	out, cancel := context.WithCancel(context.Background())
	if d, ok := ctx.Deadline(); ok {
		var cancelDeadline context.CancelFunc
		out, cancelDeadline = context.WithDeadline(out, d)
		prev := cancel
		cancel = func() { cancelDeadline(); prev() }
	}
	stop := context.AfterFunc(ctx, cancel)
	return out, func() { stop(); cancel() }
}
