package fakeprovider

import (
	"net/http"
	"strings"

	"github.com/tidwall/gjson"
)

// anthropic serves the Messages API: a message object, or the event
// sequence message_start, content_block_start, ping, content_block_delta…,
// content_block_stop, message_delta (with cumulative output_tokens),
// message_stop.
func (s *Server) anthropic(w http.ResponseWriter, r *http.Request) {
	req, err := readRequest(r)
	if err != nil {
		anthropicError(w, http.StatusBadRequest, "invalid_request_error", err.Error())
		return
	}
	if !gjson.GetBytes(req.body, "max_tokens").Exists() {
		anthropicError(w, http.StatusBadRequest, "invalid_request_error", "max_tokens: Field required")
		return
	}
	prompt, completion := s.usage(req)
	text := words(completion, r, req.dirs)
	model := req.model
	message := func(content []any, stop any, out int64) map[string]any {
		return map[string]any{"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": content,
			"stop_reason": stop, "stop_sequence": nil,
			"usage": map[string]any{"input_tokens": prompt, "output_tokens": out, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
	}
	s.count(prompt, completion)
	if !req.stream {
		writeJSON(w, http.StatusOK, message([]any{map[string]any{"type": "text", "text": strings.Join(text, "")}}, "end_turn", completion))
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	sse(w, "message_start", map[string]any{"type": "message_start", "message": message([]any{}, nil, 1)})
	sse(w, "content_block_start", map[string]any{"type": "content_block_start", "index": 0, "content_block": map[string]any{"type": "text", "text": ""}})
	sse(w, "ping", map[string]any{"type": "ping"})
	_, broken := req.dirs["break"]
	for i, t := range text {
		if i == 2 && broken {
			panic(http.ErrAbortHandler)
		}
		sse(w, "content_block_delta", map[string]any{"type": "content_block_delta", "index": 0, "delta": map[string]any{"type": "text_delta", "text": t}})
	}
	sse(w, "content_block_stop", map[string]any{"type": "content_block_stop", "index": 0})
	sse(w, "message_delta", map[string]any{"type": "message_delta", "delta": map[string]any{"stop_reason": "end_turn", "stop_sequence": nil},
		"usage": map[string]any{"output_tokens": completion}})
	sse(w, "message_stop", map[string]any{"type": "message_stop"})
}

func anthropicError(w http.ResponseWriter, status int, typ, msg string) {
	writeJSON(w, status, map[string]any{"type": "error", "error": map[string]any{"type": typ, "message": msg}})
}
