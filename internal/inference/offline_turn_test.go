package inference

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// A runtime that appends its own context after the user's message (as
// OpenClaw does) still gets the tool the user named.
func TestOfflineUserTurnSpansTrailingContext(t *testing.T) {
	var r offlineChatRequest
	raw := `{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},
		{"role":"user","content":"use the calculator for 6*7"},{"role":"user","content":[{"type":"text","text":"Active exec sessions: none"}]}],
		"tools":[{"type":"function","function":{"name":"calculator","parameters":{"properties":{"expression":{"type":"string"}},"required":["expression"]}}}]}`
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		t.Fatal(err)
	}
	ans := offlineAnswer(&r)
	if ans.toolName != "calculator" || !strings.Contains(ans.toolArgs, "6*7") || strings.Contains(ans.toolArgs, "hi\\n") {
		t.Fatalf("answer %+v: want a calculator call on this turn's text only", ans)
	}
}

// The offline model speaks Anthropic's Messages API: tool_use for a named
// tool, then the tool_result's content as the answer.
func TestOfflineMessagesToolRoundTrip(t *testing.T) {
	tools := `"tools":[{"name":"calculator","input_schema":{"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"]}}]`
	post := func(body string) map[string]any {
		req, _ := http.NewRequest(http.MethodPost, OfflineBaseURL+"/messages", strings.NewReader(body))
		resp, err := OfflineTransport{}.RoundTrip(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("RoundTrip: %v %v", err, resp)
		}
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return out
	}
	first := post(`{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"use the calculator for 6*7"}],` + tools + `}`)
	blocks, _ := first["content"].([]any)
	use, _ := blocks[0].(map[string]any)
	if first["stop_reason"] != "tool_use" || use["type"] != "tool_use" || use["name"] != "calculator" {
		t.Fatalf("first answer %v: want a calculator tool_use", first)
	}
	second := post(`{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"use the calculator for 6*7"},
		{"role":"assistant","content":[{"type":"tool_use","id":"` + use["id"].(string) + `","name":"calculator","input":{}}]},
		{"role":"user","content":[{"type":"tool_result","tool_use_id":"` + use["id"].(string) + `","content":"42"}]}],` + tools + `}`)
	text, _ := second["content"].([]any)[0].(map[string]any)["text"].(string)
	if second["stop_reason"] != "end_turn" || !strings.Contains(text, "calculator returned: 42") {
		t.Fatalf("second answer %v", second)
	}
	if u, _ := second["usage"].(map[string]any); u["input_tokens"].(float64) <= 0 || u["output_tokens"].(float64) <= 0 {
		t.Fatalf("usage %v", second["usage"])
	}
}
