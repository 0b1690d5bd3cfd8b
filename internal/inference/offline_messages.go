package inference

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// The offline model's Anthropic Messages API, so that a runtime speaking
// Anthropic's dialect works under `kars dev` without credentials too. It
// behaves as the chat completions side does: a tool_result is answered
// with its content, a user turn naming one of the request's tools gets a
// tool_use of it, anything else is echoed.

type offlineBlock struct {
	Type      string          `json:"type"`
	Text      string          `json:"text"`
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	ToolUseID string          `json:"tool_use_id"`
	Content   json.RawMessage `json:"content"`
}

type offlineAnthropicMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

func (m offlineAnthropicMessage) blocks() []offlineBlock {
	var s string
	if json.Unmarshal(m.Content, &s) == nil {
		return []offlineBlock{{Type: "text", Text: s}}
	}
	var bs []offlineBlock
	_ = json.Unmarshal(m.Content, &bs)
	return bs
}

type offlineMessagesRequest struct {
	Messages []offlineAnthropicMessage `json:"messages"`
	Tools    []struct {
		Name        string `json:"name"`
		InputSchema struct {
			Properties map[string]struct {
				Type string `json:"type"`
			} `json:"properties"`
			Required []string `json:"required"`
		} `json:"input_schema"`
	} `json:"tools"`
	Stream bool `json:"stream"`
}

func offlineMessagesAnswer(r *offlineMessagesRequest) offlineReply {
	if len(r.Messages) == 0 {
		return offlineReply{text: offlinePrefix + "The request has no messages."}
	}
	last := r.Messages[len(r.Messages)-1]
	var results, texts []string
	for _, b := range last.blocks() {
		switch b.Type {
		case "tool_result":
			name := "tool"
			for _, m := range r.Messages {
				for _, u := range m.blocks() {
					if u.Type == "tool_use" && u.ID == b.ToolUseID {
						name = "tool " + u.Name
					}
				}
			}
			results = append(results, "The "+name+" returned: "+contentText(b.Content))
		case "text":
			texts = append(texts, b.Text)
		}
	}
	if len(results) > 0 {
		return offlineReply{text: offlinePrefix + strings.Join(results, " ")}
	}
	user := strings.Join(texts, "\n")
	lower := strings.ToLower(user)
	for _, t := range r.Tools {
		if t.Name == "" || !strings.Contains(lower, strings.ToLower(t.Name)) {
			continue
		}
		args := map[string]any{}
		for _, p := range t.InputSchema.Required {
			if prop, ok := t.InputSchema.Properties[p]; ok && (prop.Type == "string" || prop.Type == "") {
				args[p] = user
			}
		}
		a, _ := json.Marshal(args)
		sum := sha256.Sum256([]byte(t.Name + "\x00" + user))
		return offlineReply{toolName: t.Name, toolArgs: string(a), toolID: "toolu_offline_" + hex.EncodeToString(sum[:6])}
	}
	if len(user) > 400 {
		user = user[:400] + "…"
	}
	return offlineReply{text: offlinePrefix + "This is the offline model: no inference credentials are configured, so I can only echo. You said: " + user}
}

func offlineMessages(req *http.Request, body []byte) *http.Response {
	var r offlineMessagesRequest
	if err := json.Unmarshal(body, &r); err != nil {
		return offlineJSON(req, http.StatusBadRequest, map[string]any{"type": "error", "error": map[string]any{
			"type": "invalid_request_error", "message": "invalid messages request: " + err.Error()}})
	}
	ans := offlineMessagesAnswer(&r)
	var prompt int64
	for _, m := range r.Messages {
		prompt += 4 + countTokens(string(m.Content))
	}
	completion := countTokens(ans.text) + countTokens(ans.toolName) + countTokens(ans.toolArgs)
	sum := sha256.Sum256(body)
	id := "msg_offline_" + hex.EncodeToString(sum[:8])
	content := []any{map[string]any{"type": "text", "text": ans.text}}
	stop := "end_turn"
	if ans.toolName != "" {
		content = []any{map[string]any{"type": "tool_use", "id": ans.toolID, "name": ans.toolName, "input": json.RawMessage(ans.toolArgs)}}
		stop = "tool_use"
	}
	msg := func(c []any, stop any, out int64) map[string]any {
		return map[string]any{"id": id, "type": "message", "role": "assistant", "model": OfflineModel, "content": c,
			"stop_reason": stop, "stop_sequence": nil, "usage": map[string]any{"input_tokens": prompt, "output_tokens": out}}
	}
	if !r.Stream {
		return offlineJSON(req, http.StatusOK, msg(content, stop, completion))
	}
	var buf bytes.Buffer
	ev := func(name string, v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintf(&buf, "event: %s\ndata: %s\n\n", name, b)
	}
	ev("message_start", map[string]any{"type": "message_start", "message": msg([]any{}, nil, 1)})
	if ans.toolName != "" {
		ev("content_block_start", map[string]any{"type": "content_block_start", "index": 0, "content_block": map[string]any{
			"type": "tool_use", "id": ans.toolID, "name": ans.toolName, "input": map[string]any{}}})
		ev("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0, "delta": map[string]any{"type": "input_json_delta", "partial_json": ans.toolArgs}})
	} else {
		ev("content_block_start", map[string]any{"type": "content_block_start", "index": 0, "content_block": map[string]any{"type": "text", "text": ""}})
		ev("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0, "delta": map[string]any{"type": "text_delta", "text": ans.text}})
	}
	ev("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0})
	ev("message_delta", map[string]any{"type": "message_delta", "delta": map[string]any{"stop_reason": stop, "stop_sequence": nil},
		"usage": map[string]any{"output_tokens": completion}})
	ev("message_stop", map[string]any{"type": "message_stop"})
	return offlineResponse(req, http.StatusOK, "text/event-stream", buf.Bytes())
}
