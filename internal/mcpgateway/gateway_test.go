package mcpgateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig"
)

// upstreamServer is a real MCP server (the Go SDK's) on loopback with a few
// tools; it records every tools/call it runs and the Authorization header
// of every request.
type upstreamServer struct {
	url   string
	calls atomic.Int64
	// handler serves the MCP endpoint; restart replaces it with a fresh
	// one, whose sessions do not include any the old one issued.
	handler atomic.Pointer[http.Handler]
	restart func()
	mu      sync.Mutex
	ran     []string
	auth    []string
}

func startUpstream(t testing.TB, stateless bool, wrap func(http.Handler) http.Handler) *upstreamServer {
	t.Helper()
	u := &upstreamServer{}
	srv := mcp.NewServer(&mcp.Implementation{Name: "upstream", Version: "1"}, nil)
	type echoIn struct {
		Message string `json:"message"`
	}
	record := func(name string) {
		u.calls.Add(1)
		u.mu.Lock()
		u.ran = append(u.ran, name)
		u.mu.Unlock()
	}
	mcp.AddTool(srv, &mcp.Tool{Name: "echo", Description: "echo"}, func(_ context.Context, _ *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, any, error) {
		record("echo")
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "Echo: " + in.Message}}}, nil, nil
	})
	mcp.AddTool(srv, &mcp.Tool{Name: "get-env", Description: "leaks the environment"}, func(context.Context, *mcp.CallToolRequest, struct{}) (*mcp.CallToolResult, any, error) {
		record("get-env")
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "SECRET=1"}}}, nil, nil
	})
	mcp.AddTool(srv, &mcp.Tool{Name: "pay", Description: "pays"}, func(_ context.Context, _ *mcp.CallToolRequest, in struct {
		Amount float64 `json:"amount"`
	}) (*mcp.CallToolResult, any, error) {
		record("pay")
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "paid"}}}, nil, nil
	})
	u.restart = func() {
		var h http.Handler = mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{Stateless: stateless})
		u.handler.Store(&h)
	}
	u.restart()
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.auth = append(u.auth, r.Header.Get("Authorization"))
		u.mu.Unlock()
		(*u.handler.Load()).ServeHTTP(w, r)
	})
	if wrap != nil {
		h = wrap(h)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	u.url = hs.URL + "/mcp"
	return u
}

func (u *upstreamServer) ranTools() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.ran)
}

// recorder is a Governor over a real governance engine that keeps what it
// would have audited.
type recorder struct {
	eng       *governance.Engine
	mu        sync.Mutex
	audited   []audited
	failNext  atomic.Bool // the log is known to fail: Decide errs
	failWrite atomic.Bool // the next entry fails to become durable
	finished  []string
}

type audited struct {
	Action, Decision, Rule, Payload string
}

func newRecorder(t testing.TB, rules ...governance.Rule) *recorder {
	t.Helper()
	e := governance.NewEngine()
	if err := e.Load(&governance.Policy{Name: "test", Rules: rules}); err != nil {
		t.Fatal(err)
	}
	return &recorder{eng: e}
}

func (r *recorder) Visible(action string) bool { return r.eng.Profile().MayAllow("", action) }

func (r *recorder) Decide(_ context.Context, c *Call) (governance.Decision, func() error, error) {
	d := governance.Decision{}
	if c.Refused != nil {
		d = *c.Refused
	} else {
		d = r.eng.Decide(&governance.Request{Action: c.Action, Args: c.Args})
	}
	if r.failNext.Swap(false) {
		return d, nil, errors.New("disk full")
	}
	fail := r.failWrite.Swap(false)
	r.mu.Lock()
	r.audited = append(r.audited, audited{c.Action, d.Verdict.String(), d.Rule, c.Payload})
	r.mu.Unlock()
	return d, func() error {
		if fail {
			return errors.New("fdatasync: input/output error")
		}
		return nil
	}, nil
}

func (r *recorder) Finished(c *Call, _ governance.Decision, outcome string, _ time.Duration) {
	r.mu.Lock()
	r.finished = append(r.finished, c.Tool+"="+outcome)
	r.mu.Unlock()
}

func (r *recorder) entries() []audited {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.audited)
}

// gatewayFor serves a gateway for one server on loopback and returns a
// connected official Go SDK client session.
func gatewayFor(t testing.TB, cfg routerconfig.MCPServer, gov Governor) (*mcp.ClientSession, *httptest.Server) {
	t.Helper()
	pool := NewPool(nil, nil)
	t.Cleanup(pool.Close)
	g := New([]routerconfig.MCPServer{cfg}, pool, gov, nil)
	mux := http.NewServeMux()
	mux.Handle(routerconfig.MCPPathPrefix, g)
	mux.HandleFunc(IndexPath, g.ServeIndex)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return connect(t, hs.URL+routerconfig.MCPPath(cfg.Name), ""), hs
}

func connect(t testing.TB, url, version string) *mcp.ClientSession {
	t.Helper()
	c := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil)
	cs, err := c.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: url}, &mcp.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		t.Fatalf("connect to the gateway: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

func toolNames(t testing.TB, cs *mcp.ClientSession) []string {
	t.Helper()
	res, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range res.Tools {
		names = append(names, tl.Name)
	}
	slices.Sort(names)
	return names
}

func text(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

var allowEcho = governance.Rule{Name: "echo", Effect: governance.EffectAllow, Actions: []string{"mcp:everything.echo"}}

func TestGatewayGovernsTools(t *testing.T) {
	for _, tc := range []struct {
		name      string
		stateless bool
		version   string
	}{
		{"stateful upstream, 2026-07-28 agent", false, ""},
		{"stateless upstream, 2025-11-25 agent", true, "2025-11-25"},
		{"stateful upstream, 2025-03-26 agent", false, "2025-03-26"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startUpstream(t, tc.stateless, nil)
			rec := newRecorder(t, allowEcho,
				governance.Rule{Name: "no-pay", Effect: governance.EffectDeny, Actions: []string{"mcp:everything.pay"}})
			pool := NewPool(nil, nil)
			defer pool.Close()
			g := New([]routerconfig.MCPServer{{Name: "everything", URL: up.url, Tools: []string{"echo", "pay"}}}, pool, rec, nil)
			hs := httptest.NewServer(g)
			defer hs.Close()
			cs := connect(t, hs.URL+"/mcp/everything", tc.version)

			// Listed: in the allowlist and allowed by policy. get-env is in
			// neither; pay is allowlisted but denied by policy.
			if got := toolNames(t, cs); !slices.Equal(got, []string{"echo"}) {
				t.Fatalf("tools/list shows %v, want [echo]", got)
			}
			res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "hi"}})
			if err != nil || res.IsError || text(res) != "Echo: hi" {
				t.Fatalf("allowed call: %v %+v", err, res)
			}
			// Not allowlisted: refused as an unknown tool, never forwarded.
			_, err = cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "get-env"})
			if err == nil || !strings.Contains(err.Error(), `unknown tool "get-env"`) {
				t.Fatalf("get-env: %v", err)
			}
			// Allowlisted but denied by policy: a tool error with the reason.
			res, err = cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "pay", Arguments: map[string]any{"amount": 5}})
			if err != nil || !res.IsError || !strings.Contains(text(res), "mcp:everything.pay is deny (rule no-pay)") {
				t.Fatalf("denied call: %v %+v", err, res)
			}
			if got := up.ranTools(); !slices.Equal(got, []string{"echo"}) {
				t.Fatalf("the server ran %v; only echo was allowed", got)
			}
			want := []audited{
				{"mcp:everything.echo", "allow", "echo", payloadOf(`{"message":"hi"}`)},
				{"mcp:everything.get-env", "deny", RuleAllowlist, payloadOf(`{}`)},
				{"mcp:everything.pay", "deny", "no-pay", payloadOf(`{"amount":5}`)},
			}
			if got := rec.entries(); !slices.Equal(got, want) {
				t.Fatalf("audited %+v\nwant %+v", got, want)
			}
		})
	}
}

func payloadOf(s string) string {
	_, p, _ := ReadArguments(json.RawMessage(s))
	return p
}

func TestEmptyAllowlistFailsClosed(t *testing.T) {
	up := startUpstream(t, true, nil)
	// The policy would allow everything: the empty allowlist still wins.
	rec := newRecorder(t, governance.Rule{Name: "all", Effect: governance.EffectAllow, Actions: []string{"mcp:*"}})
	cs, _ := gatewayFor(t, routerconfig.MCPServer{Name: "everything", URL: up.url}, rec)
	if got := toolNames(t, cs); len(got) != 0 {
		t.Fatalf("tools/list shows %v with an empty allowlist", got)
	}
	if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "x"}}); err == nil {
		t.Fatal("a call went through an empty allowlist")
	}
	if up.calls.Load() != 0 {
		t.Fatal("the server ran a tool")
	}
	// "*" lists everything the policy allows.
	cs, _ = gatewayFor(t, routerconfig.MCPServer{Name: "everything", URL: up.url, Tools: []string{"*"}}, rec)
	if got := toolNames(t, cs); !slices.Equal(got, []string{"echo", "get-env", "pay"}) {
		t.Fatalf("tools/list with \"*\" shows %v", got)
	}
}

func TestAuditFailureRefusesTheCall(t *testing.T) {
	up := startUpstream(t, true, nil)
	rec := newRecorder(t, allowEcho)
	cs, _ := gatewayFor(t, routerconfig.MCPServer{Name: "everything", URL: up.url, Tools: []string{"echo"}}, rec)
	rec.failNext.Store(true)
	_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "x"}})
	if err == nil || !strings.Contains(err.Error(), "kars_audit_unavailable") {
		t.Fatalf("call without an audit entry: %v", err)
	}
	if up.calls.Load() != 0 {
		t.Fatal("a call that is not on record reached the server")
	}
}

// An entry that fails to become durable while the call is forwarded
// withholds the server's answer; a refusal waits for its entry before it
// is answered.
func TestAuditWriteFailureWithholdsTheAnswer(t *testing.T) {
	up := startUpstream(t, true, nil)
	rec := newRecorder(t, allowEcho)
	cs, _ := gatewayFor(t, routerconfig.MCPServer{Name: "everything", URL: up.url, Tools: []string{"echo", "pay"}}, rec)
	rec.failWrite.Store(true)
	_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "x"}})
	if err == nil || !strings.Contains(err.Error(), "kars_audit_unavailable") || !strings.Contains(err.Error(), "withheld") {
		t.Fatalf("call whose entry failed: %v", err)
	}
	rec.failWrite.Store(true)
	_, err = cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "pay", Arguments: map[string]any{"amount": 1}})
	if err == nil || !strings.Contains(err.Error(), "did not forward it") {
		t.Fatalf("refusal whose entry failed: %v", err)
	}
	if got := up.calls.Load(); got != 1 {
		t.Fatalf("the server ran %d calls, want 1 (the refused one never went)", got)
	}
}

func TestConditionsSeeTheArguments(t *testing.T) {
	up := startUpstream(t, true, nil)
	rec := newRecorder(t, governance.Rule{Name: "small", Effect: governance.EffectAllow, Actions: []string{"mcp:everything.pay"},
		Conditions: []governance.Condition{{Expression: "args.amount < 10.0"}}})
	cs, _ := gatewayFor(t, routerconfig.MCPServer{Name: "everything", URL: up.url, Tools: []string{"pay"}}, rec)
	if res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "pay", Arguments: map[string]any{"amount": 5}}); err != nil || res.IsError {
		t.Fatalf("small payment: %v %+v", err, res)
	}
	if res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "pay", Arguments: map[string]any{"amount": 50}}); err != nil || !res.IsError {
		t.Fatalf("large payment: %v %+v", err, res)
	}
	if up.calls.Load() != 1 {
		t.Fatalf("the server ran %d calls, want 1", up.calls.Load())
	}
}

// A raw POST with duplicated argument names is refused: the server and the
// policy could read different values.
func TestDuplicateArgumentsRefused(t *testing.T) {
	up := startUpstream(t, true, nil)
	rec := newRecorder(t, governance.Rule{Name: "small", Effect: governance.EffectAllow, Actions: []string{"mcp:everything.pay"},
		Conditions: []governance.Condition{{Expression: "args.amount < 10.0"}}})
	_, hs := gatewayFor(t, routerconfig.MCPServer{Name: "everything", URL: up.url, Tools: []string{"pay"}}, rec)
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pay","arguments":{"amount":1,"amount":1000},` +
		`"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}`
	resp := post(t, hs.URL+"/mcp/everything", body)
	if !strings.Contains(resp, "not strict JSON") {
		t.Fatalf("duplicate names: %s", resp)
	}
	if up.calls.Load() != 0 {
		t.Fatal("the server ran a call with duplicated arguments")
	}
	if e := rec.entries(); len(e) != 1 || e[0].Rule != RuleArguments || e[0].Decision != "deny" {
		t.Fatalf("audited %+v", e)
	}
}

func post(t testing.TB, url, body string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("MCP-Protocol-Version", "2026-07-28")
	req.Header.Set("Mcp-Method", "tools/call")
	req.Header.Set("Mcp-Name", "pay")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}

func TestIndexAndUnknownServer(t *testing.T) {
	up := startUpstream(t, true, nil)
	_, hs := gatewayFor(t, routerconfig.MCPServer{Name: "everything", URL: up.url, Tools: []string{"echo"}}, newRecorder(t, allowEcho))
	resp, err := http.Get(hs.URL + IndexPath)
	if err != nil {
		t.Fatal(err)
	}
	var idx struct{ Servers []Entry }
	json.NewDecoder(resp.Body).Decode(&idx)
	resp.Body.Close()
	if len(idx.Servers) != 1 || idx.Servers[0] != (Entry{Name: "everything", Path: "/mcp/everything"}) {
		t.Fatalf("index %+v", idx)
	}
	resp, err = http.Post(hs.URL+"/mcp/nope", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown server: %d", resp.StatusCode)
	}
}

// The bearer token is the router's: the server gets it, the agent's own
// Authorization header never reaches the server, and rotating the Secret
// file takes effect.
func TestBearerHeldByTheGateway(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("s3cret-1\n"), 0o600)
	require := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer s3cret-") {
				http.Error(w, "no", http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	up := startUpstream(t, true, require)
	rec := newRecorder(t, allowEcho)
	pool := NewPool(nil, nil)
	defer pool.Close()
	g := New([]routerconfig.MCPServer{{Name: "everything", URL: up.url, Tools: []string{"echo"},
		Auth: &routerconfig.MCPAuth{Mode: routerconfig.MCPAuthBearer, TokenFile: tokenFile}}}, pool, rec, nil)
	hs := httptest.NewServer(g)
	defer hs.Close()
	// The agent sends its own (placeholder) credential.
	c := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil)
	cs, err := c.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: hs.URL + "/mcp/everything",
		HTTPClient: &http.Client{Transport: headerTransport{"Authorization", "Bearer agent-placeholder"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "a"}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // KeyFile stats at most once a second
	os.WriteFile(tokenFile, []byte("s3cret-2"), 0o600)
	if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "b"}}); err != nil {
		t.Fatal(err)
	}
	up.mu.Lock()
	seen := slices.Clone(up.auth)
	up.mu.Unlock()
	if !slices.Contains(seen, "Bearer s3cret-1") || seen[len(seen)-1] != "Bearer s3cret-2" {
		t.Fatalf("the server saw %v", seen)
	}
	for _, a := range seen {
		if strings.Contains(a, "agent-placeholder") {
			t.Fatalf("the agent's header reached the server: %v", seen)
		}
	}
}

type headerTransport struct{ k, v string }

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(h.k, h.v)
	return http.DefaultTransport.RoundTrip(r)
}

// A server restarted under the gateway forgets the router's session: the
// next call is answered 404 for it, never ran, and is sent again on a new
// session.
func TestUpstreamRestartReconnects(t *testing.T) {
	up := startUpstream(t, false, nil)
	rec := newRecorder(t, allowEcho)
	cs, _ := gatewayFor(t, routerconfig.MCPServer{Name: "everything", URL: up.url, Tools: []string{"echo"}}, rec)
	if got := toolNames(t, cs); len(got) != 1 {
		t.Fatal(got)
	}
	up.restart()
	if res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "x"}}); err != nil || res.IsError {
		t.Fatalf("call after the server restarted: %v %+v", err, res)
	}
	up.restart()
	if got := toolNames(t, cs); len(got) != 1 {
		t.Fatalf("list after the server restarted: %v", got)
	}
	if got := up.ranTools(); !slices.Equal(got, []string{"echo"}) {
		t.Fatalf("the server ran %v", got)
	}
}
