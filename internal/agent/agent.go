package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
)

// maxToolRounds bounds the model ↔ tool loop of one turn.
const maxToolRounds = 8

// Agent answers chat turns.
type Agent struct {
	cfg      Config
	llm      openai.Client
	http     *http.Client
	tools    map[string]Tool
	offered  []openai.ChatCompletionToolUnionParam
	sessions *sessions
	// mcp are the sandbox's MCP tools, through the router's gateway.
	mcp *mcpTools
	// memory offers remember and recall when the sandbox has a KarsMemory.
	memory *memoryTools
}

// New builds an agent from its configuration.
func New(cfg Config) (*Agent, error) {
	ss, err := newSessions(cfg.Workspace)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:      cfg,
		http:     &http.Client{Timeout: 5 * time.Minute},
		tools:    map[string]Tool{},
		sessions: ss,
	}
	// The key is a placeholder: the router drops it and injects the real
	// upstream credential, which this process never sees.
	a.mcp = newMCPTools(cfg.RouterURL, a.http)
	a.memory = newMemoryTools(cfg.RouterURL, a.http)
	a.llm = openai.NewClient(option.WithBaseURL(strings.TrimRight(cfg.RouterURL, "/")+"/v1"),
		option.WithAPIKey("kars-no-credential"), option.WithHTTPClient(a.http), option.WithMaxRetries(0))
	enabled := map[string]bool{}
	for _, t := range cfg.Tools {
		enabled[t] = true
	}
	for _, t := range append(builtinTools(), a.sendToAgentTool()) {
		if len(enabled) > 0 && !enabled[t.Name] {
			continue
		}
		a.tools[t.Name] = t
		a.offered = append(a.offered, openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
			Name: t.Name, Description: openai.String(t.Description), Parameters: shared.FunctionParameters(t.Params),
		}))
	}
	return a, nil
}

// Turn is the result of one chat turn.
type Turn struct {
	Session   string     `json:"session"`
	Reply     string     `json:"reply"`
	ToolCalls []ToolCall `json:"toolCalls,omitempty"`
	Model     string     `json:"model,omitempty"`
	Usage     Usage      `json:"usage"`
}

// Usage counts tokens of one turn, as the router reported them.
type Usage struct {
	PromptTokens     int64 `json:"promptTokens"`
	CompletionTokens int64 `json:"completionTokens"`
}

// UpstreamError is a refusal from the router (budget, rate limit, policy,
// content safety), kept with its status so the chat API can pass it on.
type UpstreamError struct {
	Status  int
	Message string
}

func (e *UpstreamError) Error() string {
	return fmt.Sprintf("router refused (%d): %s", e.Status, e.Message)
}

// Chat runs one turn of session: the user's message, any tool calls the
// model asks for (each decided by the router's policy first), and the reply.
// A message that starts with @peer goes to that peer (send_to_agent) and
// its answer is the reply.
func (a *Agent) Chat(ctx context.Context, session, message string) (*Turn, error) {
	return a.chat(ctx, session, message, true)
}

// chat is Chat; mesh says whether the send_to_agent tool is offered.
func (a *Agent) chat(ctx context.Context, session, message string, mesh bool) (*Turn, error) {
	if strings.TrimSpace(message) == "" {
		return nil, errors.New("empty message")
	}
	unlock := a.sessions.lock(session)
	defer unlock()
	ctx = withSession(ctx, session)
	history, err := a.sessions.load(session)
	if err != nil {
		return nil, err
	}
	if len(history) == 0 {
		history = append(history, Message{Role: "system", Content: a.cfg.Instructions})
	}
	history = append(history, Message{Role: "user", Content: message})
	turn := &Turn{Session: session}
	if peer, text, ok := a.addressed(message); ok && mesh {
		// Addressed to another agent: the user chose the tool, so no
		// model round is needed to choose it.
		args, _ := json.Marshal(map[string]string{"to": peer, "message": text})
		done := a.runTool(ctx, ToolCall{ID: "call_mention", Name: SendToAgentTool, Arguments: string(args)})
		turn.ToolCalls = append(turn.ToolCalls, done)
		turn.Reply = "@" + peer + ": " + toolMessage(done)
		history = append(history, Message{Role: "assistant", Content: turn.Reply})
		if err := a.sessions.save(session, history); err != nil {
			return nil, fmt.Errorf("save session: %w", err)
		}
		return turn, nil
	}
	offered := a.offered
	if !mesh {
		offered = a.offeredWithout(SendToAgentTool)
	}
	for round := 0; ; round++ {
		if round == maxToolRounds {
			return nil, fmt.Errorf("the model asked for tools %d times without answering", maxToolRounds)
		}
		resp, err := a.complete(ctx, history, offered)
		if err != nil {
			return nil, err
		}
		turn.Model = resp.Model
		turn.Usage.PromptTokens += resp.Usage.PromptTokens
		turn.Usage.CompletionTokens += resp.Usage.CompletionTokens
		if len(resp.Choices) == 0 {
			return nil, errors.New("the router returned no choices")
		}
		msg := resp.Choices[0].Message
		if len(msg.ToolCalls) == 0 {
			history = append(history, Message{Role: "assistant", Content: msg.Content})
			turn.Reply = msg.Content
			break
		}
		asked := Message{Role: "assistant", Content: msg.Content}
		for _, tc := range msg.ToolCalls {
			asked.ToolCalls = append(asked.ToolCalls, ToolCall{ID: tc.ID, Name: tc.Function.Name, Arguments: tc.Function.Arguments})
		}
		history = append(history, asked)
		for _, call := range asked.ToolCalls {
			done := a.runTool(ctx, call)
			turn.ToolCalls = append(turn.ToolCalls, done)
			history = append(history, Message{Role: "tool", ToolCallID: call.ID, Content: toolMessage(done)})
		}
	}
	if err := a.sessions.save(session, history); err != nil {
		return nil, fmt.Errorf("save session: %w", err)
	}
	return turn, nil
}

// offeredWithout is the offered tools except name.
func (a *Agent) offeredWithout(name string) []openai.ChatCompletionToolUnionParam {
	var out []openai.ChatCompletionToolUnionParam
	for _, t := range a.offered {
		if f := t.GetFunction(); f != nil && f.Name == name {
			continue
		}
		out = append(out, t)
	}
	return out
}

func toolMessage(c ToolCall) string {
	if c.Decision != "allow" {
		return fmt.Sprintf("policy %s: %s", c.Decision, c.Reason)
	}
	return c.Result
}

func (a *Agent) complete(ctx context.Context, history []Message, offered []openai.ChatCompletionToolUnionParam) (*openai.ChatCompletion, error) {
	tools := append(slices.Clone(offered), a.mcp.offered(ctx)...)
	tools = append(tools, a.memory.offered(ctx)...)
	params := openai.ChatCompletionNewParams{Model: a.cfg.Model, Tools: tools}
	for _, m := range history {
		params.Messages = append(params.Messages, toParam(m))
	}
	resp, err := a.llm.Chat.Completions.New(ctx, params)
	var apiErr *openai.Error
	if errors.As(err, &apiErr) {
		return nil, &UpstreamError{Status: apiErr.StatusCode, Message: apiErrorMessage(apiErr)}
	}
	return resp, err
}

func apiErrorMessage(e *openai.Error) string {
	if e.Message != "" {
		return e.Message
	}
	return strings.TrimSpace(e.RawJSON())
}

func toParam(m Message) openai.ChatCompletionMessageParamUnion {
	switch m.Role {
	case "system":
		return openai.SystemMessage(m.Content)
	case "tool":
		return openai.ToolMessage(m.Content, m.ToolCallID)
	case "assistant":
		p := openai.ChatCompletionAssistantMessageParam{}
		if m.Content != "" {
			p.Content.OfString = openai.String(m.Content)
		}
		for _, tc := range m.ToolCalls {
			p.ToolCalls = append(p.ToolCalls, openai.ChatCompletionMessageToolCallUnionParam{
				OfFunction: &openai.ChatCompletionMessageFunctionToolCallParam{
					ID:       tc.ID,
					Function: openai.ChatCompletionMessageFunctionToolCallFunctionParam{Name: tc.Name, Arguments: tc.Arguments},
				},
			})
		}
		return openai.ChatCompletionMessageParamUnion{OfAssistant: &p}
	default:
		return openai.UserMessage(m.Content)
	}
}

// runTool asks the router whether the call is allowed and runs it only if
// so. Any failure to get a decision denies the call.
func (a *Agent) runTool(ctx context.Context, call ToolCall) ToolCall {
	if t, ok := a.mcp.lookup(call.Name); ok {
		return a.mcp.call(ctx, t, call)
	}
	if a.memory.has(call.Name) {
		return a.memory.call(ctx, sessionOf(ctx), call)
	}
	var args map[string]any
	if err := json.Unmarshal([]byte(call.Arguments), &args); err != nil && call.Arguments != "" {
		call.Decision, call.Reason = "deny", "arguments are not a JSON object"
		return call
	}
	d, err := a.decide(ctx, "tool:"+call.Name, args)
	if err != nil {
		call.Decision, call.Reason = "deny", "no policy decision: "+err.Error()
		return call
	}
	call.Decision, call.Reason = d.Decision, d.Reason
	if d.Decision != "allow" {
		return call
	}
	tool, ok := a.tools[call.Name]
	if !ok {
		call.Result = "error: no such tool " + call.Name
		return call
	}
	out, err := tool.Run(a.cfg.Workspace, args)
	if err != nil {
		out = "error: " + err.Error()
	}
	call.Result = out
	return call
}

// Decision is the router's answer to a decide request.
type Decision struct {
	Decision string `json:"decision"`
	Rule     string `json:"rule,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// DecidePath is the router endpoint that evaluates an agent action against
// the sandbox's policy and audits it.
const DecidePath = "/kars/v1/decide"

func (a *Agent) decide(ctx context.Context, action string, args map[string]any) (*Decision, error) {
	// awaitApproval: a call that needs a person's approval is held by the
	// router until it is decided (docs/router.md, "Approvals"); the 5-minute
	// client timeout outlasts the router's default hold of 2 minutes.
	body, err := json.Marshal(map[string]any{"action": action, "args": args, "awaitApproval": true})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(a.cfg.RouterURL, "/")+DecidePath, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("router answered %d: %s", resp.StatusCode, strings.TrimSpace(string(raw)))
	}
	var d Decision
	if err := json.Unmarshal(raw, &d); err != nil || d.Decision == "" {
		return nil, fmt.Errorf("router sent no decision: %s", strings.TrimSpace(string(raw)))
	}
	return &d, nil
}

// History returns a session's messages.
func (a *Agent) History(session string) ([]Message, error) {
	unlock := a.sessions.lock(session)
	defer unlock()
	return a.sessions.load(session)
}

// Forget deletes a session.
func (a *Agent) Forget(session string) error {
	unlock := a.sessions.lock(session)
	defer unlock()
	return a.sessions.remove(session)
}
