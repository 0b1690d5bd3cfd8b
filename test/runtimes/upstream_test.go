package runtimes

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// script is the conversation the fake model drives in every runtime's
// test, one tool call per round so that every framework's loop is
// exercised the same way: write a file the policy allows, write one it
// denies, compute 6*7, then answer with what the tools returned.
var script = []struct {
	tool string
	args map[string]any
}{
	{"write_file", map[string]any{"path": "notes.txt", "content": "allowed by policy"}},
	{"write_file", map[string]any{"path": "secret.txt", "content": "must never be written"}},
	{"calculator", map[string]any{"expression": "6*7"}},
}

// upstream is a fake model provider speaking the real wire formats —
// OpenAI Chat Completions (JSON and SSE) and Anthropic Messages — that
// asks for the script's tool calls and then answers with the tool results
// it was sent. It records what it saw so the test can check what reached
// the model and with which credential.
type upstream struct {
	t   *testing.T
	key string

	mu       sync.Mutex
	requests []seen

	prompt, completion atomic.Int64
	srv                *httptest.Server
	// answerOnly skips the script: every request is answered with text.
	answerOnly bool
}

// seen is one request the fake received.
type seen struct {
	path   string
	header http.Header
	// results are the tool results (or refusals) in the request, in order.
	results []string
}

func newUpstream(t *testing.T, key string) *upstream {
	u := &upstream{t: t, key: key}
	u.srv = httptest.NewServer(u)
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) seenRequests() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seen(nil), u.requests...)
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	switch r.URL.Path {
	case "/v1/chat/completions":
		if r.Header.Get("Authorization") != "Bearer "+u.key {
			http.Error(w, `{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","code":"invalid_api_key"}}`, http.StatusUnauthorized)
			return
		}
		u.openAI(w, r, body)
	case "/v1/messages":
		if r.Header.Get("X-Api-Key") != u.key || r.Header.Get("Anthropic-Version") == "" {
			http.Error(w, `{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}`, http.StatusUnauthorized)
			return
		}
		u.anthropic(w, r, body)
	default:
		http.Error(w, `{"error":{"message":"Unknown request URL: `+r.URL.Path+`","type":"invalid_request_error"}}`, http.StatusNotFound)
	}
}

// round returns how many tool results follow the last user message, and
// those results' texts.
func openAIRound(req map[string]any) (int, []string) {
	msgs, _ := req["messages"].([]any)
	var results []string
	for _, m := range msgs {
		mm, _ := m.(map[string]any)
		switch mm["role"] {
		case "user":
			results = nil
		case "tool":
			results = append(results, contentText(mm["content"]))
		}
	}
	return len(results), results
}

func contentText(c any) string {
	switch v := c.(type) {
	case string:
		return v
	case []any:
		var b strings.Builder
		for _, p := range v {
			if pm, ok := p.(map[string]any); ok {
				if t, ok := pm["text"].(string); ok {
					b.WriteString(t)
				} else if inner, ok := pm["content"]; ok {
					b.WriteString(contentText(inner))
				}
			}
		}
		return b.String()
	}
	return ""
}

// usage is the fake's deterministic accounting: prompt tokens grow with
// the request, completion tokens are fixed per reply.
func (u *upstream) usage(body []byte) (int64, int64) {
	p, c := int64(len(body)/10+1), int64(9)
	u.prompt.Add(p)
	u.completion.Add(c)
	return p, c
}

// record notes a request and returns a response id unique to it, as real
// providers do (frameworks key messages by it).
func (u *upstream) record(r *http.Request, results []string) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.requests = append(u.requests, seen{path: r.URL.Path, header: r.Header.Clone(), results: results})
	return fmt.Sprintf("fake-%d", len(u.requests))
}

func finalText(results []string) string {
	return "Done. The tools said: " + strings.Join(results, " | ")
}

func (u *upstream) openAI(w http.ResponseWriter, r *http.Request, body []byte) {
	var req map[string]any
	if err := json.Unmarshal(body, &req); err != nil {
		http.Error(w, `{"error":{"message":"bad json"}}`, http.StatusBadRequest)
		return
	}
	n, results := openAIRound(req)
	if u.answerOnly {
		n = len(script)
	}
	id := u.record(r, results)
	prompt, completion := u.usage(body)
	model, _ := req["model"].(string)
	msg := map[string]any{"role": "assistant", "content": nil}
	finish := "tool_calls"
	var call map[string]any
	if n < len(script) {
		args, _ := json.Marshal(script[n].args)
		call = map[string]any{"id": fmt.Sprintf("call_%d", n), "type": "function",
			"function": map[string]any{"name": script[n].tool, "arguments": string(args)}}
		msg["tool_calls"] = []any{call}
	} else {
		msg["content"] = finalText(results)
		finish = "stop"
	}
	usage := map[string]any{"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
	if stream, _ := req["stream"].(bool); !stream {
		writeJSON(w, map[string]any{"id": "chatcmpl-" + id, "object": "chat.completion", "created": 1700000000, "model": model,
			"choices": []any{map[string]any{"index": 0, "message": msg, "finish_reason": finish, "logprobs": nil}}, "usage": usage})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	chunk := func(delta map[string]any, fin any, u any) {
		c := map[string]any{"id": "chatcmpl-" + id, "object": "chat.completion.chunk", "created": 1700000000, "model": model,
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": fin, "logprobs": nil}}}
		if u != nil {
			c["choices"], c["usage"] = []any{}, u
		}
		b, _ := json.Marshal(c)
		fmt.Fprintf(w, "data: %s\n\n", b)
	}
	chunk(map[string]any{"role": "assistant", "content": ""}, nil, nil)
	if call != nil {
		call["index"] = 0
		chunk(map[string]any{"tool_calls": []any{call}}, nil, nil)
	} else {
		chunk(map[string]any{"content": msg["content"]}, nil, nil)
	}
	chunk(map[string]any{}, finish, nil)
	if so, _ := req["stream_options"].(map[string]any); so["include_usage"] == true {
		chunk(nil, nil, usage)
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
}

func (u *upstream) anthropic(w http.ResponseWriter, r *http.Request, body []byte) {
	var req map[string]any
	if err := json.Unmarshal(body, &req); err != nil {
		http.Error(w, `{"type":"error","error":{"type":"invalid_request_error","message":"bad json"}}`, http.StatusBadRequest)
		return
	}
	msgs, _ := req["messages"].([]any)
	var results []string
	for _, m := range msgs {
		mm, _ := m.(map[string]any)
		if mm["role"] != "user" {
			continue
		}
		blocks, isBlocks := mm["content"].([]any)
		var toolResults []string
		for _, b := range blocks {
			if bm, _ := b.(map[string]any); bm["type"] == "tool_result" {
				toolResults = append(toolResults, contentText(bm["content"]))
			}
		}
		if !isBlocks || len(toolResults) == 0 {
			results = nil // a user turn
			continue
		}
		results = append(results, toolResults...)
	}
	id := u.record(r, results)
	prompt, completion := u.usage(body)
	n := len(results)
	var content []any
	stop := "tool_use"
	if n < len(script) {
		content = []any{map[string]any{"type": "tool_use", "id": fmt.Sprintf("toolu_%d", n), "name": script[n].tool, "input": script[n].args}}
	} else {
		content = []any{map[string]any{"type": "text", "text": finalText(results)}}
		stop = "end_turn"
	}
	writeJSON(w, map[string]any{"id": "msg_" + id, "type": "message", "role": "assistant", "model": req["model"], "content": content,
		"stop_reason": stop, "stop_sequence": nil, "usage": map[string]any{"input_tokens": prompt, "output_tokens": completion}})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
