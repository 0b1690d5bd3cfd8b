package inference

import (
	"bytes"

	"github.com/tidwall/gjson"
)

// maxTokens bounds a believable token count; anything larger is a broken
// or hostile upstream, and accepting it could overflow the ledger.
const maxTokens = 1 << 40

// Usage is the token count of one call.
type Usage struct {
	Prompt     int64
	Completion int64
	// Reported is true when the numbers come from the upstream's usage
	// object, false when the router metered them itself (a broken stream).
	Reported bool
}

// Total returns prompt plus completion tokens.
func (u Usage) Total() int64 { return u.Prompt + u.Completion }

// ParseUsage reads the usage object of a complete (non-streamed) response
// body. It reports Reported=false when the body carries none.
func ParseUsage(d Dialect, op Op, body []byte) Usage {
	if !gjson.ValidBytes(body) {
		return Usage{}
	}
	return ParseValidUsage(d, op, body)
}

// ParseValidUsage is ParseUsage for a body the caller has already found to
// be valid JSON with gjson.ValidBytes, which it does not check again.
func ParseValidUsage(d Dialect, op Op, body []byte) Usage {
	return usageFrom(d, op, gjson.GetBytes(body, "usage"))
}

// usageFrom reads a usage object in the shape the dialect and operation use.
func usageFrom(d Dialect, op Op, u gjson.Result) Usage {
	if !u.IsObject() {
		return Usage{}
	}
	var out Usage
	switch {
	case d == DialectAnthropic:
		// Cache reads and writes are input tokens too (Messages API usage).
		out.Prompt = u.Get("input_tokens").Int() + u.Get("cache_creation_input_tokens").Int() + u.Get("cache_read_input_tokens").Int()
		out.Completion = u.Get("output_tokens").Int()
	case op == OpResponses:
		out.Prompt = u.Get("input_tokens").Int()
		out.Completion = u.Get("output_tokens").Int()
	default:
		out.Prompt = u.Get("prompt_tokens").Int()
		out.Completion = u.Get("completion_tokens").Int()
		if out.Prompt == 0 && out.Completion == 0 {
			// Embeddings report only total_tokens on some servers.
			out.Prompt = u.Get("total_tokens").Int()
		}
	}
	if out.Prompt < 0 || out.Completion < 0 || out.Prompt > maxTokens || out.Completion > maxTokens {
		return Usage{}
	}
	out.Reported = true
	return out
}

// StreamMeter follows a response stream event by event and keeps the best
// known usage: the upstream's when it reports one, else an estimate from the
// bytes of generated text that passed through, so that a broken stream is
// still charged for what the agent received.
type StreamMeter struct {
	dialect  Dialect
	op       Op
	reported Usage
	final    bool  // the upstream's closing usage arrived
	done     bool  // the stream's terminal event arrived
	streamed int64 // bytes of generated text seen
}

// NewStreamMeter returns a meter for a stream of the given dialect and op.
func NewStreamMeter(d Dialect, op Op) *StreamMeter {
	return &StreamMeter{dialect: d, op: op}
}

var doneData = []byte("[DONE]")

// Observe accounts one event. usageOnly reports an OpenAI chunk that exists
// only to carry usage (empty choices), which the router withholds from an
// agent that did not ask for it.
func (m *StreamMeter) Observe(ev Event) (usageOnly bool) {
	if bytes.Equal(ev.Data, doneData) {
		m.done = m.dialect != DialectAnthropic && m.op != OpResponses
		return false
	}
	if len(ev.Data) == 0 || !gjson.ValidBytes(ev.Data) {
		return false
	}
	data := gjson.ParseBytes(ev.Data)
	switch {
	case m.dialect == DialectAnthropic:
		switch data.Get("type").Str {
		case "message_stop":
			m.done = true
		case "message_start":
			u := usageFrom(DialectAnthropic, m.op, data.Get("message.usage"))
			m.reported.Prompt, m.reported.Reported = u.Prompt, u.Reported
			m.reported.Completion = max(m.reported.Completion, u.Completion)
		case "message_delta":
			// output_tokens in message_delta is cumulative.
			if n := data.Get("usage.output_tokens").Int(); n >= 0 && n <= maxTokens {
				m.reported.Completion = n
				m.reported.Reported, m.final = true, true
			}
		case "content_block_delta":
			d := data.Get("delta")
			m.streamed += int64(len(d.Get("text").Str) + len(d.Get("partial_json").Str) + len(d.Get("thinking").Str))
		}
	case m.op == OpResponses:
		switch data.Get("type").Str {
		case "response.completed", "response.incomplete", "response.failed":
			m.done = true
			if u := usageFrom(DialectOpenAI, OpResponses, data.Get("response.usage")); u.Reported {
				m.reported, m.final = u, true
			}
		case "response.output_text.delta", "response.function_call_arguments.delta", "response.refusal.delta":
			m.streamed += int64(len(data.Get("delta").Str))
		}
	default:
		choices := data.Get("choices")
		choices.ForEach(func(_, c gjson.Result) bool {
			m.streamed += int64(len(c.Get("text").Str) + len(c.Get("delta.content").Str) + len(c.Get("delta.refusal").Str))
			c.Get("delta.tool_calls").ForEach(func(_, tc gjson.Result) bool {
				m.streamed += int64(len(tc.Get("function.arguments").Str) + len(tc.Get("function.name").Str))
				return true
			})
			return true
		})
		if u := usageFrom(m.dialect, m.op, data.Get("usage")); u.Reported {
			m.reported, m.final = u, true
			return len(choices.Array()) == 0
		}
	}
	return false
}

// Usage returns the upstream's closing usage if it arrived. Otherwise the
// stream broke, and the result is the best lower bound on what was spent:
// the reported prompt (Anthropic sends it first) or the prompt estimate, and
// the larger of the partial reported completion and the streamed text's
// estimated tokens. Reported is false in that case.
func (m *StreamMeter) Usage(promptEstimate int64) Usage {
	if m.final {
		return m.reported
	}
	u := Usage{Prompt: promptEstimate, Completion: EstimateTokens(int(m.streamed))}
	if m.reported.Reported {
		u.Prompt = m.reported.Prompt
		u.Completion = max(u.Completion, m.reported.Completion)
	}
	return u
}

// Final reports whether the upstream's closing usage arrived.
func (m *StreamMeter) Final() bool { return m.final }

// Done reports whether the stream's terminal event has been observed, after
// which the upstream sends nothing: "data: [DONE]" for OpenAI
// chat and completions, message_stop for Anthropic Messages, and
// response.completed, response.incomplete or response.failed for the
// Responses API. A relay holds it back until the call is on record.
func (m *StreamMeter) Done() bool { return m.done }
