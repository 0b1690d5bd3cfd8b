package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/mcpgateway"
	"github.com/kars-io/kars/internal/routerconfig"
)

// policy is a Governor that allows the listed actions and records what it
// decided.
type policy struct {
	allow []string
	mu    sync.Mutex
	seen  []string
}

func (p *policy) Visible(action string) bool { return slices.Contains(p.allow, action) }
func (p *policy) Decide(_ context.Context, c *mcpgateway.Call) (governance.Decision, func() error, error) {
	d := governance.Decision{Rule: "test", Reason: "not allowed by the test policy"}
	if c.Refused != nil {
		d = *c.Refused
	} else if slices.Contains(p.allow, c.Action) {
		d = governance.Decision{Verdict: governance.Allow, Rule: "test"}
	}
	p.mu.Lock()
	p.seen = append(p.seen, c.Action+"="+d.Verdict.String())
	p.mu.Unlock()
	return d, func() error { return nil }, nil
}
func (p *policy) Finished(*mcpgateway.Call, governance.Decision, string, time.Duration) {}

// kars-agent lists the sandbox's MCP tools from the router's gateway,
// offers those the gateway shows, and calls them through it: an allowed
// tool runs, a refused one reaches the model as a denial and never runs.
func TestAgentUsesMCPTools(t *testing.T) {
	var mu sync.Mutex
	var ran []string
	srv := mcp.NewServer(&mcp.Implementation{Name: "tools", Version: "1"}, nil)
	for _, name := range []string{"lookup", "delete", "hidden"} {
		srv.AddTool(&mcp.Tool{Name: name, Description: name + " things", InputSchema: map[string]any{"type": "object"}},
			func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
				mu.Lock()
				ran = append(ran, name)
				mu.Unlock()
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: name + " done"}}}, nil
			})
	}
	up := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{Stateless: true}))
	defer up.Close()
	pol := &policy{allow: []string{"mcp:tools.lookup"}}
	pool := mcpgateway.NewPool(nil, nil)
	defer pool.Close()
	gw := mcpgateway.New([]routerconfig.MCPServer{{Name: "tools", URL: up.URL, Tools: []string{"lookup", "delete"}}}, pool, pol, nil)
	mux := http.NewServeMux()
	mux.Handle("/", &fakeRouter{})
	mux.Handle(routerconfig.MCPPathPrefix, gw)
	mux.HandleFunc(mcpgateway.IndexPath, gw.ServeIndex)
	router := httptest.NewServer(mux)
	defer router.Close()
	a, err := New(Config{RouterURL: router.URL, Workspace: t.TempDir(), Model: "m", Listen: "x"})
	if err != nil {
		t.Fatal(err)
	}
	var offered []string
	for _, tl := range a.mcp.offered(t.Context()) {
		offered = append(offered, tl.OfFunction.Function.Name)
	}
	if !slices.Equal(offered, []string{"mcp__tools__lookup"}) {
		t.Fatalf("offered %v; the gateway shows only lookup", offered)
	}
	turn, err := a.Chat(t.Context(), "s", "please mcp__tools__lookup my order")
	if err != nil {
		t.Fatal(err)
	}
	if len(turn.ToolCalls) != 1 || turn.ToolCalls[0].Decision != "allow" || turn.ToolCalls[0].Result != "lookup done" ||
		!strings.Contains(turn.Reply, "lookup done") {
		t.Fatalf("turn %+v", turn)
	}
	// delete is allowlisted but denied by policy: the model cannot pick
	// it (not offered), and a direct call is refused by the gateway.
	call := a.mcp.call(t.Context(), mcpTool{server: "tools", tool: "delete"}, ToolCall{ID: "x", Name: "mcp__tools__delete", Arguments: "{}"})
	if call.Decision != "deny" || call.Result != "" {
		t.Fatalf("denied call: %+v", call)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(ran, []string{"lookup"}) {
		t.Fatalf("the server ran %v", ran)
	}
}

func TestMCPToolName(t *testing.T) {
	for in, want := range map[[2]string]string{
		{"everything", "get-sum"}:       "mcp__everything__get-sum",
		{"github", "repos.list"}:        "mcp__github__repos_list",
		{"x", strings.Repeat("a", 100)}: "mcp__x__" + strings.Repeat("a", 56),
	} {
		if got := MCPToolName(in[0], in[1]); got != want {
			t.Errorf("MCPToolName(%q, %q) = %q, want %q", in[0], in[1], got, want)
		}
	}
}
