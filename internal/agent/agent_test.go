package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

func TestCalculate(t *testing.T) {
	cases := []struct {
		in   string
		want float64
		err  bool
	}{
		{"2+3", 5, false},
		{"2 + 3 * 4", 14, false},
		{"(2 + 3) * 4", 20, false},
		{"-3 - -2", -1, false},
		{"10 / 4", 2.5, false},
		{"use the calculator to compute 12*12 please", 144, false},
		{"1/0", 0, true},
		{"(1+2", 0, true},
		{"no numbers here", 0, true},
		{strings.Repeat("(", 100) + "1" + strings.Repeat(")", 100), 0, true},
	}
	for _, c := range cases {
		got, err := Calculate(c.in)
		if (err != nil) != c.err || (!c.err && got != c.want) {
			t.Errorf("Calculate(%q) = %v, %v; want %v, error %v", c.in, got, err, c.want, c.err)
		}
	}
}

func FuzzCalculate(f *testing.F) {
	for _, s := range []string{"1+2", "(3*4)-5/6", "--1", "((((", "1e5", "9999999999999999999*9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = Calculate(s) // must not panic or recurse without bound
	})
}

func TestWorkspacePathStaysInside(t *testing.T) {
	ws := "/sandbox"
	for _, rel := range []string{"../etc/passwd", "/etc/passwd", "a/../../x", ".kars-agent/sessions/default.json", ""} {
		p, err := workspacePath(ws, rel)
		if err == nil && !strings.HasPrefix(p, ws+"/") {
			t.Errorf("workspacePath(%q) = %q escapes the workspace", rel, p)
		}
		if rel == "" || strings.HasPrefix(rel, ".kars-agent") {
			if err == nil {
				t.Errorf("workspacePath(%q) should be refused", rel)
			}
		}
	}
	if p, err := workspacePath(ws, "notes/a.txt"); err != nil || p != "/sandbox/notes/a.txt" {
		t.Errorf("workspacePath(notes/a.txt) = %q, %v", p, err)
	}
}

// fakeRouter speaks the two router APIs the agent uses: OpenAI chat
// completions (asking for one tool call when tools are offered and the user
// mentions one, then answering with the tool result) and the decide endpoint.
type fakeRouter struct {
	deny      map[string]bool
	decisions atomic.Int32
	sawKey    atomic.Value
}

func (f *fakeRouter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case DecidePath:
		f.decisions.Add(1)
		var req struct {
			Action string         `json:"action"`
			Args   map[string]any `json:"args"`
		}
		_ = json.Unmarshal(body, &req)
		if f.deny[req.Action] {
			fmt.Fprintf(w, `{"decision":"deny","rule":"no-%s","reason":"denied by test policy"}`, req.Action)
			return
		}
		fmt.Fprint(w, `{"decision":"allow","rule":"ok","reason":"allowed"}`)
	case "/v1/chat/completions":
		f.sawKey.Store(r.Header.Get("Authorization"))
		var req struct {
			Messages []map[string]any `json:"messages"`
			Tools    []struct {
				Function struct{ Name string } `json:"function"`
			} `json:"tools"`
		}
		_ = json.Unmarshal(body, &req)
		last := req.Messages[len(req.Messages)-1]
		if last["role"] == "tool" {
			fmt.Fprintf(w, `{"id":"c2","object":"chat.completion","model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"tool said: %s"}}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}`, last["content"])
			return
		}
		user, _ := last["content"].(string)
		if strings.Contains(user, "budget") {
			w.WriteHeader(http.StatusTooManyRequests)
			fmt.Fprint(w, `{"error":{"message":"daily token budget exhausted","type":"insufficient_quota","code":"budget_exceeded"}}`)
			return
		}
		for _, tl := range req.Tools {
			if strings.Contains(user, tl.Function.Name) {
				args, _ := json.Marshal(map[string]string{"expression": user})
				fmt.Fprintf(w, `{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":%q,"arguments":%q}}]}}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}`, tl.Function.Name, args)
				return
			}
		}
		fmt.Fprintf(w, `{"id":"c0","object":"chat.completion","model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"echo: %s"}}],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}`, user)
	default:
		http.NotFound(w, r)
	}
}

func newTestAgent(t *testing.T, fr *fakeRouter) (*Agent, string) {
	t.Helper()
	router := httptest.NewServer(fr)
	t.Cleanup(router.Close)
	ws := t.TempDir()
	cfg, err := ConfigFromEnv(func(k string) string {
		return map[string]string{EnvRouterURL: router.URL, EnvWorkspace: ws, EnvSandbox: "dev-agent", EnvNamespace: "kars-dev-agent"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a, ws
}

func chat(t *testing.T, h http.Handler, body string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/chat", bytes.NewBufferString(body)))
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("chat answered non-JSON %q", rec.Body.String())
	}
	return rec.Code, out
}

func TestChatRunsAllowedToolAndKeepsState(t *testing.T) {
	fr := &fakeRouter{}
	a, ws := newTestAgent(t, fr)
	h := a.Handler()
	code, out := chat(t, h, `{"message":"use the calculator for 6*7"}`)
	if code != 200 {
		t.Fatalf("chat = %d %v", code, out)
	}
	if out["reply"] != "tool said: 42" {
		t.Fatalf("reply = %v, want the calculator's 42 relayed", out["reply"])
	}
	if fr.decisions.Load() != 1 {
		t.Fatalf("router asked for %d decisions, want 1", fr.decisions.Load())
	}
	if k, _ := fr.sawKey.Load().(string); k != "Bearer kars-no-credential" {
		t.Fatalf("agent sent Authorization %q; it must only send the placeholder", k)
	}
	// State is on disk in the workspace and survives a new agent.
	if _, err := os.Stat(filepath.Join(ws, ".kars-agent", "sessions", "default.json")); err != nil {
		t.Fatal(err)
	}
	b, _ := New(a.cfg)
	msgs, err := b.History("default")
	if err != nil || len(msgs) != 5 { // system, user, assistant(tool call), tool, assistant
		t.Fatalf("history after restart: %d messages, %v", len(msgs), err)
	}
}

func TestChatDeniedToolIsNotRun(t *testing.T) {
	fr := &fakeRouter{deny: map[string]bool{"tool:write_file": true}}
	a, ws := newTestAgent(t, fr)
	turn, err := a.Chat(t.Context(), "s1", "please write_file now")
	if err != nil {
		t.Fatal(err)
	}
	if len(turn.ToolCalls) != 1 || turn.ToolCalls[0].Decision != "deny" || turn.ToolCalls[0].Result != "" {
		t.Fatalf("tool calls = %+v, want one denied and not run", turn.ToolCalls)
	}
	if !strings.Contains(turn.Reply, "policy deny") {
		t.Fatalf("reply %q does not relay the denial", turn.Reply)
	}
	entries, _ := os.ReadDir(ws)
	for _, e := range entries {
		if e.Name() != ".kars-agent" {
			t.Fatalf("denied write_file still wrote %s", e.Name())
		}
	}
}

func TestChatFailsClosedWithoutDecision(t *testing.T) {
	fr := &fakeRouter{}
	a, _ := newTestAgent(t, fr)
	a.cfg.RouterURL = a.cfg.RouterURL + "/broken" // decide endpoint now 404s
	call := a.runTool(t.Context(), ToolCall{ID: "x", Name: "current_time", Arguments: "{}"})
	if call.Decision != "deny" || call.Result != "" {
		t.Fatalf("without a decision the tool ran: %+v", call)
	}
}

func TestRouterRefusalPassesThrough(t *testing.T) {
	a, _ := newTestAgent(t, &fakeRouter{})
	code, out := chat(t, a.Handler(), `{"message":"spend my budget"}`)
	if code != http.StatusTooManyRequests {
		t.Fatalf("status = %d, want 429 from the router", code)
	}
	e, _ := out["error"].(map[string]any)
	if !strings.Contains(fmt.Sprint(e["message"]), "budget") {
		t.Fatalf("error %v does not name the budget", out)
	}
}

func TestBadChatRequests(t *testing.T) {
	a, _ := newTestAgent(t, &fakeRouter{})
	h := a.Handler()
	for _, body := range []string{`not json`, `{"message":""}`, `{"message":"x","session":"../../etc"}`} {
		if code, _ := chat(t, h, body); code != http.StatusBadRequest {
			t.Errorf("body %q: status %d, want 400", body, code)
		}
	}
	big := `{"message":"` + strings.Repeat("a", maxChatBody) + `"}`
	if code, _ := chat(t, h, big); code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: status %d, want 413", code)
	}
}

func FuzzChatRequest(f *testing.F) {
	f.Add([]byte(`{"message":"hi"}`))
	f.Add([]byte(`{"session":"a","message":"use calculator 1+1"}`))
	f.Add([]byte(`{"session":"\u0000"}`))
	fr := &fakeRouter{}
	router := httptest.NewServer(fr)
	defer router.Close()
	ws := f.TempDir()
	a, err := New(Config{RouterURL: router.URL, Workspace: ws, Model: "m", Listen: "x"})
	if err != nil {
		f.Fatal(err)
	}
	h := a.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/chat", bytes.NewReader(body)))
		if rec.Code != 200 && rec.Code != 400 && rec.Code != 413 && rec.Code != 429 {
			t.Fatalf("status %d for %q", rec.Code, body)
		}
		// Nothing may be written outside the agent's state folder.
		entries, _ := os.ReadDir(ws)
		for _, e := range entries {
			if e.Name() != ".kars-agent" {
				t.Fatalf("request %q created %s", body, e.Name())
			}
		}
	})
}
