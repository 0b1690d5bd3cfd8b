package v03

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2asrv"
)

// TestParseSend: a 0.3 MessageSendParams becomes the v1 request the
// handler takes, member by member.
func TestParseSend(t *testing.T) {
	c, err := parse([]byte(`{"jsonrpc":"2.0","id":"x-1","method":"message/send","params":{
		"message":{"kind":"message","messageId":"m","role":"user","taskId":"t","contextId":"c","referenceTaskIds":["r"],
			"metadata":{"skill":"s"},"parts":[
			{"kind":"text","text":"hi"},
			{"kind":"file","file":{"bytes":"AAE=","name":"b.bin","mimeType":"application/octet-stream"}},
			{"kind":"data","data":{"value":3},"metadata":{"data_part_compat":true,"k":"v"}}]},
		"configuration":{"blocking":false,"historyLength":2,"acceptedOutputModes":["text/plain"],
			"pushNotificationConfig":{"id":"p","url":"https://h","token":"tk","authentication":{"schemes":["Bearer","Basic"],"credentials":"cr"}}},
		"metadata":{"trace":"z"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if string(c.id) != `"x-1"` || c.method != MethodSend {
		t.Fatalf("id %s method %s", c.id, c.method)
	}
	two := 2
	want := &a2a.SendMessageRequest{
		Message: &a2a.Message{ID: "m", Role: a2a.MessageRoleUser, TaskID: "t", ContextID: "c", ReferenceTasks: []a2a.TaskID{"r"},
			Metadata: map[string]any{"skill": "s"}, Parts: a2a.ContentParts{
				{Content: a2a.Text("hi")},
				{Content: a2a.Raw{0, 1}, Filename: "b.bin", MediaType: "application/octet-stream"},
				{Content: a2a.Data{Value: float64(3)}, Metadata: map[string]any{"k": "v"}},
			}},
		Config: &a2a.SendMessageConfig{ReturnImmediately: true, HistoryLength: &two, AcceptedOutputModes: []string{"text/plain"},
			PushConfig: &a2a.PushConfig{ID: "p", URL: "https://h", Token: "tk", Auth: &a2a.PushAuthInfo{Scheme: "Bearer", Credentials: "cr"}}},
		Metadata: map[string]any{"trace": "z"},
	}
	if got := c.params.(*a2a.SendMessageRequest); !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %#v\nwant %#v", got, want)
	}
}

// TestParseRefuses: hostile and malformed requests get the JSON-RPC error
// a 0.3 client expects, with the id echoed when it could be read.
func TestParseRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       error
		id         string
	}{
		{"empty body", ``, a2a.ErrParseError, ""},
		{"array (batch)", `[{"jsonrpc":"2.0","id":1,"method":"tasks/get"}]`, a2a.ErrInvalidRequest, ""},
		{"duplicate member", `{"jsonrpc":"2.0","id":1,"method":"tasks/get","method":"message/send","params":{"id":"t"}}`, a2a.ErrParseError, ""},
		{"null id", `{"jsonrpc":"2.0","id":null,"method":"tasks/get","params":{"id":"t"}}`, a2a.ErrInvalidRequest, ""},
		{"huge id", `{"jsonrpc":"2.0","id":1` + strings.Repeat("0", MaxIDLen) + `,"method":"tasks/get","params":{"id":"t"}}`, a2a.ErrInvalidRequest, ""},
		{"params not an object", `{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":["t"]}`, a2a.ErrInvalidRequest, "1"},
		{"unknown method", `{"jsonrpc":"2.0","id":1,"method":"tasks/list"}`, a2a.ErrMethodNotFound, "1"},
		{"task id empty", `{"jsonrpc":"2.0","id":1,"method":"tasks/cancel","params":{"id":""}}`, a2a.ErrInvalidParams, "1"},
		{"history length a string", `{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"id":"t","historyLength":"2"}}`, a2a.ErrInvalidParams, "1"},
		{"blocking a string", `{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":{"messageId":"m","role":"user","parts":[{"kind":"text","text":"x"}]},"configuration":{"blocking":"no"}}}`, a2a.ErrInvalidParams, "1"},
		{"part without kind", `{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":{"messageId":"m","role":"user","parts":[{"text":"x"}]}}}`, a2a.ErrInvalidParams, "1"},
		{"data not an object", `{"jsonrpc":"2.0","id":1,"method":"message/stream","params":{"message":{"messageId":"m","role":"user","parts":[{"kind":"data","data":[1]}]}}}`, a2a.ErrInvalidParams, "1"},
		{"data null", `{"jsonrpc":"2.0","id":1,"method":"message/stream","params":{"message":{"messageId":"m","role":"user","parts":[{"kind":"data","data":null}]}}}`, a2a.ErrInvalidParams, "1"},
		{"file without content", `{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":{"messageId":"m","role":"user","parts":[{"kind":"file","file":{"name":"a"}}]}}}`, a2a.ErrInvalidParams, "1"},
		{"parts null", `{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":{"messageId":"m","role":"user","parts":null}}}`, a2a.ErrInvalidParams, "1"},
		{"message null", `{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":null}}`, a2a.ErrInvalidParams, "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse([]byte(tc.body))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if string(c.id) != tc.id {
				t.Fatalf("id %q, want %q", c.id, tc.id)
			}
			if c.params != nil {
				t.Fatalf("a refused call has params %#v", c.params)
			}
			if code := toRPCError(err, time.Now()).Code; code == -32603 {
				t.Fatalf("refused as an internal error: %v", err)
			}
		})
	}
}

// FuzzParse: whatever the body, parse does not panic; what it accepts is a
// call the handler can take (known method, typed params, a message with
// an id, a role and parts with content); what it refuses maps to a
// JSON-RPC request error, never to an internal one.
func FuzzParse(f *testing.F) {
	for _, tc := range diffCases {
		f.Add([]byte(tc.body))
	}
	f.Add([]byte(`{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":{"messageId":"m","role":"agent","parts":[{"kind":"data","data":{"value":1},"metadata":{"data_part_compat":true}}]}}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := parse(body)
		if err != nil {
			if c.params != nil {
				t.Fatalf("refused with params %#v", c.params)
			}
			switch code := toRPCError(err, time.Time{}).Code; code {
			case -32700, -32600, -32601, -32602:
			default:
				t.Fatalf("refused with code %d: %v", code, err)
			}
			return
		}
		if len(c.id) == 0 || len(c.id) > MaxIDLen {
			t.Fatalf("accepted id %q", c.id)
		}
		switch p := c.params.(type) {
		case *a2a.SendMessageRequest:
			if c.method != MethodSend && c.method != MethodStream {
				t.Fatalf("%s with send params", c.method)
			}
			m := p.Message
			if m == nil || m.ID == "" || len(m.Parts) == 0 || (m.Role != a2a.MessageRoleUser && m.Role != a2a.MessageRoleAgent) {
				t.Fatalf("accepted message %#v", m)
			}
			for _, part := range m.Parts {
				if part == nil || part.Content == nil {
					t.Fatalf("accepted a part without content: %#v", part)
				}
			}
		case *a2a.GetTaskRequest, *a2a.CancelTaskRequest, *a2a.SubscribeToTaskRequest:
			if !slices.Contains([]string{MethodGetTask, MethodCancelTask, MethodResubscribe}, c.method) {
				t.Fatalf("%s with task params", c.method)
			}
		case nil:
			if !slices.Contains([]string{MethodPushSet, MethodPushGet, MethodPushList, MethodPushDelete, MethodExtendedCard}, c.method) {
				t.Fatalf("%s accepted without params", c.method)
			}
		default:
			t.Fatalf("params %T", p)
		}
	})
}

// extensionsSeen is a handler that answers tasks/get with the A2A
// extensions the call named, as the handler's service parameters hold them.
type extensionsSeen struct{ a2asrv.RequestHandler }

func (extensionsSeen) GetTask(ctx context.Context, _ *a2a.GetTaskRequest) (*a2a.Task, error) {
	cc, _ := a2asrv.CallContextFrom(ctx)
	ext, _ := cc.ServiceParams().Get(a2a.SvcParamExtensions)
	return nil, a2a.NewError(a2a.ErrTaskNotFound, strings.Join(ext, ","))
}

// TestExtensionsHeader: a 0.3 client names its extensions in
// X-A2A-Extensions; the handler reads them where 1.0 puts them.
func TestExtensionsHeader(t *testing.T) {
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"id":"t"}}`))
	req.Header.Set("X-A2A-Extensions", "https://example.com/ext/v1")
	rec := httptest.NewRecorder()
	NewHandler(extensionsSeen{}).ServeHTTP(rec, req)
	if !strings.Contains(rec.Body.String(), `"message":"https://example.com/ext/v1"`) {
		t.Fatalf("the handler did not see the extensions: %s", rec.Body)
	}
}

// TestErrorCodes: each a2a error, however wrapped, answers with its
// JSON-RPC code (JSON-RPC 2.0 §5.1, A2A 0.3 §8.2) and names its reason.
func TestErrorCodes(t *testing.T) {
	for err, code := range map[error]int{
		a2a.ErrParseError: -32700, a2a.ErrInvalidRequest: -32600, a2a.ErrMethodNotFound: -32601,
		a2a.ErrInvalidParams: -32602, a2a.ErrInternalError: -32603,
		a2a.ErrTaskNotFound: -32001, a2a.ErrTaskNotCancelable: -32002, a2a.ErrPushNotificationNotSupported: -32003,
		a2a.ErrUnsupportedOperation: -32004, a2a.ErrUnsupportedContentType: -32005, a2a.ErrInvalidAgentResponse: -32006,
		a2a.ErrExtendedCardNotConfigured: -32007, a2a.ErrUnauthenticated: -31401, a2a.ErrUnauthorized: -31403,
		errors.New("no sentinel"): -32603,
	} {
		wrapped := fmt.Errorf("context: %w", a2a.NewError(err, "said so"))
		e := toRPCError(wrapped, time.Unix(0, 0))
		if e.Code != code || e.Message != "context: said so" {
			t.Errorf("%v: code %d message %q, want %d", err, e.Code, e.Message, code)
		}
		last := e.Data[len(e.Data)-1]
		if last.Value["reason"] != a2a.ErrorReason(err) || last.Value["domain"] != a2a.ProtocolDomain {
			t.Errorf("%v: error info %v", err, last.Value)
		}
	}
}
