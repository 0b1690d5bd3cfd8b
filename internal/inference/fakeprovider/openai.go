package fakeprovider

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/gjson"
)

// request is what the fake needs from an OpenAI-style body.
type request struct {
	body      []byte
	model     string
	stream    bool
	maxTokens int64
	// background is a Responses API call the service queues and runs
	// later: the answer has status "queued" and no usage yet.
	background bool
	dirs       directives
}

func readRequest(r *http.Request) (request, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		return request{}, err
	}
	if !gjson.ValidBytes(body) {
		return request{}, errors.New("we could not parse the JSON body of your request")
	}
	g := gjson.ParseBytes(body)
	req := request{body: body, model: g.Get("model").Str, stream: g.Get("stream").Bool(), dirs: parseDirectives(body),
		background: g.Get("background").Type == gjson.True}
	for _, k := range []string{"max_tokens", "max_completion_tokens", "max_output_tokens"} {
		if v := g.Get(k).Int(); v > 0 {
			req.maxTokens = v
		}
	}
	return req, nil
}

// usage is the fake's deterministic token accounting: prompt tokens are an
// eighth of the body (below the router's quarter estimate, as real
// tokenizers are), completion tokens are the configured count capped by the
// request's max tokens.
func (s *Server) usage(req request) (prompt, completion int64) {
	prompt = max(1, int64(len(req.body))/8)
	completion = s.CompletionTokens
	if completion == 0 {
		completion = 12
	}
	if req.maxTokens > 0 {
		completion = min(completion, req.maxTokens)
	}
	return prompt, completion
}

func (s *Server) count(prompt, completion int64) {
	s.PromptTokensSum.Add(prompt)
	s.CompletionTokensSum.Add(completion)
}

// words returns n one-token words of reply text.
func words(n int64, r *http.Request, dirs directives) []string {
	out := make([]string, 0, n)
	if _, ok := dirs["echo-auth"]; ok {
		out = append(out, "auth="+r.Header.Get("Authorization")+" api-key="+r.Header.Get("Api-Key")+" x-api-key="+r.Header.Get("X-Api-Key")+" ")
	}
	for i := int64(len(out)); i < n; i++ {
		out = append(out, "tok"+strconv.FormatInt(i, 10)+" ")
	}
	return out
}

func severities(dirs directives) map[string]any {
	out := map[string]any{}
	for _, c := range []string{"hate", "self_harm", "sexual", "violence"} {
		sev := "safe"
		if v, ok := dirs[c]; ok {
			sev = v
		}
		out[c] = map[string]any{"filtered": sev == "high", "severity": sev}
	}
	return out
}

// promptFilterResults is Azure's prompt annotation, Prompt Shields included
// unless #fake:noshields.
func promptFilterResults(dirs directives) []any {
	cfr := map[string]any{}
	for _, c := range []string{"hate", "self_harm", "sexual", "violence"} {
		cfr[c] = map[string]any{"filtered": false, "severity": "safe"}
	}
	if _, ok := dirs["noshields"]; !ok {
		_, jb := dirs["jailbreak"]
		cfr["jailbreak"] = map[string]any{"filtered": jb, "detected": jb}
		if _, ia := dirs["indirect"]; ia {
			cfr["indirect_attack"] = map[string]any{"filtered": true, "detected": true}
		}
	}
	return []any{map[string]any{"prompt_index": 0, "content_filter_results": cfr}}
}

func completionFilterResults(dirs directives) map[string]any {
	cfr := severities(dirs)
	cfr["protected_material_code"] = map[string]any{"filtered": false, "detected": false}
	cfr["protected_material_text"] = map[string]any{"filtered": false, "detected": false}
	return cfr
}

// openAI serves chat/completions, completions, embeddings and responses, in
// Azure's annotated form when azure is true.
func (s *Server) openAI(w http.ResponseWriter, r *http.Request, op string, azure bool) {
	req, err := readRequest(r)
	if err != nil {
		openAIError(w, http.StatusBadRequest, "invalid_request_error", "", err.Error())
		return
	}
	if v, ok := req.dirs["status"]; ok {
		code, _ := strconv.Atoi(v)
		if azure {
			azureError(w, code, strconv.Itoa(code), fmt.Sprintf("fake status %d", code), nil)
		} else {
			openAIError(w, code, "server_error", "", fmt.Sprintf("fake status %d", code))
		}
		return
	}
	if _, ok := req.dirs["refuse"]; ok && azure {
		inner := map[string]any{"code": "ResponsibleAIPolicyViolation", "content_filter_result": map[string]any{
			"hate": map[string]any{"filtered": true, "severity": "high"}, "jailbreak": map[string]any{"filtered": false, "detected": false},
			"self_harm": map[string]any{"filtered": false, "severity": "safe"}, "sexual": map[string]any{"filtered": false, "severity": "safe"},
			"violence": map[string]any{"filtered": false, "severity": "safe"}}}
		azureError(w, http.StatusBadRequest, "content_filter", "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry.", inner)
		return
	}
	model := req.model
	if model == "" {
		model = "gpt-4.1-2025-04-14"
	}
	prompt, completion := s.usage(req)
	switch op {
	case "embeddings":
		s.count(prompt, 0)
		writeJSON(w, http.StatusOK, map[string]any{"object": "list", "model": model,
			"data":  []any{map[string]any{"object": "embedding", "index": 0, "embedding": []float64{0.0023064255, -0.009327292, 0.015797347}}},
			"usage": map[string]any{"prompt_tokens": prompt, "total_tokens": prompt}})
	case "responses":
		s.responses(w, r, req, model, prompt, completion)
	case "chat/completions", "completions":
		if req.stream {
			s.chatStream(w, r, req, op, model, azure, prompt, completion)
			return
		}
		s.count(prompt, completion)
		text := strings.Join(words(completion, r, req.dirs), "")
		choice := map[string]any{"index": 0, "finish_reason": "stop", "logprobs": nil}
		obj := "chat.completion"
		if op == "completions" {
			obj = "text_completion"
			choice["text"] = text
		} else {
			choice["message"] = map[string]any{"role": "assistant", "content": text, "refusal": nil}
		}
		resp := map[string]any{"id": "chatcmpl-fake", "object": obj, "created": time.Now().Unix(), "model": model,
			"system_fingerprint": "fp_fake", "choices": []any{choice},
			"usage": map[string]any{"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}
		if _, ok := req.dirs["nousage"]; ok {
			delete(resp, "usage")
		}
		if azure {
			choice["content_filter_results"] = completionFilterResults(req.dirs)
			resp["prompt_filter_results"] = promptFilterResults(req.dirs)
		}
		if _, ok := req.dirs["echo-auth"]; ok {
			w.Header().Set("X-Echo-Auth", r.Header.Get("Authorization")+r.Header.Get("Api-Key"))
		}
		w.Header().Set("X-Request-Id", "req_fake")
		writeJSON(w, http.StatusOK, resp)
	default:
		openAIError(w, http.StatusNotFound, "invalid_request_error", "unknown_url", "Unknown request URL")
	}
}

// sse writes one event and flushes.
func sse(w http.ResponseWriter, event string, v any) {
	b, _ := json.Marshal(v)
	if event != "" {
		fmt.Fprintf(w, "event: %s\n", event)
	}
	fmt.Fprintf(w, "data: %s\n\n", b)
	w.(http.Flusher).Flush()
}

// chatStream streams chat.completion.chunk events the way Azure and OpenAI
// do: a role chunk, content chunks, a finish chunk, the usage chunk when
// stream_options.include_usage is set, then [DONE]. Azure adds a leading
// prompt_filter_results chunk and per-chunk content_filter_results.
func (s *Server) chatStream(w http.ResponseWriter, r *http.Request, req request, op, model string, azure bool, prompt, completion int64) {
	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	created := time.Now().Unix()
	obj := "chat.completion.chunk"
	if op == "completions" {
		obj = "text_completion"
	}
	chunk := func(choices []any) map[string]any {
		return map[string]any{"id": "chatcmpl-fake", "object": obj, "created": created, "model": model, "system_fingerprint": "fp_fake", "choices": choices}
	}
	choice := func(text string, finish any) map[string]any {
		c := map[string]any{"index": 0, "finish_reason": finish, "logprobs": nil}
		if op == "completions" {
			c["text"] = text
		} else {
			c["delta"] = map[string]any{"content": text}
		}
		if azure {
			c["content_filter_results"] = completionFilterResults(req.dirs)
		}
		return c
	}
	if azure {
		sse(w, "", map[string]any{"id": "", "object": "", "created": 0, "model": "", "choices": []any{}, "prompt_filter_results": promptFilterResults(req.dirs)})
	}
	if op != "completions" {
		sse(w, "", chunk([]any{map[string]any{"index": 0, "delta": map[string]any{"role": "assistant", "content": ""}, "finish_reason": nil, "logprobs": nil}}))
	}
	delay := req.dirs.slow()
	_, broken := req.dirs["break"]
	_, midJailbreak := req.dirs["midstream-jailbreak"]
	for i, word := range words(completion, r, req.dirs) {
		if delay > 0 {
			time.Sleep(delay)
		}
		if i == 2 && broken {
			// Cut the connection mid-stream, as a crashed upstream would.
			panic(http.ErrAbortHandler)
		}
		if i == 2 && midJailbreak {
			sse(w, "", map[string]any{"id": "chatcmpl-fake", "object": obj, "created": created, "model": model, "choices": []any{},
				"prompt_filter_results": promptFilterResults(directives{"jailbreak": ""})})
		}
		sse(w, "", chunk([]any{choice(word, nil)}))
	}
	sse(w, "", chunk([]any{choice("", "stop")}))
	s.count(prompt, completion)
	if gjson.GetBytes(req.body, "stream_options.include_usage").Bool() {
		c := chunk([]any{})
		c["usage"] = map[string]any{"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
		sse(w, "", c)
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
}

// responses serves the Responses API, streamed as typed events.
func (s *Server) responses(w http.ResponseWriter, r *http.Request, req request, model string, prompt, completion int64) {
	text := words(completion, r, req.dirs)
	usage := map[string]any{"input_tokens": prompt, "input_tokens_details": map[string]any{"cached_tokens": 0},
		"output_tokens": completion, "output_tokens_details": map[string]any{"reasoning_tokens": 0}, "total_tokens": prompt + completion}
	msg := func(t string, status string) map[string]any {
		return map[string]any{"type": "message", "id": "msg_fake", "status": status, "role": "assistant",
			"content": []any{map[string]any{"type": "output_text", "text": t, "annotations": []any{}}}}
	}
	resp := func(status string, output []any, u any) map[string]any {
		return map[string]any{"id": "resp_fake", "object": "response", "created_at": time.Now().Unix(), "status": status,
			"model": model, "output": output, "usage": u, "parallel_tool_calls": true, "tool_choice": "auto", "tools": []any{},
			"temperature": 1.0, "top_p": 1.0, "error": nil, "incomplete_details": nil, "instructions": nil, "metadata": map[string]any{}}
	}
	full := strings.Join(text, "")
	s.count(prompt, completion)
	if _, ok := req.dirs["nousage"]; ok {
		usage = nil
	}
	if req.background {
		// The provider generates (and bills) later; the answer says so.
		writeJSON(w, http.StatusOK, resp("queued", []any{}, nil))
		return
	}
	if !req.stream {
		writeJSON(w, http.StatusOK, resp("completed", []any{msg(full, "completed")}, usage))
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	seq := 0
	ev := func(typ string, v map[string]any) {
		v["type"], v["sequence_number"] = typ, seq
		seq++
		sse(w, typ, v)
	}
	ev("response.created", map[string]any{"response": resp("in_progress", []any{}, nil)})
	ev("response.output_item.added", map[string]any{"output_index": 0, "item": map[string]any{"type": "message", "id": "msg_fake", "status": "in_progress", "role": "assistant", "content": []any{}}})
	ev("response.content_part.added", map[string]any{"item_id": "msg_fake", "output_index": 0, "content_index": 0, "part": map[string]any{"type": "output_text", "text": "", "annotations": []any{}}})
	for _, t := range text {
		ev("response.output_text.delta", map[string]any{"item_id": "msg_fake", "output_index": 0, "content_index": 0, "delta": t, "logprobs": []any{}})
	}
	ev("response.output_text.done", map[string]any{"item_id": "msg_fake", "output_index": 0, "content_index": 0, "text": full, "logprobs": []any{}})
	ev("response.content_part.done", map[string]any{"item_id": "msg_fake", "output_index": 0, "content_index": 0, "part": map[string]any{"type": "output_text", "text": full, "annotations": []any{}}})
	ev("response.output_item.done", map[string]any{"output_index": 0, "item": msg(full, "completed")})
	ev("response.completed", map[string]any{"response": resp("completed", []any{msg(full, "completed")}, usage)})
}

func openAIError(w http.ResponseWriter, status int, typ, code, msg string) {
	var c any
	if code != "" {
		c = code
	}
	writeJSON(w, status, map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": c}})
}

// azureError is Azure OpenAI's error envelope; innererror carries the
// content filter result when Azure refuses a prompt.
func azureError(w http.ResponseWriter, status int, code, msg string, inner map[string]any) {
	e := map[string]any{"message": msg, "type": nil, "param": "prompt", "code": code, "status": status}
	if inner != nil {
		e["innererror"] = inner
	}
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, map[string]any{"error": e})
}
