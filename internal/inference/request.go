package inference

import (
	"errors"
	"fmt"

	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"
)

// Request is what the router needs to know about an agent's request body.
// It is extracted without decoding the whole document, because the router
// forwards the agent's bytes rather than a re-encoding of them.
type Request struct {
	// Model is the model the agent asked for (informational: the router's
	// target decides what is called).
	Model string
	// Stream is true when the agent asked for Server-Sent Events.
	Stream bool
	// IncludeUsage is true when the agent itself asked for the usage chunk
	// (stream_options.include_usage); when false the router still asks
	// upstream for it but does not pass that chunk on.
	IncludeUsage bool
	// MaxTokens is the completion cap the agent set (max_tokens,
	// max_completion_tokens or max_output_tokens), or 0.
	MaxTokens int64
	// PromptEstimate over-approximates the prompt's tokens from the body
	// size, for the budget reservation; the upstream's usage settles it.
	PromptEstimate int64
}

// ErrNotJSON is returned for a body that is not a JSON object.
var ErrNotJSON = errors.New("request body is not a JSON object")

// ParseRequest extracts the Request fields from an agent's body for op.
func ParseRequest(op Op, body []byte) (Request, error) {
	if op == OpModels {
		return Request{}, nil
	}
	if !gjson.ValidBytes(body) {
		return Request{}, ErrNotJSON
	}
	root := gjson.ParseBytes(body)
	if !root.IsObject() {
		return Request{}, ErrNotJSON
	}
	var r Request
	var err error
	// One pass over the top-level keys: bodies can carry megabytes of
	// images, and nested values are skipped without being decoded.
	root.ForEach(func(k, v gjson.Result) bool {
		switch k.Str {
		case "model":
			if v.Type != gjson.String {
				err = fmt.Errorf("model must be a string")
				return false
			}
			r.Model = v.Str
		case "stream":
			r.Stream = v.Type == gjson.True
		case "stream_options":
			r.IncludeUsage = v.Get("include_usage").Type == gjson.True
		case "max_tokens", "max_completion_tokens", "max_output_tokens":
			if v.Type == gjson.Null {
				return true
			}
			if v.Type != gjson.Number || v.Num < 0 || v.Num > 1<<40 || v.Num != float64(int64(v.Num)) {
				err = fmt.Errorf("%s must be a non-negative integer", k.Str)
				return false
			}
			r.MaxTokens = max(r.MaxTokens, int64(v.Num))
		}
		return true
	})
	if err != nil {
		return Request{}, err
	}
	if op == OpEmbeddings {
		r.Stream = false
	}
	r.PromptEstimate = EstimateTokens(len(body))
	return r, nil
}

// EstimateTokens over-approximates the tokens in n bytes of JSON request:
// English text averages about four bytes per token and the JSON framing only
// adds bytes, so n/4 rounded up is rarely below the true count. It is only a
// reservation; settlement uses the upstream's count.
func EstimateTokens(n int) int64 { return int64(n+3) / 4 }

// UpstreamBody returns the body to send upstream: the agent's bytes with the
// model replaced by the target's (when model is non-empty) and, for OpenAI
// chat and completion streams, stream_options.include_usage forced on so
// that the final chunk carries the usage the budget settles against.
func UpstreamBody(op Op, body []byte, model string, stream bool) ([]byte, error) {
	out := body
	var err error
	if model != "" {
		if out, err = sjson.SetBytes(out, "model", model); err != nil {
			return nil, err
		}
	}
	if stream && (op == OpChat || op == OpCompletions) {
		if gjson.GetBytes(out, "stream_options.include_usage").Type != gjson.True {
			if out, err = sjson.SetBytes(out, "stream_options.include_usage", true); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}
