package inference

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

// FuzzParseRequest: agent bodies are untrusted. Parsing must not panic, and
// whatever it accepts must survive the upstream rewrite as valid JSON.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"model":"gpt-4.1","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`))
	f.Add([]byte(`{"stream_options":{"include_usage":false},"max_output_tokens":null}`))
	f.Add([]byte(`{"model":"\u00e9","max_completion_tokens":1e3}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := ParseRequest(OpChat, body)
		if err != nil {
			return
		}
		if r.MaxTokens < 0 || r.PromptEstimate < 0 {
			t.Fatalf("negative counts: %+v", r)
		}
		out, err := UpstreamBody(OpChat, body, "gpt-4.1", r.Stream, 0)
		if err != nil {
			return
		}
		if _, err := ParseRequest(OpChat, out); err != nil {
			t.Fatalf("rewritten body no longer parses: %v\n%s", err, out)
		}
	})
}

// referenceEvents parses an event stream by the WHATWG algorithm, written
// for clarity: split into lines at CRLF, LF or CR, then dispatch at each
// blank line that follows a non-blank one. Each event is "name|data:<data>",
// or "name|" when its data is empty (which the WHATWG algorithm does not
// dispatch; the reader returns it with no Data, and the relay forwards it).
func referenceEvents(in []byte) []string {
	s := strings.ReplaceAll(strings.ReplaceAll(string(in), "\r\n", "\n"), "\r", "\n")
	lines := strings.Split(s, "\n")
	lines = lines[:len(lines)-1] // the last piece is unterminated: no event
	var out []string
	var name, data string
	inEvent, sawData := false, false
	for _, l := range lines {
		if l == "" {
			if inEvent {
				ev := name + "|"
				if data != "" {
					ev += "data:" + data
				}
				out = append(out, ev)
			}
			name, data, inEvent, sawData = "", "", false, false
			continue
		}
		inEvent = true
		if l[0] == ':' {
			continue
		}
		field, value, _ := strings.Cut(l, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			name = value
		case "data":
			if sawData {
				data += "\n"
			}
			data += value
			sawData = true
		}
	}
	return out
}

// FuzzSSE: upstream streams are untrusted. The reader must not panic, must
// return events whose raw bytes are exactly the input in order, must agree
// with the reference parser whether the bytes arrive at once or one by one,
// and the meter must never report negative usage.
func FuzzSSE(f *testing.F) {
	f.Add([]byte("data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n"))
	f.Add([]byte("event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\r\n\r\n"))
	f.Add([]byte(": comment\n\n\n\ndata:x\rdata: y\n\n"))
	f.Add([]byte("data: a\r\rdata: b\r\n\r\n\r\revent: e\rdata\r\r"))
	f.Fuzz(func(t *testing.T, in []byte) {
		want := referenceEvents(in)
		for _, r := range []io.Reader{bytes.NewReader(in), iotest.OneByteReader(bytes.NewReader(in))} {
			var got []string
			sr := NewSSEReader(r)
			for {
				ev, err := sr.Next()
				if err != nil {
					break
				}
				e := ev.Name + "|"
				if len(ev.Data) > 0 {
					e += "data:" + string(ev.Data)
				}
				got = append(got, e)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("events %q, reference %q", got, want)
			}
		}
		r := NewSSEReader(bytes.NewReader(in))
		m := NewStreamMeter(DialectAnthropic, OpMessages)
		o := NewStreamMeter(DialectOpenAI, OpChat)
		pos := 0
		for {
			ev, err := r.Next()
			// Each event's raw bytes are the next stretch of the input.
			idx := bytes.Index(in[pos:], ev.Raw)
			if idx < 0 {
				t.Fatalf("raw event %q is not in the input after offset %d", ev.Raw, pos)
			}
			if len(bytes.Trim(in[pos:pos+idx], "\r\n")) > 0 {
				t.Fatalf("reader skipped non-blank input %q", in[pos:pos+idx])
			}
			pos += idx + len(ev.Raw)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
			m.Observe(ev)
			o.Observe(ev)
		}
		for _, u := range []Usage{m.Usage(1), o.Usage(1)} {
			if u.Prompt < 0 || u.Completion < 0 {
				t.Fatalf("negative usage %+v", u)
			}
		}
	})
}

// FuzzParseUsage: upstream bodies are untrusted.
func FuzzParseUsage(f *testing.F) {
	f.Add([]byte(`{"usage":{"prompt_tokens":5,"completion_tokens":7}}`))
	f.Add([]byte(`{"usage":{"input_tokens":1e30,"output_tokens":-1}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, d := range []Dialect{DialectOpenAI, DialectAnthropic} {
			for _, op := range []Op{OpChat, OpResponses, OpEmbeddings, OpMessages} {
				if u := ParseUsage(d, op, body); u.Prompt < 0 || u.Completion < 0 {
					t.Fatalf("negative usage %+v from %q", u, body)
				}
			}
		}
	})
}
