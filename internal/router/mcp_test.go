package router

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/mcpgateway/mcpauthtest"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
	"github.com/kars-io/kars/internal/upstreamhttp"
)

// mcpUpstream is a real MCP server (the official Go SDK) on loopback that
// requires a bearer token and records what it ran and which Authorization
// headers it saw.
type mcpUpstream struct {
	url  string
	mu   sync.Mutex
	ran  []string
	auth []string
}

func startMCPUpstream(t testing.TB, token string) *mcpUpstream {
	t.Helper()
	u := &mcpUpstream{}
	srv := mcp.NewServer(&mcp.Implementation{Name: "upstream", Version: "1"}, nil)
	tool := func(name string, answer func(map[string]any) string) {
		srv.AddTool(&mcp.Tool{Name: name, InputSchema: map[string]any{"type": "object"}}, func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			var args map[string]any
			json.Unmarshal(req.Params.Arguments, &args)
			u.mu.Lock()
			u.ran = append(u.ran, name)
			u.mu.Unlock()
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: answer(args)}}}, nil
		})
	}
	tool("echo", func(a map[string]any) string { return "Echo: " + a["message"].(string) })
	tool("get-env", func(map[string]any) string { return "UPSTREAM_SECRET=1" })
	tool("delete_repo", func(map[string]any) string { return "deleted" })
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{Stateless: true, JSONResponse: true})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.auth = append(u.auth, r.Header.Get("Authorization"))
		u.mu.Unlock()
		if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	u.url = hs.URL + "/mcp"
	return u
}

func mcpHarness(t testing.TB, up *mcpUpstream, token string, rules ...governance.Rule) *harness {
	t.Helper()
	return newHarness(t, func(h *harness, c *routerconfig.Config) {
		tokenFile := filepath.Join(h.dir, "mcp-token")
		os.WriteFile(tokenFile, []byte(token), 0o600)
		c.Governance = &governance.Policy{Name: "tools", Rules: append([]governance.Rule{
			{Name: "models", Effect: governance.EffectAllow, Actions: []string{"inference:*:*"}},
		}, rules...)}
		c.MCP = []routerconfig.MCPServer{{Name: "everything", URL: up.url, Tools: []string{"echo", "delete_repo"}}}
		if token != "" {
			c.MCP[0].Auth = &routerconfig.MCPAuth{Mode: routerconfig.MCPAuthBearer, TokenFile: tokenFile}
		}
	})
}

func connectMCP(t testing.TB, url string) *mcp.ClientSession {
	t.Helper()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).
		Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: url}, nil)
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// The gateway through the whole router: the allowed tool works, the
// disallowed ones are invisible or refused, each call is audited in the
// hash-chained log with its decision, and the server's bearer stays in the
// router.
func TestMCPGatewayThroughRouter(t *testing.T) {
	const token = "mcp-server-bearer-7f3a"
	up := startMCPUpstream(t, token)
	h := mcpHarness(t, up, token,
		governance.Rule{Name: "echo", Effect: governance.EffectAllow, Actions: []string{"mcp:everything.echo"}},
		governance.Rule{Name: "no-deletes", Effect: governance.EffectDeny, Actions: []string{"mcp:everything.delete_*"}})
	cs := connectMCP(t, h.agent.URL+"/mcp/everything")

	res, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range res.Tools {
		names = append(names, tl.Name)
	}
	if !slices.Equal(names, []string{"echo"}) {
		t.Fatalf("tools/list = %v, want [echo] (get-env is not allowlisted, delete_repo is denied by policy)", names)
	}
	out, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "hello"}})
	if err != nil || out.IsError || out.Content[0].(*mcp.TextContent).Text != "Echo: hello" {
		t.Fatalf("echo: %v %+v", err, out)
	}
	if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "get-env"}); err == nil {
		t.Fatal("get-env went through")
	}
	out, err = cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "delete_repo", Arguments: map[string]any{"repo": "kars"}})
	if err != nil || !out.IsError {
		t.Fatalf("delete_repo: %v %+v", err, out)
	}
	up.mu.Lock()
	ran, seen := slices.Clone(up.ran), slices.Clone(up.auth)
	up.mu.Unlock()
	if !slices.Equal(ran, []string{"echo"}) {
		t.Fatalf("the server ran %v", ran)
	}
	for _, a := range seen {
		if a != "Bearer "+token {
			t.Fatalf("the server saw Authorization %q", a)
		}
	}

	var got []string
	for _, e := range h.auditRecords() {
		if e.Attrs["op"] == "mcp" {
			got = append(got, e.Action+" "+e.Decision+" "+e.Rule)
		}
	}
	want := []string{"mcp:everything.echo allow echo", "mcp:everything.get-env deny mcp-allowlist", "mcp:everything.delete_repo deny no-deletes"}
	if !slices.Equal(got, want) {
		t.Fatalf("audit entries %q, want %q", got, want)
	}
	if rep, err := audit.Verify(h.cfg.Audit.Dir, audit.VerifyOptions{}); err != nil || !rep.OK() {
		t.Fatalf("audit chain: %v %+v", err, rep)
	}

	// The index and the admin view.
	resp, err := http.Get(h.agent.URL + "/kars/v1/mcp")
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(idx), `"path":"/mcp/everything"`) || strings.Contains(string(idx), token) {
		t.Fatalf("index: %s", idx)
	}
	admin := httptest.NewServer(h.router.AdminHandler(h.cfg.Admin.TokenFile, AdminBackends{}))
	defer admin.Close()
	req, _ := http.NewRequest("GET", admin.URL+"/admin/v1/mcp", nil)
	req.Header.Set("Authorization", "Bearer admin-secret-token")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Servers []struct{ Tools, Visible []string }
	}
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if len(st.Servers) != 1 || len(st.Servers[0].Tools) != 3 || !slices.Equal(st.Servers[0].Visible, []string{"echo"}) {
		t.Fatalf("admin mcp status: %+v", st)
	}
}

// Rate limits and approval rules govern MCP tools as they govern every
// other action: the call over the rule's budget is refused as
// rate_limited, the call that needs approval is held and, with no one to
// approve it, refused when its timeout passes (approvals_test.go covers
// the approval itself); neither reaches the server, and each is audited
// with its verdict.
func TestMCPRateLimitAndApproval(t *testing.T) {
	up := startMCPUpstream(t, "")
	h := mcpHarness(t, up, "",
		governance.Rule{Name: "echo-twice", Effect: governance.EffectAllow, Actions: []string{"mcp:everything.echo"},
			RateLimit: &governance.RuleRateLimit{Requests: 2, WindowSeconds: 3600}},
		governance.Rule{Name: "deletes-need-a-human", Effect: governance.EffectRequireApproval, Actions: []string{"mcp:everything.delete_repo"}})
	// No one approves here: hold the call for a millisecond (set before any call).
	h.router.gen.Load().snap.Config.Approvals = &routerconfig.Approvals{TimeoutMillis: 1}
	cs := connectMCP(t, h.agent.URL+"/mcp/everything")
	var texts []string
	for _, name := range []string{"echo", "echo", "echo", "delete_repo"} {
		out, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: name, Arguments: map[string]any{"message": "m", "repo": "kars"}})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		texts = append(texts, fmt.Sprintf("%v %s", out.IsError, out.Content[0].(*mcp.TextContent).Text))
	}
	if texts[0] != "false Echo: m" || texts[1] != "false Echo: m" ||
		!strings.HasPrefix(texts[2], "true kars policy: mcp:everything.echo is rate_limited (rule echo-twice)") ||
		!strings.HasPrefix(texts[3], "true kars policy: mcp:everything.delete_repo is deny (rule deletes-need-a-human): approval timed out after 1ms") {
		t.Fatalf("results:\n%s", strings.Join(texts, "\n"))
	}
	up.mu.Lock()
	ran := slices.Clone(up.ran)
	up.mu.Unlock()
	if !slices.Equal(ran, []string{"echo", "echo"}) {
		t.Fatalf("the server ran %v", ran)
	}
	var got []string
	for _, e := range h.auditRecords() {
		if e.Attrs["op"] == "mcp" {
			got = append(got, e.Decision+" "+e.Rule)
		}
	}
	want := []string{"allow echo-twice", "allow echo-twice", "rate_limited echo-twice", "require_approval deletes-need-a-human", "deny deletes-need-a-human"}
	if !slices.Equal(got, want) {
		t.Fatalf("audit entries %q, want %q", got, want)
	}
}

// Without a ToolPolicy the router's default policy allows inference only:
// the gateway lists and allows nothing.
func TestMCPDefaultPolicyAllowsNothing(t *testing.T) {
	up := startMCPUpstream(t, "")
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		c.MCP = []routerconfig.MCPServer{{Name: "everything", URL: up.url, Tools: []string{"*"}}}
	})
	cs := connectMCP(t, h.agent.URL+"/mcp/everything")
	res, err := cs.ListTools(context.Background(), nil)
	if err != nil || len(res.Tools) != 0 {
		t.Fatalf("tools/list under the default policy: %v %v", err, res)
	}
	out, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "x"}})
	if err != nil || !out.IsError {
		t.Fatalf("call under the default policy: %v %+v", err, out)
	}
	if len(up.ran) != 0 {
		t.Fatalf("the server ran %v", up.ran)
	}
}

// A reload that removes the server takes it off the agent API at once.
func TestMCPReloadRemovesServer(t *testing.T) {
	up := startMCPUpstream(t, "")
	h := mcpHarness(t, up, "", governance.Rule{Name: "echo", Effect: governance.EffectAllow, Actions: []string{"mcp:everything.echo"}})
	cs := connectMCP(t, h.agent.URL+"/mcp/everything")
	if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "x"}}); err != nil {
		t.Fatal(err)
	}
	c := *h.cfg
	c.MCP = nil
	if err := h.router.Apply(routerconfigtest.Snapshot(t, &c)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(h.agent.URL+"/mcp/everything", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("removed server answered %d", resp.StatusCode)
	}
}

// processCPU is the user and system CPU time the process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkMCPToolsCall measures one tools/call (echo) from the official Go
// SDK client, directly to the server and through the router's gateway
// (policy, durable audit entry, upstream session), in the same run. It
// reports the p50 and p99 of each and, for the router, what it adds at the
// p50 over the direct baseline measured just before (goal: < 300 µs).
func BenchmarkMCPToolsCall(b *testing.B) {
	up := startMCPUpstream(b, "")
	h := mcpHarness(b, up, "", governance.Rule{Name: "echo", Effect: governance.EffectAllow, Actions: []string{"mcp:everything.echo"}})
	var directP50 float64
	for _, path := range []struct{ name, url string }{
		{"direct", up.url},
		{"router", h.agent.URL + "/mcp/everything"},
	} {
		b.Run(path.name, func(b *testing.B) {
			cs := connectMCP(b, path.url)
			args := map[string]any{"message": "benchmark"}
			for range 50 { // warm the connections and the session
				cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: args})
			}
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			cpu0 := processCPU()
			b.ResetTimer()
			for b.Loop() {
				start := time.Now()
				res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: args})
				lat = append(lat, time.Since(start))
				if err != nil || res.IsError {
					b.Fatalf("%v %+v", err, res)
				}
			}
			b.StopTimer()
			// Process CPU (user+system) per call: the client, the server
			// and, through the router, the router — all in this process.
			b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(len(lat)), "cpu-µs/op")
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			p50 := float64(lat[len(lat)/2].Microseconds())
			b.ReportMetric(p50, "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			if path.name == "direct" {
				directP50 = p50
			} else if directP50 > 0 {
				b.ReportMetric(p50-directP50, "added-p50-µs")
			}
		})
	}
}

// Token exchange through the whole router, over TLS to a real RFC 8693
// authorization server and an MCP server that validates the exchanged
// token: the call runs as the sandbox's identity, and neither the subject
// token nor the access token appears on the agent's side, in the audit log
// or in the router's log — also when the authorization server refuses and
// echoes the subject token back.
func TestMCPTokenExchangeThroughRouter(t *testing.T) {
	iss := mcpauthtest.NewIssuer("https://kubernetes.default.svc")
	as := mcpauthtest.StartAuthServer(iss)
	t.Cleanup(as.Close)
	up := mcpauthtest.StartMCPServer(as)
	t.Cleanup(up.Close)
	const sub = "system:serviceaccount:kars-test:kars-bot"
	subject := iss.Mint(sub, as.URL, time.Hour)
	roots := mcpauthtest.Roots(as.Server, up.Server)
	var logs syncBuffer
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		subjectFile := filepath.Join(h.dir, "subject-token")
		os.WriteFile(subjectFile, []byte(subject), 0o600)
		c.Governance = &governance.Policy{Name: "tools", Rules: []governance.Rule{
			{Name: "protected", Effect: governance.EffectAllow, Actions: []string{"mcp:protected.*"}}}}
		c.MCP = []routerconfig.MCPServer{{Name: "protected", URL: up.Endpoint, Tools: []string{"*"},
			Auth: &routerconfig.MCPAuth{Mode: routerconfig.MCPAuthOAuthTokenExchange, SubjectTokenFile: subjectFile, Scopes: []string{"tools"}}}}
	}, func(o *Options) {
		tr := DefaultTransport().(*upstreamhttp.Transport)
		tr.TLSClientConfig = &tls.Config{RootCAs: roots}
		o.Transport = tr
		o.TokenClient = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}, Timeout: 10 * time.Second}
		o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	var wire mcpauthtest.Wire
	agentSide := httptest.NewServer(wire.Wrap(h.router.AgentHandler()))
	t.Cleanup(agentSide.Close)
	cs := connectMCP(t, agentSide.URL+"/mcp/protected")
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "whoami", Arguments: map[string]any{}})
	if err != nil || res.IsError || res.Content[0].(*mcp.TextContent).Text != "acting for "+sub {
		t.Fatalf("whoami: %v %+v", err, res)
	}
	res, err = cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "hi"}})
	if err != nil || res.IsError {
		t.Fatalf("echo: %v %+v", err, res)
	}
	if as.Exchanges.Load() != 1 {
		t.Fatalf("%d exchanges", as.Exchanges.Load())
	}
	// The authorization server turns hostile: the cached token is revoked
	// and the next exchange is refused with the subject token echoed.
	as.RevokeAll()
	as.Respond = func(w http.ResponseWriter, r *http.Request, _ string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":"invalid_grant","error_description":"rejected `+r.PostForm.Get("subject_token")+`"}`)
	}
	if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"message": "x"}}); err == nil ||
		!strings.Contains(err.Error(), "holds no credential") {
		t.Fatalf("call with a refused exchange: %v", err)
	}
	if !strings.Contains(logs.String(), "invalid_grant") {
		t.Fatalf("the router's log does not say why: %s", logs.String())
	}
	var auditBytes []byte
	filepath.WalkDir(h.cfg.Audit.Dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			auditBytes = append(auditBytes, b...)
		}
		return nil
	})
	if !bytes.Contains(auditBytes, []byte("mcp:protected.whoami")) {
		t.Fatal("no audit entry for the call")
	}
	secrets := []string{subject, subject[len(subject)-16:]}
	for tok := range as.Issued() {
		secrets = append(secrets, tok)
	}
	for _, s := range secrets {
		for where, text := range map[string]string{"the agent's side": wire.String(), "the audit log": string(auditBytes), "the router's log": logs.String()} {
			if strings.Contains(text, s) {
				t.Fatalf("%s holds a token (%.12s…)", where, s)
			}
		}
	}
}
