package v03

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2acompat/a2av0"
	"github.com/a2aproject/a2a-go/v2/a2asrv"
)

// testExecutor is an agent whose behaviour the message's first text part
// selects, so that one handler can answer every case of the differential
// test.
type testExecutor struct {
	executions atomic.Int64
	mu         sync.Mutex
	release    map[string]chan struct{} // by context id, for "slow"
}

func (e *testExecutor) releaser(contextID string) chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.release == nil {
		e.release = map[string]chan struct{}{}
	}
	ch, ok := e.release[contextID]
	if !ok {
		ch = make(chan struct{})
		e.release[contextID] = ch
	}
	return ch
}

func (e *testExecutor) Execute(ctx context.Context, ec *a2asrv.ExecutorContext) iter.Seq2[a2a.Event, error] {
	e.executions.Add(1)
	return func(yield func(a2a.Event, error) bool) {
		text := ""
		if len(ec.Message.Parts) > 0 {
			text = ec.Message.Parts[0].Text()
		}
		agent := func(s string) *a2a.Message { return a2a.NewMessage(a2a.MessageRoleAgent, a2a.NewTextPart(s)) }
		if text == "reply" {
			m := agent("a reply")
			m.ContextID = ec.ContextID
			yield(m, nil)
			return
		}
		if text == "refuse" {
			yield(nil, a2a.NewError(a2a.ErrUnsupportedContentType, "no such content here"))
			return
		}
		if ec.StoredTask == nil && !yield(a2a.NewSubmittedTask(ec, ec.Message), nil) {
			return
		}
		if text == "slow" {
			// Submitted until released: the answers that show the task's
			// state (not blocking, cancel, resubscribe) do not race it.
			select {
			case <-e.releaser(ec.ContextID):
			case <-ctx.Done():
				return
			}
		}
		if !yield(a2a.NewStatusUpdateEvent(ec, a2a.TaskStateWorking, nil), nil) {
			return
		}
		switch text {
		case "fail":
			yield(a2a.NewStatusUpdateEvent(ec, a2a.TaskStateFailed, agent("it broke")), nil)
			return
		case "ask":
			yield(a2a.NewStatusUpdateEvent(ec, a2a.TaskStateInputRequired, agent("which one?")), nil)
			return
		}
		// The artifact echoes the message's parts (files and data too), so
		// that both directions of the part translation are compared.
		art := a2a.NewArtifactEvent(ec, ec.Message.Parts...)
		art.Artifact.Name = "echo"
		art.Artifact.Metadata = map[string]any{"n": 1}
		art.LastChunk = true
		if !yield(art, nil) {
			return
		}
		yield(a2a.NewStatusUpdateEvent(ec, a2a.TaskStateCompleted, nil), nil)
	}
}

func (e *testExecutor) Cancel(ctx context.Context, ec *a2asrv.ExecutorContext) iter.Seq2[a2a.Event, error] {
	return func(yield func(a2a.Event, error) bool) {
		yield(a2a.NewStatusUpdateEvent(ec, a2a.TaskStateCanceled, nil), nil)
	}
}

// denier refuses messages whose metadata says "deny", the way kars's
// ingress refuses a call governance denies.
type denier struct{}

func (denier) Before(ctx context.Context, _ *a2asrv.CallContext, req *a2asrv.Request) (context.Context, any, error) {
	if m, ok := req.Payload.(*a2a.SendMessageRequest); ok && m.Metadata["deny"] == true {
		return ctx, nil, a2a.NewError(a2a.ErrUnauthorized, "kars governance: deny: not today").
			WithDetails(map[string]any{"reason": "kars_policy_deny", "rule": "r1"})
	}
	return ctx, nil, nil
}

func (denier) After(context.Context, *a2asrv.CallContext, *a2asrv.Response) error { return nil }

// newTestHandler is the handler both bindings serve in a test, set up as
// kars's ingress sets up its own.
func newTestHandler() (a2asrv.RequestHandler, *testExecutor) {
	ex := &testExecutor{}
	return a2asrv.NewHandler(ex, a2asrv.WithCallInterceptors(denier{}), a2asrv.WithLogger(slog.New(slog.DiscardHandler)),
		a2asrv.WithCapabilityChecks(&a2a.AgentCapabilities{Streaming: true})), ex
}

// binding is one 0.3 JSON-RPC server under test.
type binding struct {
	name string
	url  string
}

// answer is one HTTP answer, normalised: the body's JSON (or, for a
// stream, each event's), with generated ids and timestamps replaced.
type answer struct {
	status      int
	contentType string
	bodies      []any
}

func post(t *testing.T, url, body string) (*http.Response, error) {
	t.Helper()
	return http.Post(url, "application/json", strings.NewReader(body))
}

// read reads a whole answer: one JSON body, or an event stream's events.
func read(t *testing.T, resp *http.Response) []json.RawMessage {
	t.Helper()
	defer resp.Body.Close()
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		var out []json.RawMessage
		for ev := range events(resp.Body) {
			out = append(out, ev)
		}
		return out
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return []json.RawMessage{b}
}

// events yields the data of each Server-Sent Event.
func events(r io.Reader) iter.Seq[json.RawMessage] {
	return func(yield func(json.RawMessage) bool) {
		sc := bufio.NewScanner(r)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok && !yield(json.RawMessage(d)) {
				return
			}
		}
	}
}

// normalise replaces what differs between two runs of the same case:
// generated ids (numbered by first appearance, so that an id repeated in
// an answer must still repeat) and timestamps.
func normalise(t *testing.T, raws []json.RawMessage) []any {
	t.Helper()
	ids := map[string]string{}
	var walk func(key string, v any) any
	walk = func(key string, v any) any {
		switch x := v.(type) {
		case map[string]any:
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				x[k] = walk(k, x[k])
			}
			return x
		case []any:
			for i := range x {
				x[i] = walk(key, x[i])
			}
			return x
		case string:
			switch key {
			case "timestamp":
				return "TIMESTAMP"
			case "id", "taskId", "contextId", "messageId", "artifactId", "referenceTaskIds":
				if _, ok := ids[x]; !ok {
					ids[x] = fmt.Sprintf("ID%d", len(ids)+1)
				}
				return ids[x]
			}
		}
		return v
	}
	out := make([]any, 0, len(raws))
	for _, r := range raws {
		var v any
		dec := json.NewDecoder(bytes.NewReader(r))
		dec.UseNumber() // ids compare as sent, not through a float64
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("answer %q is not JSON: %v", r, err)
		}
		out = append(out, walk("", v))
	}
	return out
}

// diffCase is one request sent to both bindings. Body may name $TASK, the
// task the case's setup created through the same binding.
type diffCase struct {
	name  string
	setup string // a message/send whose task is $TASK
	body  string
	// get is a JSON-RPC request to the same binding once the case's answer
	// is in; its answer is compared too (what the call left behind).
	after string
	// errorOnly compares error codes and reasons, not messages: the
	// messages are each binding's own words for the same refusal.
	errorOnly bool
	// differs, when set, says why the two bindings answer differently on
	// purpose; want then checks kars's answer.
	differs string
	want    func(t *testing.T, ours []any)
}

func msg(text string, extra string) string {
	return `{"kind":"message","messageId":"m-1","role":"user","parts":[{"kind":"text","text":"` + text + `"}]` + extra + `}`
}

func send(id, method, message, rest string) string {
	return `{"jsonrpc":"2.0","id":` + id + `,"method":"` + method + `","params":{"message":` + message + rest + `}}`
}

// wantError checks kars's answer is a single error with code.
func wantError(code int) func(t *testing.T, ours []any) {
	return func(t *testing.T, ours []any) {
		t.Helper()
		if len(ours) != 1 {
			t.Fatalf("want one answer, got %d: %v", len(ours), ours)
		}
		e, _ := ours[0].(map[string]any)["error"].(map[string]any)
		if e == nil || e["code"] != json.Number(strconv.Itoa(code)) {
			t.Fatalf("want error %d, got %v", code, ours[0])
		}
	}
}

var diffCases = []diffCase{
	// Successes.
	{name: "send, task completes", body: send("1", "message/send", msg("hello", ""), ""),
		after: `{"jsonrpc":"2.0","id":2,"method":"tasks/get","params":{"id":"$RESULT"}}`},
	{name: "send, reply as a message", body: send(`"s-1"`, "message/send", msg("reply", ""), "")},
	{name: "send, not blocking", body: send("1", "message/send", msg("slow", ""), `,"configuration":{"blocking":false,"acceptedOutputModes":["text/plain"]}`)},
	{name: "send, task fails", body: send("1", "message/send", msg("fail", `,"metadata":{"skill":"s"}`), `,"metadata":{"trace":"t"}`)},
	{name: "send, input required", body: send("1", "message/send", msg("ask", ""), "")},
	{name: "send, every part kind", body: send("1", "message/send",
		`{"kind":"message","messageId":"m-2","role":"user","contextId":"c-given","parts":[`+
			`{"kind":"text","text":"parts","metadata":{"k":"v"}},`+
			`{"kind":"file","file":{"name":"a.txt","mimeType":"text/plain","bytes":"aGVsbG8="}},`+
			`{"kind":"file","file":{"uri":"https://example.com/a.png","mimeType":"image/png"}},`+
			`{"kind":"data","data":{"a":[1,2],"b":{"c":null}}},`+
			`{"kind":"data","data":{"value":[1,"x"]},"metadata":{"data_part_compat":true}}],`+
			`"referenceTaskIds":["r-1"],"extensions":["https://example.com/ext"]}`, "")},
	{name: "send, continuing a task", setup: send("0", "message/send", msg("ask", ""), ""),
		body: send("1", "message/send", `{"kind":"message","messageId":"m-3","role":"user","taskId":"$TASK","contextId":"$CONTEXT","parts":[{"kind":"text","text":"that one"}]}`, "")},
	{name: "stream, task completes", body: send("7", "message/stream", msg("hello", ""), "")},
	{name: "stream, input required is final", body: send("7", "message/stream", msg("ask", ""), "")},
	{name: "stream, reply as a message", body: send("7", "message/stream", msg("reply", ""), "")},
	{name: "get", setup: send("0", "message/send", msg("hello", ""), ""),
		body: `{"jsonrpc":"2.0","id":3,"method":"tasks/get","params":{"id":"$TASK","historyLength":1}}`},
	{name: "cancel a running task", setup: send("0", "message/send", msg("slow", ""), `,"configuration":{"blocking":false}`),
		body: `{"jsonrpc":"2.0","id":4,"method":"tasks/cancel","params":{"id":"$TASK","metadata":{"why":"test"}}}`},

	// Errors the handler and the agent give.
	{name: "send, governance denies", body: send("1", "message/send", msg("hello", ""), `,"metadata":{"deny":true}`)},
	{name: "stream, governance denies", body: send("1", "message/stream", msg("hello", ""), `,"metadata":{"deny":true}`)},
	{name: "send, the agent refuses", body: send("1", "message/send", msg("refuse", ""), "")},
	{name: "send to a finished task", setup: send("0", "message/send", msg("hello", ""), ""),
		body: send("1", "message/send", `{"kind":"message","messageId":"m-4","role":"user","taskId":"$TASK","parts":[{"kind":"text","text":"more"}]}`, "")},
	{name: "get, no such task", body: `{"jsonrpc":"2.0","id":3,"method":"tasks/get","params":{"id":"nope"}}`},
	{name: "cancel, no such task", body: `{"jsonrpc":"2.0","id":3,"method":"tasks/cancel","params":{"id":"nope"}}`},
	{name: "cancel a finished task", setup: send("0", "message/send", msg("hello", ""), ""),
		body: `{"jsonrpc":"2.0","id":4,"method":"tasks/cancel","params":{"id":"$TASK"}}`},
	{name: "resubscribe, no such task", body: `{"jsonrpc":"2.0","id":5,"method":"tasks/resubscribe","params":{"id":"nope"}}`},
	{name: "resubscribe to a finished task", setup: send("0", "message/send", msg("hello", ""), ""),
		body: `{"jsonrpc":"2.0","id":5,"method":"tasks/resubscribe","params":{"id":"$TASK"}}`},
	{name: "push config set", body: `{"jsonrpc":"2.0","id":6,"method":"tasks/pushNotificationConfig/set","params":{"taskId":"t","pushNotificationConfig":{"url":"https://example.com/hook"}}}`},
	{name: "push config get", body: `{"jsonrpc":"2.0","id":6,"method":"tasks/pushNotificationConfig/get","params":{"id":"t"}}`},
	{name: "push config list", body: `{"jsonrpc":"2.0","id":6,"method":"tasks/pushNotificationConfig/list","params":{"id":"t"}}`},
	{name: "push config delete", body: `{"jsonrpc":"2.0","id":6,"method":"tasks/pushNotificationConfig/delete","params":{"id":"t","pushNotificationConfigId":"p"}}`},
	{name: "extended card", body: `{"jsonrpc":"2.0","id":6,"method":"agent/getAuthenticatedExtendedCard"}`},
	{name: "send with a push config", body: send("1", "message/send", msg("hello", ""), `,"configuration":{"pushNotificationConfig":{"url":"https://example.com/hook","authentication":{"schemes":["Bearer"]}}}`)},

	// Malformed requests: nothing reaches the agent.
	{name: "not JSON", body: `{"jsonrpc":`, errorOnly: true},
	{name: "not JSON-RPC 2.0", body: `{"jsonrpc":"1.0","id":1,"method":"tasks/get","params":{"id":"t"}}`, errorOnly: true},
	{name: "id of the wrong type", body: `{"jsonrpc":"2.0","id":{"a":1},"method":"tasks/get","params":{"id":"t"}}`, errorOnly: true},
	{name: "unknown method", body: `{"jsonrpc":"2.0","id":1,"method":"tasks/list","params":{}}`, errorOnly: true},
	{name: "1.0 method name", body: `{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{}}`, errorOnly: true},
	{name: "message of the wrong type", body: `{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":5}}`, errorOnly: true},
	{name: "parts of the wrong type", body: send("1", "message/send", `{"kind":"message","messageId":"m","role":"user","parts":{"kind":"text"}}`, ""), errorOnly: true},
	{name: "task id of the wrong type", body: `{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"id":7}}`, errorOnly: true},
	{name: "no message", body: `{"jsonrpc":"2.0","id":1,"method":"message/send","params":{}}`, errorOnly: true},
	{name: "unknown role", body: send("1", "message/send", `{"kind":"message","messageId":"m","role":"robot","parts":[{"kind":"text","text":"x"}]}`, ""), errorOnly: true},
	{name: "no parts", body: send("1", "message/send", `{"kind":"message","messageId":"m","role":"user","parts":[]}`, ""), errorOnly: true},
	{name: "no message id", body: send("1", "message/send", `{"kind":"message","role":"user","parts":[{"kind":"text","text":"x"}]}`, ""), errorOnly: true},

	// Where kars answers differently on purpose.
	{name: "unknown part kind", body: send("1", "message/send", `{"kind":"message","messageId":"m","role":"user","parts":[{"kind":"video","url":"x"}]}`, ""),
		differs: "a2av0 answers -32700 (parse error) for a well-formed request whose part kind is unknown; the JSON parsed, the params are wrong: -32602 (JSON-RPC 2.0 §5.1)",
		want:    wantError(-32602)},
	{name: "stream, unknown part kind", body: send("1", "message/stream", `{"kind":"message","messageId":"m","role":"user","parts":[{"kind":"video"}]}`, ""),
		differs: "as above, as the stream's one event", want: wantError(-32602)},
	{name: "no params", body: `{"jsonrpc":"2.0","id":1,"method":"message/send"}`,
		differs: "a2av0 answers -32700 for absent params; the request parsed: -32602", want: wantError(-32602)},
	{name: "text part without text", body: send("1", "message/send", `{"kind":"message","messageId":"m","role":"user","parts":[{"kind":"text"}]}`, ""),
		differs: `a2av0 hands the agent an empty text; "text" is required (0.3 §6.5.1)`, want: wantError(-32602)},
	{name: "file bytes not base64", body: send("1", "message/send", `{"kind":"message","messageId":"m","role":"user","parts":[{"kind":"file","file":{"bytes":"%%%"}}]}`, ""),
		differs: `a2av0 hands the agent the undecoded text as the file's bytes; "bytes" is base64 (0.3 §6.6.2)`, want: wantError(-32602)},
	{name: "message of another kind", body: send("1", "message/send", `{"kind":"task","messageId":"m","role":"user","parts":[{"kind":"text","text":"x"}]}`, ""),
		differs: `a2av0 ignores "kind"; a message's kind is "message" (0.3 §6.4)`, want: wantError(-32602)},
	{name: "large integer id", body: `{"jsonrpc":"2.0","id":12345678901234567890,"method":"tasks/get","params":{"id":"nope"}}`,
		differs: "a2av0 echoes the id through a float64 (12345678901234567000); the id is echoed as sent (JSON-RPC 2.0 §5)",
		want: func(t *testing.T, ours []any) {
			if e := ours[0].(map[string]any); e["id"] != json.Number("12345678901234567890") || e["error"] == nil {
				t.Fatalf("got %v", ours)
			}
		}},
	{name: "id beyond float64", body: `{"jsonrpc":"2.0","id":1e400,"method":"tasks/get","params":{"id":"nope"}}`,
		differs: "a2av0 answers -32602 (invalid params) for an id it cannot decode; the body is not JSON kars can represent (strictjson, as at the ingress): -32700",
		want:    wantError(-32700)},
	{name: "file with both bytes and uri", body: send("1", "message/send", `{"kind":"message","messageId":"m","role":"user","parts":[{"kind":"file","file":{"bytes":"aGk=","uri":"https://x"}}]}`, ""),
		differs: "a2av0 answers -32700, as for an unknown part kind; the params are wrong: -32602", want: wantError(-32602)},
	{name: "id too long", body: `{"jsonrpc":"2.0","id":"` + strings.Repeat("x", MaxIDLen+1) + `","method":"tasks/get","params":{"id":"t"}}`,
		differs: "a2av0 echoes any id; kars bounds it, as every answer and every event repeats it",
		want: func(t *testing.T, ours []any) {
			wantError(-32600)(t, ours)
			if ours[0].(map[string]any)["id"] != nil {
				t.Fatalf("an id too long is not echoed: %v", ours)
			}
		}},
	{name: "unknown envelope member", body: `{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"id":"nope"},"x":1}`,
		differs: "a2av0 ignores it; kars's ingress refuses it before any binding (rpc.ParseEnvelope), and this binding parses envelopes the same way",
		want:    wantError(-32600)},
}

// TestDifferentialAgainstA2AV0 sends the same 0.3 requests through the
// A2A Go SDK's 0.3 binding (a2av0, which kars served before) and through
// this package, over one handler, and compares the answers.
func TestDifferentialAgainstA2AV0(t *testing.T) {
	h, ex := newTestHandler()
	sdk := httptest.NewServer(a2av0.NewJSONRPCHandler(h))
	defer sdk.Close()
	ours := httptest.NewServer(NewHandler(h))
	defer ours.Close()
	bindings := []binding{{"a2av0", sdk.URL}, {"kars", ours.URL}}

	for _, tc := range diffCases {
		t.Run(tc.name, func(t *testing.T) {
			var answers [2][]answer
			for i, b := range bindings {
				answers[i] = runCase(t, b, tc, ex)
			}
			sdkA, oursA := answers[0], answers[1]
			if tc.differs != "" {
				if reflect.DeepEqual(sdkA, oursA) {
					t.Fatalf("the bindings agree, yet the case says they differ (%s): %v", tc.differs, oursA)
				}
				tc.want(t, oursA[0].bodies)
				return
			}
			if tc.errorOnly {
				for _, as := range [][]answer{sdkA, oursA} {
					for _, a := range as {
						for _, b := range a.bodies {
							if e, ok := b.(map[string]any)["error"].(map[string]any); ok {
								delete(e, "message")
							}
						}
					}
				}
			}
			if !reflect.DeepEqual(sdkA, oursA) {
				t.Fatalf("answers differ\na2av0: %s\nkars:  %s", dump(sdkA), dump(oursA))
			}
		})
	}
}

func dump(v any) string {
	if as, ok := v.([]answer); ok {
		var b strings.Builder
		for _, a := range as {
			fmt.Fprintf(&b, "[%d %s %s] ", a.status, a.contentType, dump(a.bodies))
		}
		return b.String()
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// runCase runs a case's setup, its request and its after-request through
// one binding, and returns the normalised answers (setup excluded).
func runCase(t *testing.T, b binding, tc diffCase, ex *testExecutor) []answer {
	t.Helper()
	body := tc.body
	if tc.setup != "" {
		resp, err := post(t, b.url, tc.setup)
		if err != nil {
			t.Fatal(err)
		}
		var r struct {
			Result struct{ ID, ContextID string }
		}
		if err := json.Unmarshal(read(t, resp)[0], &r); err != nil || r.Result.ID == "" {
			t.Fatalf("%s: setup: %v %+v", b.name, err, r)
		}
		body = strings.NewReplacer("$TASK", r.Result.ID, "$CONTEXT", r.Result.ContextID).Replace(body)
	}
	before := ex.executions.Load()
	var raws [][]json.RawMessage
	resp, err := post(t, b.url, body)
	if err != nil {
		t.Fatal(err)
	}
	first := read(t, resp)
	raws = append(raws, first)
	out := []answer{{status: resp.StatusCode, contentType: mediaType(resp)}}
	if b.name == "kars" && (tc.errorOnly || tc.differs != "") {
		if n := ex.executions.Load() - before; n != 0 {
			t.Fatalf("%s: a malformed request reached the agent (%d executions)", b.name, n)
		}
	}
	if tc.after != "" {
		var r struct{ Result struct{ ID string } }
		json.Unmarshal(first[0], &r)
		resp, err := post(t, b.url, strings.ReplaceAll(tc.after, "$RESULT", r.Result.ID))
		if err != nil {
			t.Fatal(err)
		}
		raws = append(raws, read(t, resp))
		out = append(out, answer{status: resp.StatusCode, contentType: mediaType(resp)})
	}
	// One numbering of ids across the case's answers.
	var all []json.RawMessage
	for _, r := range raws {
		all = append(all, r...)
	}
	norm := normalise(t, all)
	for i, r := range raws {
		out[i].bodies, norm = norm[:len(r)], norm[len(r):]
	}
	return out
}

// mediaType is the answer's content type without parameters. a2av0 sets
// none on its error answers (net/http sniffs text/plain); kars says
// application/json, so errors compare as JSON whatever the header.
func mediaType(resp *http.Response) string {
	ct, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
	if ct == "text/plain" {
		ct = "application/json"
	}
	return ct
}

// TestDifferentialResubscribe compares tasks/resubscribe to a running
// task: the task as it stands, then its events to the end.
func TestDifferentialResubscribe(t *testing.T) {
	h, ex := newTestHandler()
	sdk := httptest.NewServer(a2av0.NewJSONRPCHandler(h))
	defer sdk.Close()
	ours := httptest.NewServer(NewHandler(h))
	defer ours.Close()
	var got [2][]any
	for i, url := range []string{sdk.URL, ours.URL} {
		resp, err := post(t, url, send("1", "message/send", msg("slow", ""), `,"configuration":{"blocking":false}`))
		if err != nil {
			t.Fatal(err)
		}
		var r struct {
			Result struct{ ID, ContextID string }
		}
		json.Unmarshal(read(t, resp)[0], &r)
		resp, err = post(t, url, `{"jsonrpc":"2.0","id":"r","method":"tasks/resubscribe","params":{"id":"`+r.Result.ID+`"}}`)
		if err != nil {
			t.Fatal(err)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Fatalf("resubscribe answered %s", ct)
		}
		var raws []json.RawMessage
		for ev := range events(resp.Body) {
			raws = append(raws, ev)
			if len(raws) == 1 {
				close(ex.releaser(r.Result.ContextID))
			}
		}
		resp.Body.Close()
		got[i] = normalise(t, raws)
	}
	if len(got[1]) < 3 {
		t.Fatalf("want the task, its artifact and its completion, got %s", dump(got[1]))
	}
	if !reflect.DeepEqual(got[0], got[1]) {
		t.Fatalf("answers differ\na2av0: %s\nkars:  %s", dump(got[0]), dump(got[1]))
	}
	last := got[1][len(got[1])-1].(map[string]any)["result"].(map[string]any)
	if last["kind"] != "status-update" || last["final"] != true || !slices.Contains([]any{"completed"}, last["status"].(map[string]any)["state"]) {
		t.Fatalf("the stream does not end with a final completed status: %v", last)
	}
}

// TestStreamEndsWhenTheCallerLeaves: a caller that goes away mid-stream
// ends the handler's subscription and frees the request.
func TestStreamEndsWhenTheCallerLeaves(t *testing.T) {
	h, _ := newTestHandler()
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		NewHandler(h).ServeHTTP(w, r)
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, strings.NewReader(send("1", "message/stream", msg("slow", ""), "")))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	next, stop := iter.Pull(events(resp.Body))
	defer stop()
	if _, ok := next(); !ok {
		t.Fatal("no first event")
	}
	cancel()
	resp.Body.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler kept serving a stream whose caller left")
	}
}

// TestDifferentialExtendedCardNotConfigured: a handler without capability
// checks and without a card answers agent/getAuthenticatedExtendedCard
// with -32007 (0.3 §8.2), through both bindings alike.
func TestDifferentialExtendedCardNotConfigured(t *testing.T) {
	h := a2asrv.NewHandler(&testExecutor{}, a2asrv.WithLogger(slog.New(slog.DiscardHandler)))
	body := `{"jsonrpc":"2.0","id":1,"method":"agent/getAuthenticatedExtendedCard"}`
	var got [2][]any
	for i, hd := range []http.Handler{a2av0.NewJSONRPCHandler(h), NewHandler(h)} {
		rec := httptest.NewRecorder()
		hd.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body)))
		got[i] = normalise(t, []json.RawMessage{rec.Body.Bytes()})
	}
	if !reflect.DeepEqual(got[0], got[1]) {
		t.Fatalf("answers differ\na2av0: %s\nkars:  %s", dump(got[0]), dump(got[1]))
	}
	wantError(-32007)(t, got[1])
}
