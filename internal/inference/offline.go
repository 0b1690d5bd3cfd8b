package inference

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"
)

// OfflineModel is the model id of the built-in offline model.
const OfflineModel = "kars-offline"

// OfflineBaseURL addresses the offline model. The .invalid TLD (RFC 2606)
// guarantees that a request which somehow missed OfflineTransport cannot
// reach a real host.
const OfflineBaseURL = "http://kars-offline.invalid/v1"

// offlinePrefix labels every offline reply so nobody mistakes it for a model.
const offlinePrefix = "[kars-offline] "

// OfflineTransport is the Offline provider: an http.RoundTripper that
// answers OpenAI chat completions and embeddings in-process, with
// deterministic text and realistic usage, so that `kars dev` works end to end
// (tools, budgets, audit) with no credentials and no network.
//
// Chat behaviour: when the last message is a tool result, it answers with
// that result; when the last user message names one of the request's tools,
// it requests a call to that tool; otherwise it echoes the user's message.
type OfflineTransport struct{}

type offlineMessage struct {
	Role       string          `json:"role"`
	Content    json.RawMessage `json:"content"`
	ToolCallID string          `json:"tool_call_id"`
	ToolCalls  []struct {
		ID       string `json:"id"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	} `json:"tool_calls"`
}

type offlineTool struct {
	Type     string `json:"type"`
	Function struct {
		Name       string `json:"name"`
		Parameters struct {
			Properties map[string]struct {
				Type string `json:"type"`
			} `json:"properties"`
			Required []string `json:"required"`
		} `json:"parameters"`
	} `json:"function"`
}

type offlineChatRequest struct {
	Messages      []offlineMessage `json:"messages"`
	Tools         []offlineTool    `json:"tools"`
	Stream        bool             `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// RoundTrip answers the request without I/O.
func (OfflineTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		b, err := io.ReadAll(io.LimitReader(req.Body, 64<<20))
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		body = b
	}
	switch strings.TrimPrefix(req.URL.Path, "/v1") {
	case "/chat/completions":
		return offlineChat(req, body), nil
	case "/embeddings":
		return offlineEmbeddings(req, body), nil
	case "/messages":
		return offlineMessages(req, body), nil
	}
	return offlineJSON(req, http.StatusNotFound, map[string]any{"error": map[string]any{
		"message": "the offline model serves only chat completions and embeddings", "type": "invalid_request_error", "code": "kars_offline_unsupported"}}), nil
}

// contentText flattens a message's content (a string or an array of parts).
func contentText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if json.Unmarshal(raw, &parts) == nil {
		var b strings.Builder
		for _, p := range parts {
			b.WriteString(p.Text)
		}
		return b.String()
	}
	return ""
}

// countTokens approximates a tokenizer: about four characters per token,
// at least one per word-ish run, so that usage looks like a real model's.
func countTokens(s string) int64 {
	if s == "" {
		return 0
	}
	return max(int64(len(strings.Fields(s))), int64(len(s)+3)/4)
}

type offlineReply struct {
	text     string
	toolName string
	toolArgs string
	toolID   string
}

func offlineAnswer(r *offlineChatRequest) offlineReply {
	if len(r.Messages) == 0 {
		return offlineReply{text: offlinePrefix + "The request has no messages."}
	}
	last := r.Messages[len(r.Messages)-1]
	if last.Role == "tool" {
		name := "tool"
		for _, m := range r.Messages {
			for _, tc := range m.ToolCalls {
				if tc.ID == last.ToolCallID {
					name = "tool " + tc.Function.Name
				}
			}
		}
		return offlineReply{text: offlinePrefix + "The " + name + " returned: " + contentText(last.Content)}
	}
	// The user's turn is every user message since the model last spoke:
	// some runtimes (OpenClaw) append context of their own after it.
	var parts []string
	for i := len(r.Messages) - 1; i >= 0 && r.Messages[i].Role != "assistant"; i-- {
		if r.Messages[i].Role == "user" {
			parts = append([]string{contentText(r.Messages[i].Content)}, parts...)
		}
	}
	user := strings.Join(parts, "\n")
	lower := strings.ToLower(user)
	for _, t := range r.Tools {
		name := t.Function.Name
		if name == "" || !strings.Contains(lower, strings.ToLower(name)) {
			continue
		}
		args := map[string]any{}
		for _, p := range t.Function.Parameters.Required {
			if prop, ok := t.Function.Parameters.Properties[p]; ok && (prop.Type == "string" || prop.Type == "") {
				args[p] = user
			}
		}
		a, _ := json.Marshal(args)
		sum := sha256.Sum256([]byte(name + "\x00" + user))
		return offlineReply{toolName: name, toolArgs: string(a), toolID: "call_offline_" + hex.EncodeToString(sum[:6])}
	}
	if len(user) > 400 {
		user = user[:400] + "…"
	}
	return offlineReply{text: offlinePrefix + "This is the offline model: no inference credentials are configured, so I can only echo. You said: " + user}
}

func offlineChat(req *http.Request, body []byte) *http.Response {
	var r offlineChatRequest
	if err := json.Unmarshal(body, &r); err != nil {
		return offlineJSON(req, http.StatusBadRequest, map[string]any{"error": map[string]any{
			"message": "invalid chat completion request: " + err.Error(), "type": "invalid_request_error", "code": nil}})
	}
	ans := offlineAnswer(&r)
	var prompt int64
	for _, m := range r.Messages {
		prompt += 4 + countTokens(contentText(m.Content)) // per-message framing, as OpenAI counts it
	}
	completion := countTokens(ans.text) + countTokens(ans.toolName) + countTokens(ans.toolArgs)
	usage := map[string]any{"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
	sum := sha256.Sum256(body)
	id := "chatcmpl-offline-" + hex.EncodeToString(sum[:8])
	created := time.Now().Unix()
	finish := "stop"
	message := map[string]any{"role": "assistant", "content": ans.text, "refusal": nil}
	var toolCalls []map[string]any
	if ans.toolName != "" {
		finish = "tool_calls"
		toolCalls = []map[string]any{{"index": 0, "id": ans.toolID, "type": "function",
			"function": map[string]any{"name": ans.toolName, "arguments": ans.toolArgs}}}
		message["content"] = nil
		message["tool_calls"] = toolCalls
	}
	if !r.Stream {
		return offlineJSON(req, http.StatusOK, map[string]any{
			"id": id, "object": "chat.completion", "created": created, "model": OfflineModel,
			"choices": []any{map[string]any{"index": 0, "message": message, "finish_reason": finish, "logprobs": nil}},
			"usage":   usage, "system_fingerprint": "kars-offline",
		})
	}
	var buf bytes.Buffer
	chunk := func(choices []any, u any) {
		b, _ := json.Marshal(map[string]any{"id": id, "object": "chat.completion.chunk", "created": created,
			"model": OfflineModel, "choices": choices, "usage": u, "system_fingerprint": "kars-offline"})
		fmt.Fprintf(&buf, "data: %s\n\n", b)
	}
	delta := func(d map[string]any, fin any) []any {
		return []any{map[string]any{"index": 0, "delta": d, "finish_reason": fin, "logprobs": nil}}
	}
	chunk(delta(map[string]any{"role": "assistant", "content": ""}, nil), nil)
	if toolCalls != nil {
		chunk(delta(map[string]any{"tool_calls": toolCalls}, nil), nil)
	} else {
		words := strings.SplitAfter(ans.text, " ")
		for _, w := range words {
			chunk(delta(map[string]any{"content": w}, nil), nil)
		}
	}
	chunk(delta(map[string]any{}, finish), nil)
	if r.StreamOptions != nil && r.StreamOptions.IncludeUsage {
		chunk([]any{}, usage)
	}
	buf.WriteString("data: [DONE]\n\n")
	return offlineResponse(req, http.StatusOK, "text/event-stream", buf.Bytes())
}

func offlineEmbeddings(req *http.Request, body []byte) *http.Response {
	var r struct {
		Input json.RawMessage `json:"input"`
	}
	var inputs []string
	if err := json.Unmarshal(body, &r); err == nil {
		var one string
		if json.Unmarshal(r.Input, &one) == nil {
			inputs = []string{one}
		} else if json.Unmarshal(r.Input, &inputs) != nil {
			inputs = nil
		}
	}
	if len(inputs) == 0 {
		return offlineJSON(req, http.StatusBadRequest, map[string]any{"error": map[string]any{
			"message": "input must be a non-empty string or array of strings", "type": "invalid_request_error", "code": nil}})
	}
	var data []any
	var tokens int64
	for i, in := range inputs {
		tokens += countTokens(in)
		data = append(data, map[string]any{"object": "embedding", "index": i, "embedding": offlineVector(in)})
	}
	return offlineJSON(req, http.StatusOK, map[string]any{"object": "list", "data": data, "model": OfflineModel,
		"usage": map[string]any{"prompt_tokens": tokens, "total_tokens": tokens}})
}

// offlineVector is a deterministic unit vector derived from the text's hash:
// equal texts embed equally, which is all a dev loop needs.
func offlineVector(s string) []float64 {
	const dims = 64
	v := make([]float64, dims)
	var norm float64
	for i := 0; i < dims; i += 8 {
		sum := sha256.Sum256([]byte(fmt.Sprintf("%d\x00%s", i, s)))
		for j := 0; j < 8; j++ {
			x := float64(int16(binary.BigEndian.Uint16(sum[2*j:]))) / math.MaxInt16
			v[i+j] = x
			norm += x * x
		}
	}
	norm = math.Sqrt(norm)
	for i := range v {
		v[i] /= norm
	}
	return v
}

func offlineJSON(req *http.Request, status int, v any) *http.Response {
	b, _ := json.Marshal(v)
	return offlineResponse(req, status, "application/json", b)
}

func offlineResponse(req *http.Request, status int, ctype string, body []byte) *http.Response {
	return &http.Response{
		StatusCode: status, Status: fmt.Sprintf("%d %s", status, http.StatusText(status)),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {ctype}},
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
}
