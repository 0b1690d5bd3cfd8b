package agent

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// kars-agent offers remember and recall only when the router has a
// memory binding, and names the chat session as the principal.
func TestAgentMemoryTools(t *testing.T) {
	var stored []map[string]string
	mux := http.NewServeMux()
	mux.Handle("/", &fakeRouter{})
	mux.HandleFunc("/kars/v1/memory", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"store":"s","scope":"session","readOnly":false}`)
	})
	mux.HandleFunc("/kars/v1/memory/memories", func(w http.ResponseWriter, r *http.Request) {
		var in map[string]string
		json.NewDecoder(r.Body).Decode(&in)
		stored = append(stored, in)
		fmt.Fprintf(w, `{"id":"m1","content":%q}`, in["content"])
	})
	mux.HandleFunc("/kars/v1/memory/search", func(w http.ResponseWriter, r *http.Request) {
		var in map[string]string
		json.NewDecoder(r.Body).Decode(&in)
		var out []map[string]string
		for _, s := range stored {
			if s["principal"] == in["principal"] {
				out = append(out, map[string]string{"content": s["content"]})
			}
		}
		json.NewEncoder(w).Encode(map[string]any{"memories": out})
	})
	router := httptest.NewServer(mux)
	defer router.Close()
	a, err := New(Config{RouterURL: router.URL, Workspace: t.TempDir(), Model: "m", Listen: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(a.memory.offered(t.Context())); n != 2 {
		t.Fatalf("%d memory tools offered, want remember and recall", n)
	}
	// The model asks for remember (the test router's model names the
	// tool the message does).
	turn, err := a.Chat(t.Context(), "s1", "please remember this")
	if err != nil || len(turn.ToolCalls) != 1 || turn.ToolCalls[0].Name != "remember" {
		t.Fatalf("remember through a turn: %v %+v", err, turn)
	}
	stored = nil
	if call := a.memory.call(t.Context(), "s1", ToolCall{Name: "remember", Arguments: `{"fact":"the launch code 42"}`}); call.Decision != "allow" {
		t.Fatalf("remember: %+v", call)
	}
	if len(stored) != 1 || stored[0]["principal"] != "s1" {
		t.Fatalf("stored %v", stored)
	}
	call := a.memory.call(t.Context(), "s1", ToolCall{Name: "recall", Arguments: `{"query":"launch code"}`})
	if !strings.Contains(call.Result, "launch code 42") {
		t.Fatalf("recall: %+v", call)
	}
	if call = a.memory.call(t.Context(), "s2", ToolCall{Name: "recall", Arguments: `{"query":"launch code"}`}); strings.Contains(call.Result, "42") {
		t.Fatalf("another session recalled it: %+v", call)
	}
	// Without a binding, no memory tools.
	b, _ := New(Config{RouterURL: httptest.NewServer(&fakeRouter{}).URL, Workspace: t.TempDir(), Model: "m", Listen: "x"})
	if n := len(b.memory.offered(t.Context())); n != 0 {
		t.Fatalf("%d memory tools without a binding", n)
	}
}
