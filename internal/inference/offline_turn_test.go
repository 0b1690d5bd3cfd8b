package inference

import (
	"encoding/json"
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
