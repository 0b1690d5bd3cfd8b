package inference

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/tidwall/gjson"
)

func TestMatch(t *testing.T) {
	cases := []struct {
		method, path string
		want         Route
		ok           bool
	}{
		{"POST", "/v1/chat/completions", Route{Dialect: DialectOpenAI, Op: OpChat}, true},
		{"POST", "/v1/completions", Route{Dialect: DialectOpenAI, Op: OpCompletions}, true},
		{"POST", "/v1/responses", Route{Dialect: DialectOpenAI, Op: OpResponses}, true},
		{"POST", "/v1/embeddings", Route{Dialect: DialectOpenAI, Op: OpEmbeddings}, true},
		{"GET", "/v1/models", Route{Dialect: DialectOpenAI, Op: OpModels}, true},
		{"GET", "/v1/models/gpt-4.1", Route{Dialect: DialectOpenAI, Op: OpModels, ModelID: "gpt-4.1"}, true},
		{"POST", "/v1/messages", Route{Dialect: DialectAnthropic, Op: OpMessages}, true},
		{"POST", "/openai/deployments/gpt4/chat/completions", Route{Dialect: DialectAzure, Op: OpChat, Deployment: "gpt4"}, true},
		{"POST", "/openai/deployments/emb/embeddings", Route{Dialect: DialectAzure, Op: OpEmbeddings, Deployment: "emb"}, true},
		{"POST", "/openai/responses", Route{Dialect: DialectAzure, Op: OpResponses}, true},
		{"POST", "/openai/v1/chat/completions", Route{Dialect: DialectOpenAI, Op: OpChat}, true},
		{"GET", "/v1/chat/completions", Route{}, false},
		{"POST", "/v1/images/generations", Route{}, false},
		{"POST", "/openai/deployments//chat/completions", Route{}, false},
		{"POST", "/openai/deployments/x/responses", Route{}, false},
		{"POST", "/", Route{}, false},
	}
	for _, tc := range cases {
		got, ok := Match(tc.method, tc.path)
		if ok != tc.ok || got != tc.want {
			t.Errorf("Match(%s %s) = %+v, %v; want %+v, %v", tc.method, tc.path, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParseRequest(t *testing.T) {
	r, err := ParseRequest(OpChat, []byte(`{"model":"gpt-4.1","stream":true,"stream_options":{"include_usage":true},"max_tokens":10,"max_completion_tokens":300,"messages":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.Model != "gpt-4.1" || !r.Stream || !r.IncludeUsage || r.MaxTokens != 300 || r.PromptEstimate == 0 {
		t.Fatalf("%+v", r)
	}
	for _, bad := range []string{`[]`, `{"model":1}`, `{"max_tokens":-1}`, `{"max_tokens":1.5}`, `{"max_tokens":"9"}`, `not json`} {
		if _, err := ParseRequest(OpChat, []byte(bad)); err == nil {
			t.Errorf("ParseRequest(%s) accepted", bad)
		}
	}
}

func TestUpstreamBody(t *testing.T) {
	out, err := UpstreamBody(OpChat, []byte(`{"model":"a","stream":true,"messages":[]}`), "gpt-4.1", true, 0)
	if err != nil {
		t.Fatal(err)
	}
	if gjson.GetBytes(out, "model").Str != "gpt-4.1" || !gjson.GetBytes(out, "stream_options.include_usage").Bool() {
		t.Fatalf("%s", out)
	}
	// Embeddings never get stream_options; an empty model leaves the body.
	body := []byte(`{"model":"a","input":"x"}`)
	out, _ = UpstreamBody(OpEmbeddings, body, "", false, 0)
	if !bytes.Equal(out, body) {
		t.Fatalf("body changed: %s", out)
	}
}

func TestSSEReader(t *testing.T) {
	in := ": keepalive\n\nevent: message_start\ndata: {\"a\":1}\n\ndata: line1\r\ndata: line2\r\n\r\ndata: [DONE]\n\ndata: partial"
	r := NewSSEReader(strings.NewReader(in))
	ev, err := r.Next()
	if err != nil || ev.Name != "" || ev.Data != nil || string(ev.Raw) != ": keepalive\n\n" {
		t.Fatalf("comment event: %+v %v", ev, err)
	}
	ev, _ = r.Next()
	if ev.Name != "message_start" || string(ev.Data) != `{"a":1}` {
		t.Fatalf("named event: %q %q", ev.Name, ev.Data)
	}
	ev, _ = r.Next()
	if string(ev.Data) != "line1\nline2" {
		t.Fatalf("multi-line data: %q", ev.Data)
	}
	ev, _ = r.Next()
	if string(ev.Data) != "[DONE]" {
		t.Fatalf("done: %q", ev.Data)
	}
	ev, err = r.Next()
	if !errors.Is(err, io.ErrUnexpectedEOF) || string(ev.Raw) != "data: partial" {
		t.Fatalf("truncated tail: %q %v", ev.Raw, err)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after end: %v", err)
	}
}

// TestSSEReaderLineEndings: CRLF, LF and a bare CR all end a line
// (WHATWG HTML §9.2.5), including a CRLF split across two reads.
func TestSSEReaderLineEndings(t *testing.T) {
	for name, in := range map[string]string{
		"LF":    "event: delta\ndata: a\ndata: b\n\ndata: [DONE]\n\n",
		"CRLF":  "event: delta\r\ndata: a\r\ndata: b\r\n\r\ndata: [DONE]\r\n\r\n",
		"CR":    "event: delta\rdata: a\rdata: b\r\rdata: [DONE]\r\r",
		"mixed": "event: delta\rdata: a\r\ndata: b\n\rdata: [DONE]\r\n\n",
	} {
		for _, split := range []bool{false, true} {
			var r io.Reader = strings.NewReader(in)
			if split {
				r = iotest.OneByteReader(r) // every CRLF straddles two reads
			}
			sr := NewSSEReader(r)
			var got []string
			var raw strings.Builder
			for {
				ev, err := sr.Next()
				raw.Write(ev.Raw)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				got = append(got, ev.Name+"|"+string(ev.Data))
			}
			if strings.Join(got, ",") != "delta|a\nb,|[DONE]" {
				t.Fatalf("%s (one byte per read: %v): events %q", name, split, got)
			}
			// The events' raw bytes are the input, except that the LF of
			// a final CRLF that arrives after its CR ends no event.
			want := in
			if split && strings.HasSuffix(in, "\r\n") {
				want = strings.TrimSuffix(in, "\n")
			}
			if raw.String() != want {
				t.Fatalf("%s (one byte per read: %v): raw %q, want %q", name, split, raw.String(), want)
			}
		}
	}
}

// TestSSEReaderBareCRDoesNotWait: an event ended by CR CR is delivered at
// once; the reader does not hold it back waiting for a possible LF.
func TestSSEReaderBareCRDoesNotWait(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	got := make(chan string, 1)
	go func() {
		ev, err := NewSSEReader(pr).Next()
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(ev.Data)
	}()
	pw.Write([]byte("data: now\r\r"))
	select {
	case d := <-got:
		if d != "now" {
			t.Fatalf("got %q", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the event was held back waiting for more bytes")
	}
}

func TestSSEReaderLongLine(t *testing.T) {
	long := strings.Repeat("x", 100<<10)
	ev, err := NewSSEReader(strings.NewReader("data: " + long + "\n\n")).Next()
	if err != nil || string(ev.Data) != long {
		t.Fatalf("long line: %d bytes, %v", len(ev.Data), err)
	}
}

func TestParseUsage(t *testing.T) {
	cases := []struct {
		d    Dialect
		op   Op
		body string
		want Usage
	}{
		{DialectOpenAI, OpChat, `{"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}`, Usage{5, 7, true}},
		{DialectAzure, OpEmbeddings, `{"usage":{"prompt_tokens":9,"total_tokens":9}}`, Usage{9, 0, true}},
		{DialectOpenAI, OpResponses, `{"usage":{"input_tokens":3,"output_tokens":4,"total_tokens":7}}`, Usage{3, 4, true}},
		{DialectAnthropic, OpMessages, `{"usage":{"input_tokens":3,"cache_read_input_tokens":10,"output_tokens":4}}`, Usage{13, 4, true}},
		{DialectOpenAI, OpChat, `{"choices":[]}`, Usage{}},
		{DialectOpenAI, OpChat, `{"usage":{"prompt_tokens":-5}}`, Usage{}},
	}
	for _, tc := range cases {
		if got := ParseUsage(tc.d, tc.op, []byte(tc.body)); got != tc.want {
			t.Errorf("ParseUsage(%s) = %+v, want %+v", tc.body, got, tc.want)
		}
	}
}

func TestStreamMeter(t *testing.T) {
	m := NewStreamMeter(DialectOpenAI, OpChat)
	m.Observe(Event{Data: []byte(`{"choices":[{"delta":{"content":"12345678"}}]}`)})
	if u := m.Usage(10); u.Reported || u.Prompt != 10 || u.Completion != 2 {
		t.Fatalf("estimate before usage: %+v", u)
	}
	if !m.Observe(Event{Data: []byte(`{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}`)}) {
		t.Fatal("usage-only chunk not recognised")
	}
	if u := m.Usage(10); !u.Reported || u.Total() != 7 {
		t.Fatalf("reported usage: %+v", u)
	}
	a := NewStreamMeter(DialectAnthropic, OpMessages)
	a.Observe(Event{Data: []byte(`{"type":"message_start","message":{"usage":{"input_tokens":25,"output_tokens":1}}}`)})
	a.Observe(Event{Data: []byte(`{"type":"content_block_delta","delta":{"type":"text_delta","text":"abcdefghijklmnop"}}`)})
	if u := a.Usage(99); u.Reported || u.Prompt != 25 || u.Completion != 4 {
		t.Fatalf("anthropic broken stream: %+v", u)
	}
	a.Observe(Event{Data: []byte(`{"type":"message_delta","usage":{"output_tokens":15}}`)})
	if u := a.Usage(99); !u.Reported || u.Prompt != 25 || u.Completion != 15 {
		t.Fatalf("anthropic final: %+v", u)
	}
}

// TestStreamMeterDone: each dialect's terminal event, and only it, ends
// the stream.
func TestStreamMeterDone(t *testing.T) {
	cases := []struct {
		d      Dialect
		op     Op
		events []string // the last is terminal
	}{
		{DialectOpenAI, OpChat, []string{`{"choices":[{"delta":{"content":"hi"}}]}`, `{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}`, `[DONE]`}},
		{DialectOpenAI, OpCompletions, []string{`{"choices":[{"text":"hi"}]}`, `[DONE]`}},
		{DialectAnthropic, OpMessages, []string{`{"type":"message_start","message":{"usage":{"input_tokens":2}}}`, `{"type":"message_delta","usage":{"output_tokens":3}}`, `{"type":"message_stop"}`}},
		{DialectOpenAI, OpResponses, []string{`{"type":"response.output_text.delta","delta":"hi"}`, `{"type":"response.completed","response":{"usage":{"input_tokens":1,"output_tokens":1}}}`}},
		{DialectOpenAI, OpResponses, []string{`{"type":"response.failed","response":{}}`}},
	}
	for _, tc := range cases {
		m := NewStreamMeter(tc.d, tc.op)
		for i, e := range tc.events {
			m.Observe(Event{Data: []byte(e)})
			if last := i == len(tc.events)-1; m.Done() != last {
				t.Fatalf("%v %s: after %s Done() = %v", tc.d, tc.op, e, m.Done())
			}
		}
	}
	// [DONE] is not how Anthropic or Responses streams end.
	for _, m := range []*StreamMeter{NewStreamMeter(DialectAnthropic, OpMessages), NewStreamMeter(DialectOpenAI, OpResponses)} {
		if m.Observe(Event{Data: []byte("[DONE]")}); m.Done() {
			t.Fatal("[DONE] ended a stream of the wrong dialect")
		}
	}
}

// TestSSEReaderEventTooLarge: an event past MaxEventBytes is an error, not
// a reason to buffer without limit; events before it are delivered.
func TestSSEReaderEventTooLarge(t *testing.T) {
	huge := io.MultiReader(strings.NewReader("data: small\n\ndata: "), endless{})
	r := NewSSEReader(huge)
	if ev, err := r.Next(); err != nil || string(ev.Data) != "small" {
		t.Fatalf("first event: %q %v", ev.Data, err)
	}
	if _, err := r.Next(); !errors.Is(err, ErrEventTooLarge) {
		t.Fatalf("endless event: %v", err)
	}
	if len(r.buf) > MaxEventBytes {
		t.Fatalf("buffered %d bytes for one event", len(r.buf))
	}
}

// endless is a stream of 'x' with no line break.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}
