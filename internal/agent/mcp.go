package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/shared"
)

// The sandbox's MCP tools come from the router's MCP gateway: the index at
// /kars/v1/mcp names the servers, each served at /mcp/<server>, and the
// gateway lists only the tools the sandbox may call. The agent offers them
// to the model as mcp__<server>__<tool> and calls them through the gateway,
// which decides and audits each call itself (the agent does not ask the
// decide endpoint first: the router is the one that forwards the call).

// MCPIndexPath is the router's index of the sandbox's MCP servers.
const MCPIndexPath = "/kars/v1/mcp"

// mcpRefresh is how long a listing is reused: the gateway's list changes
// when an McpServer or the ToolPolicy does.
const mcpRefresh = 30 * time.Second

// mcpTool is one tool of one server, as offered to the model.
type mcpTool struct {
	server, tool string
	param        openai.ChatCompletionToolUnionParam
}

// mcpTools lists and calls the sandbox's MCP tools.
type mcpTools struct {
	router string
	http   *http.Client

	mu       sync.Mutex
	listed   time.Time
	tools    map[string]mcpTool // by the name offered to the model
	order    []string
	sessions map[string]*mcp.ClientSession
}

func newMCPTools(router string, client *http.Client) *mcpTools {
	return &mcpTools{router: strings.TrimRight(router, "/"), http: client, sessions: map[string]*mcp.ClientSession{}}
}

var notToolChar = regexp.MustCompile(`[^A-Za-z0-9_-]`)

// MCPToolName is the name the model sees for tool of server: the
// convention mcp__<server>__<tool>, with characters OpenAI function names
// do not allow replaced by '_', at most 64 characters.
func MCPToolName(server, tool string) string {
	n := "mcp__" + server + "__" + notToolChar.ReplaceAllString(tool, "_")
	if len(n) > 64 {
		n = n[:64]
	}
	return n
}

// offered returns the MCP tools for this turn, listing them again when the
// last listing is old. A router without MCP servers, or one that cannot
// be reached, offers none: the turn goes on with the built-in tools.
func (m *mcpTools) offered(ctx context.Context) []openai.ChatCompletionToolUnionParam {
	m.mu.Lock()
	defer m.mu.Unlock()
	if time.Since(m.listed) > mcpRefresh {
		m.list(ctx)
	}
	out := make([]openai.ChatCompletionToolUnionParam, 0, len(m.order))
	for _, n := range m.order {
		out = append(out, m.tools[n].param)
	}
	return out
}

// list reads the index and every server's tools/list. m.mu is held.
func (m *mcpTools) list(ctx context.Context) {
	m.listed = time.Now()
	m.tools, m.order = map[string]mcpTool{}, nil
	servers, err := m.index(ctx)
	if err != nil {
		return
	}
	for _, s := range servers {
		cs, err := m.session(ctx, s.Name, s.Path)
		if err != nil {
			continue
		}
		res, err := cs.ListTools(ctx, nil)
		if err != nil {
			delete(m.sessions, s.Name)
			continue
		}
		for _, t := range res.Tools {
			name := MCPToolName(s.Name, t.Name)
			if _, dup := m.tools[name]; dup {
				continue
			}
			params := shared.FunctionParameters{"type": "object", "properties": map[string]any{}}
			if b, err := json.Marshal(t.InputSchema); err == nil {
				var p map[string]any
				if json.Unmarshal(b, &p) == nil && p != nil {
					params = p
				}
			}
			desc := t.Description
			if desc == "" {
				desc = "Tool " + t.Name + " of the MCP server " + s.Name
			}
			m.tools[name] = mcpTool{server: s.Name, tool: t.Name, param: openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
				Name: name, Description: openai.String(desc), Parameters: params})}
			m.order = append(m.order, name)
		}
	}
}

type mcpServerEntry struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

func (m *mcpTools) index(ctx context.Context) ([]mcpServerEntry, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.router+MCPIndexPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := m.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("router answered %d", resp.StatusCode)
	}
	var idx struct {
		Servers []mcpServerEntry `json:"servers"`
	}
	return idx.Servers, json.Unmarshal(body, &idx)
}

// session returns the client session toward the gateway of server.
func (m *mcpTools) session(ctx context.Context, server, path string) (*mcp.ClientSession, error) {
	if cs, ok := m.sessions[server]; ok {
		return cs, nil
	}
	c := mcp.NewClient(&mcp.Implementation{Name: "kars-agent", Version: ContractVersion}, nil)
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: m.router + path, HTTPClient: m.http, DisableStandaloneSSE: true}, nil)
	if err != nil {
		return nil, err
	}
	m.sessions[server] = cs
	return cs, nil
}

// lookup returns the MCP tool the model named, if it is one.
func (m *mcpTools) lookup(name string) (mcpTool, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tools[name]
	return t, ok
}

// policyRefusal is how the gateway words a refused call to the model.
var policyRefusal = regexp.MustCompile(`^kars policy: \S+ is (deny|require_approval|rate_limited) `)

// call runs one MCP tool call through the gateway. The gateway's
// decision shows in the result: a call it refused comes back as a tool
// error naming the verdict, or as an unknown tool when it is not
// allowlisted.
func (m *mcpTools) call(ctx context.Context, t mcpTool, call ToolCall) ToolCall {
	var args map[string]any
	if call.Arguments != "" {
		if err := json.Unmarshal([]byte(call.Arguments), &args); err != nil {
			call.Decision, call.Reason = "deny", "arguments are not a JSON object"
			return call
		}
	}
	m.mu.Lock()
	cs, ok := m.sessions[t.server]
	m.mu.Unlock()
	if !ok {
		call.Decision, call.Reason = "deny", "the MCP server "+t.server+" is not reachable through the router"
		return call
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: t.tool, Arguments: args})
	if err != nil {
		call.Decision, call.Reason = "deny", err.Error()
		return call
	}
	var text strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			text.WriteString(tc.Text)
		}
	}
	out := text.String()
	if res.IsError {
		if v := policyRefusal.FindStringSubmatch(out); v != nil {
			call.Decision, call.Reason = v[1], out
			return call
		}
		out = "error: " + out
	}
	if out == "" && res.StructuredContent != nil {
		b, _ := json.Marshal(res.StructuredContent)
		out = string(b)
	}
	call.Decision, call.Result = "allow", out
	return call
}
