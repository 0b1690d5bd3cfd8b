package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/shared"
)

// The sandbox's long-term memory (a KarsMemory) is the router's memory
// API: kars-agent offers the model remember and recall when the router
// has a binding. The router decides and audits each call (memory:write,
// memory:search) and fixes which memories the agent reaches; for memory
// scoped per user or session, kars-agent names the chat session as the
// principal.

// MemoryPath is the router's memory API.
const MemoryPath = "/kars/v1/memory"

type memoryTools struct {
	router string
	http   *http.Client

	mu     sync.Mutex
	listed time.Time
	scope  string // "" when the sandbox has no memory
}

func newMemoryTools(router string, c *http.Client) *memoryTools {
	return &memoryTools{router: strings.TrimRight(router, "/"), http: c}
}

// offered returns remember and recall when the sandbox has memory.
func (m *memoryTools) offered(ctx context.Context) []openai.ChatCompletionToolUnionParam {
	m.mu.Lock()
	defer m.mu.Unlock()
	if time.Since(m.listed) > mcpRefresh {
		m.listed, m.scope = time.Now(), ""
		var info struct {
			Scope string `json:"scope"`
		}
		if status, err := m.do(ctx, http.MethodGet, MemoryPath, nil, &info); err == nil && status == http.StatusOK {
			m.scope = info.Scope
		}
	}
	if m.scope == "" {
		return nil
	}
	str := func(d string) map[string]any { return map[string]any{"type": "string", "description": d} }
	return []openai.ChatCompletionToolUnionParam{
		openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{Name: "remember",
			Description: openai.String("Store a fact in long-term memory, to recall in later conversations."),
			Parameters:  shared.FunctionParameters{"type": "object", "properties": map[string]any{"fact": str("the fact to remember")}, "required": []string{"fact"}}}),
		openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{Name: "recall",
			Description: openai.String("Search long-term memory for facts relevant to a question."),
			Parameters:  shared.FunctionParameters{"type": "object", "properties": map[string]any{"query": str("what to look for")}, "required": []string{"query"}}}),
	}
}

func (m *memoryTools) has(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.scope != "" && (name == "remember" || name == "recall")
}

// call runs remember or recall through the router.
func (m *memoryTools) call(ctx context.Context, session string, call ToolCall) ToolCall {
	var args map[string]string
	if err := json.Unmarshal([]byte(call.Arguments), &args); err != nil {
		call.Decision, call.Reason = "deny", "arguments are not a JSON object of strings"
		return call
	}
	m.mu.Lock()
	principal := ""
	if m.scope != "agent" {
		principal = session
	}
	m.mu.Unlock()
	var status int
	var err error
	var out struct {
		Content  string `json:"content"`
		Memories []struct {
			Content string `json:"content"`
		} `json:"memories"`
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if call.Name == "remember" {
		status, err = m.do(ctx, http.MethodPost, MemoryPath+"/memories", map[string]string{"content": args["fact"], "principal": principal}, &out)
	} else {
		status, err = m.do(ctx, http.MethodPost, MemoryPath+"/search", map[string]string{"query": args["query"], "principal": principal}, &out)
	}
	switch {
	case err != nil:
		call.Decision, call.Reason = "deny", "no answer from the router: "+err.Error()
	case status == http.StatusForbidden || status == http.StatusTooManyRequests || status == http.StatusBadRequest:
		call.Decision, call.Reason = "deny", out.Error.Message
	case status != http.StatusOK:
		call.Decision, call.Result = "allow", "error: "+out.Error.Message
	case call.Name == "remember":
		call.Decision, call.Result = "allow", "remembered: "+out.Content
	default:
		var facts []string
		for _, f := range out.Memories {
			facts = append(facts, f.Content)
		}
		call.Decision, call.Result = "allow", "nothing remembered about that"
		if len(facts) > 0 {
			call.Result = "remembered facts:\n- " + strings.Join(facts, "\n- ")
		}
	}
	return call
}

func (m *memoryTools) do(ctx context.Context, method, path string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, m.router+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := m.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if err := json.Unmarshal(raw, out); err != nil && resp.StatusCode == http.StatusOK {
		return resp.StatusCode, fmt.Errorf("the router answered %s", raw)
	}
	return resp.StatusCode, nil
}

type sessionKey struct{}

func withSession(ctx context.Context, s string) context.Context {
	return context.WithValue(ctx, sessionKey{}, s)
}

func sessionOf(ctx context.Context) string {
	s, _ := ctx.Value(sessionKey{}).(string)
	return s
}
