package inference

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kars-io/kars/internal/strictjson"

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
	// Choices is how many completions the upstream generates for the call
	// (the largest of n and best_of, at least 1): the completion cap is
	// reserved that many times.
	Choices int64
	// Background is true for a Responses API call the provider runs
	// asynchronously ("background": true); its answer carries no usage.
	Background bool
}

// MaxChoices bounds n and best_of. Providers cap them far lower; a larger
// value is refused rather than multiplied into a reservation.
const MaxChoices = 128

// ErrNotJSON is returned (wrapped, with the reason) for a body that is not
// one strict JSON object.
var ErrNotJSON = errors.New("request body is not a strict JSON object")

// ParseRequest extracts the Request fields from an agent's body for op.
func ParseRequest(op Op, body []byte) (Request, error) {
	if op == OpModels {
		return Request{}, nil
	}
	// Strict JSON first: the router decides on these bytes and forwards
	// them, so they must mean one thing to every parser (no duplicate
	// members, valid UTF-8, standard grammar).
	if err := strictjson.Validate(body); err != nil {
		return Request{}, fmt.Errorf("%w: %v", ErrNotJSON, err)
	}
	root := gjson.ParseBytes(body)
	if !root.IsObject() {
		return Request{}, ErrNotJSON
	}
	r := Request{Choices: 1}
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
			r.Model = strings.Clone(v.Str) // not a view into the body, which it would keep alive
		case "stream", "background":
			// A string "true" would be false here and perhaps true to a
			// lenient upstream: only JSON booleans are accepted.
			if v.Type != gjson.True && v.Type != gjson.False && v.Type != gjson.Null {
				err = fmt.Errorf("%s must be a boolean", k.Str)
				return false
			}
			if k.Str == "stream" {
				r.Stream = v.Type == gjson.True
			} else {
				r.Background = v.Type == gjson.True
			}
		case "stream_options":
			r.IncludeUsage = v.Get("include_usage").Type == gjson.True
		case "n", "best_of":
			if v.Type == gjson.Null {
				return true
			}
			if v.Type != gjson.Number || v.Num < 1 || v.Num > MaxChoices || v.Num != float64(int64(v.Num)) {
				err = fmt.Errorf("%s must be an integer from 1 to %d", k.Str, MaxChoices)
				return false
			}
			r.Choices = max(r.Choices, int64(v.Num))
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
	if op != OpResponses {
		r.Background = false
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
// that the final chunk carries the usage the budget settles against. When
// outputCap is positive and the body sets no completion cap, the op's cap
// member is set to it: a call whose usage the router cannot see (a
// background response) is charged its reservation up front, and the cap
// keeps the provider from generating more than was charged.
func UpstreamBody(op Op, body []byte, model string, stream bool, outputCap int64) ([]byte, error) {
	out := body
	var err error
	if outputCap > 0 {
		field := "max_tokens"
		if op == OpResponses {
			field = "max_output_tokens"
		}
		if v := gjson.GetBytes(out, field); !v.Exists() || v.Type == gjson.Null {
			if out, err = sjson.SetBytes(out, field, outputCap); err != nil {
				return nil, err
			}
		}
	}
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
