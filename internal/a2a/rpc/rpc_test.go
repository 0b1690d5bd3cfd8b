package rpc

import (
	"encoding/json"
	"errors"
	"net/http/httptest"
	"testing"
)

func TestVersionOf(t *testing.T) {
	for h, want := range map[string]Version{"": V03, " ": V03, "0.3": V03, "0.3.0": V03, "1.0": V10, "1.0.0": V10} {
		if got, err := VersionOf(h); err != nil || got != want {
			t.Errorf("VersionOf(%q) = %v, %v; want %v", h, got, err, want)
		}
	}
	for _, h := range []string{"2.0", "1", "0.2", "1.1", "x"} {
		if _, err := VersionOf(h); !errors.Is(err, ErrVersionNotSupported) {
			t.Errorf("VersionOf(%q) accepted", h)
		}
	}
}

func TestLookupKeepsVersionsApart(t *testing.T) {
	for _, tc := range []struct {
		v      Version
		method string
		op     Op
		ok     bool
	}{
		{V10, "SendMessage", OpSendMessage, true},
		{V10, "SendStreamingMessage", OpSendStreamingMessage, true},
		{V10, "ListTasks", OpListTasks, true},
		{V10, "SubscribeToTask", OpSubscribeToTask, true},
		{V10, "message/send", 0, false},
		{V03, "message/send", OpSendMessage, true},
		{V03, "tasks/cancel", OpCancelTask, true},
		{V03, "tasks/resubscribe", OpSubscribeToTask, true},
		{V03, "SendMessage", 0, false},
		{V10, "CreateTaskPushNotificationConfig", 0, false},
	} {
		op, ok := Lookup(tc.v, tc.method)
		if op != tc.op || ok != tc.ok {
			t.Errorf("Lookup(%v, %s) = %v, %v", tc.v, tc.method, op, ok)
		}
	}
	if OpCancelTask.String() != "CancelTask" || !OpSendStreamingMessage.Streams() || !OpSendMessage.Sends() || OpGetTask.Sends() {
		t.Fatal("op properties")
	}
}

func TestParseEnvelope(t *testing.T) {
	env, err := ParseEnvelope([]byte(`{"jsonrpc":"2.0","id":7,"method":"SendMessage","params":{"message":{}}}`))
	if err != nil || string(env.ID) != "7" || env.Method != "SendMessage" || string(env.Params) != `{"message":{}}` {
		t.Fatalf("%+v %v", env, err)
	}
	for name, tc := range map[string]struct {
		body string
		code int
		id   string
	}{
		"duplicate method": {`{"jsonrpc":"2.0","id":"a","method":"GetTask","method":"SendMessage"}`, CodeParseError, ""},
		"batch":            {`[{"jsonrpc":"2.0","id":1,"method":"GetTask"}]`, CodeInvalidRequest, ""},
		"notification":     {`{"jsonrpc":"2.0","method":"GetTask"}`, CodeInvalidRequest, ""},
		"old jsonrpc":      {`{"jsonrpc":"1.0","id":1,"method":"GetTask"}`, CodeInvalidRequest, "1"},
		"extra member":     {`{"jsonrpc":"2.0","id":1,"method":"GetTask","x":1}`, CodeInvalidRequest, "1"},
		"params array":     {`{"jsonrpc":"2.0","id":1,"method":"GetTask","params":[1]}`, CodeInvalidRequest, "1"},
		"method space":     {`{"jsonrpc":"2.0","id":1,"method":"Get Task"}`, CodeInvalidRequest, "1"},
		"id object":        {`{"jsonrpc":"2.0","id":{},"method":"GetTask"}`, CodeInvalidRequest, ""},
		"trailing":         {`{"jsonrpc":"2.0","id":1,"method":"GetTask"} {}`, CodeParseError, ""},
	} {
		env, err := ParseEnvelope([]byte(tc.body))
		var e *Error
		if !errors.As(err, &e) || e.Code != tc.code || string(env.ID) != tc.id {
			t.Errorf("%s: %+v, %v", name, env, err)
		}
	}
}

func TestErrorWrite(t *testing.T) {
	rec := httptest.NewRecorder()
	(&Error{Code: CodeUnauthorized, Message: "no", Reason: "kars_skill_not_advertised"}).Write(rec, 403, json.RawMessage(`"x"`))
	var got struct {
		JSONRPC string `json:"jsonrpc"`
		ID      string `json:"id"`
		Error   struct {
			Code int `json:"code"`
			Data []struct {
				Type   string `json:"@type"`
				Reason string `json:"reason"`
				Domain string `json:"domain"`
			} `json:"data"`
		} `json:"error"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || rec.Code != 403 || got.ID != "x" || got.Error.Code != CodeUnauthorized || len(got.Error.Data) != 1 ||
		got.Error.Data[0].Reason != "kars_skill_not_advertised" || got.Error.Data[0].Domain != ErrorDomain || got.Error.Data[0].Type != "type.googleapis.com/google.rpc.ErrorInfo" {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
}
