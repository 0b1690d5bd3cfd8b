package runtimes

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
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

// allowList allows its actions. It shows every allowlisted tool, as a
// policy whose rule for wipe has a condition would (MayAllow is true for
// it), so that the shims' handling of a refused call is exercised.
type allowList []string

func (a allowList) Visible(string) bool { return true }
func (a allowList) Decide(_ context.Context, c *mcpgateway.Call) (governance.Decision, func() error, error) {
	durable := func() error { return nil }
	if c.Refused != nil {
		return *c.Refused, durable, nil
	}
	if slices.Contains(a, c.Action) {
		return governance.Decision{Verdict: governance.Allow, Rule: "test"}, durable, nil
	}
	return governance.Decision{Rule: "test", Reason: "denied by the test policy"}, durable, nil
}
func (allowList) Finished(*mcpgateway.Call, governance.Decision, string, time.Duration) {}

// gatewayRouter serves the router's MCP surface (index and gateway) in
// front of a real MCP server with tools add (allowed), wipe (allowlisted,
// denied by policy) and secret (not allowlisted).
func gatewayRouter(t *testing.T) (string, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var ran []string
	srv := mcp.NewServer(&mcp.Implementation{Name: "tools", Version: "1"}, nil)
	type addIn struct {
		A int    `json:"a" jsonschema:"first addend"`
		B int    `json:"b" jsonschema:"second addend"`
		N string `json:"note,omitempty"`
	}
	mcp.AddTool(srv, &mcp.Tool{Name: "add", Description: "Adds two integers."}, func(_ context.Context, _ *mcp.CallToolRequest, in addIn) (*mcp.CallToolResult, any, error) {
		mu.Lock()
		ran = append(ran, "add")
		mu.Unlock()
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "sum=" + strconvI(in.A+in.B)}}}, nil, nil
	})
	for _, name := range []string{"wipe", "secret"} {
		srv.AddTool(&mcp.Tool{Name: name, InputSchema: map[string]any{"type": "object"}}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			mu.Lock()
			ran = append(ran, name)
			mu.Unlock()
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: name}}}, nil
		})
	}
	up := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	t.Cleanup(up.Close)
	pool := mcpgateway.NewPool(nil, nil)
	t.Cleanup(pool.Close)
	gw := mcpgateway.New([]routerconfig.MCPServer{{Name: "tools", URL: up.URL, Tools: []string{"add", "wipe"}}}, pool,
		allowList{"mcp:tools.add"}, nil)
	mux := http.NewServeMux()
	mux.Handle(routerconfig.MCPPathPrefix, gw)
	mux.HandleFunc(mcpgateway.IndexPath, gw.ServeIndex)
	router := httptest.NewServer(mux)
	t.Cleanup(router.Close)
	return router.URL, func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(ran) }
}

func strconvI(i int) string {
	var b []byte
	if i == 0 {
		return "0"
	}
	neg := i < 0
	if neg {
		i = -i
	}
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	if neg {
		b = append([]byte{'-'}, b...)
	}
	return string(b)
}

// The Python contract module lists the gateway's tools as typed functions
// (the shape the frameworks turn into tool schemas), lets the gateway
// decide them, and relays a refusal as the tool's text.
func TestPythonMCPTools(t *testing.T) {
	needInterpreter(t, "python3")
	router, ran := gatewayRouter(t)
	out, err := exec.Command("python3", "-c", `import sys, inspect; sys.path.insert(0, "python"); import kars_runtime as k
cfg = k.Config({"KARS_ROUTER_URL": sys.argv[1], "KARS_WORKSPACE": "/tmp"})
tools = {f.__name__: f for f in k.mcp_tools(cfg)}
print(sorted(tools))
add = tools["mcp__tools__add"]
print(inspect.signature(add))
print(add(a=2, b=40))
print(tools["mcp__tools__wipe"]())
print(k.decide(cfg, "mcp__tools__add", {}).decision)`, router).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := []string{
		"['mcp__tools__add', 'mcp__tools__wipe']",
		"(*, a: int, b: int, note: str | None = None) -> str",
		"sum=42",
		"kars policy: mcp:tools.wipe is deny (rule test): denied by the test policy",
		"allow",
	}
	if got := strings.Split(strings.TrimSpace(string(out)), "\n"); !slices.Equal(got, want) {
		t.Fatalf("python:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := ran(); !slices.Equal(got, []string{"add"}) {
		t.Fatalf("the server ran %v", got)
	}
}

func TestNodeMCPTools(t *testing.T) {
	needInterpreter(t, "node")
	router, ran := gatewayRouter(t)
	out, err := exec.Command("node", "--input-type=module", "-e", `import * as k from "./node/kars-runtime.mjs";
const cfg = k.config({ KARS_ROUTER_URL: process.argv[1] });
const tools = await k.mcpTools(cfg);
console.log(tools.map((t) => t.name).sort().join(","));
const add = tools.find((t) => t.name === "mcp__tools__add");
console.log(JSON.stringify(add.schema.required));
console.log(await k.runTool(add, { a: 2, b: 40 }));
console.log(await k.runTool(tools.find((t) => t.name === "mcp__tools__wipe"), {}));
console.log((await k.decide(cfg, "mcp__tools__add", {})).decision);`, "--", router).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := []string{
		"mcp__tools__add,mcp__tools__wipe",
		`["a","b"]`,
		"sum=42",
		"kars policy: mcp:tools.wipe is deny (rule test): denied by the test policy",
		"allow",
	}
	if got := strings.Split(strings.TrimSpace(string(out)), "\n"); !slices.Equal(got, want) {
		t.Fatalf("node:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := ran(); !slices.Equal(got, []string{"add"}) {
		t.Fatalf("the server ran %v", got)
	}
}

// needInterpreter skips a test whose interpreter is not installed, unless
// CI asks for the runtime or interop tests (KARS_REQUIRE_RUNTIMES=1,
// KARS_REQUIRE_INTEROP=1), where a missing interpreter fails it.
func needInterpreter(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("KARS_REQUIRE_RUNTIMES") == "1" || os.Getenv("KARS_REQUIRE_INTEROP") == "1" {
			t.Fatalf("%s is not installed (CI installs it)", name)
		}
		t.Skipf("%s not installed", name)
	}
}
