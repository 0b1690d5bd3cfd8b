package router

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
)

// The evaluation relay on a serving router: behind the admin token, chat
// turns and session deletes reach the agent's endpoint (without the admin
// token), decide probes are decided and audited as the agent's own, and
// nothing else passes — not other agent paths, not inference.
func TestEvalRelay(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		mu.Lock()
		seen = append(seen, req.Method+" "+req.URL.Path+" auth="+req.Header.Get("Authorization")+" "+string(body))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"reply":"42","toolCalls":[]}`)
	}))
	defer agent.Close()

	dir := t.TempDir()
	c := routerconfigtest.Offline(t, dir)
	c.Governance = &governance.Policy{Name: "tp", Rules: []governance.Rule{
		{Name: "calc", Effect: governance.EffectAllow, Actions: []string{"tool:calculator"}},
	}}
	c.AgentURL = agent.URL
	addrs, _ := serving(t, ServeOptions{ConfigPath: routerconfigtest.Write(t, dir, c)})
	admin := "http://" + addrs["admin"]
	do := func(method, p, token, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, admin+p, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}
	agentSaw := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}

	if code, _ := do("POST", EvalAgentPrefix+"/v1/chat", "", `{"session":"s","message":"hi"}`); code != http.StatusUnauthorized {
		t.Errorf("without the token: %d", code)
	}
	if code, _ := do("POST", EvalAgentPrefix+"/v1/chat", "wrong", `{"session":"s","message":"hi"}`); code != http.StatusUnauthorized {
		t.Errorf("with a wrong token: %d", code)
	}
	if got := agentSaw(); len(got) != 0 {
		t.Fatalf("the agent was reached without the admin token: %v", got)
	}
	code, out := do("POST", EvalAgentPrefix+"/v1/chat", "admin-token", `{"session":"s","message":"6*7"}`)
	if code != http.StatusOK || !strings.Contains(out, `"42"`) {
		t.Fatalf("chat through the relay: %d %s", code, out)
	}
	if code, _ := do("DELETE", EvalAgentPrefix+"/v1/sessions/s", "admin-token", ""); code != http.StatusOK {
		t.Errorf("session delete: %d", code)
	}
	for _, p := range []string{"/healthz", "/v1/sessions/s", "/v1/chat/../admin"} {
		if code, _ := do("GET", EvalAgentPrefix+p, "admin-token", ""); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
			t.Errorf("GET %s passed the relay: %d", p, code)
		}
	}
	got := agentSaw()
	want := []string{`POST /v1/chat auth= {"session":"s","message":"6*7"}`, `DELETE /v1/sessions/s auth= `}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("the agent saw\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	decide := func(action string) string {
		code, out := do("POST", EvalRouterPrefix+DecidePath, "admin-token", `{"action":"`+action+`"}`)
		var d struct{ Decision string }
		json.Unmarshal([]byte(out), &d)
		if code != http.StatusOK && code != http.StatusForbidden {
			t.Fatalf("decide %s: %d %s", action, code, out)
		}
		return d.Decision
	}
	if d := decide("tool:calculator"); d != "allow" {
		t.Errorf("tool:calculator through the relay: %q", d)
	}
	if d := decide("tool:exec"); d != "deny" {
		t.Errorf("tool:exec through the relay: %q", d)
	}
	if code, _ := do("POST", EvalRouterPrefix+"/v1/chat/completions", "admin-token", `{"messages":[{"role":"user","content":"hi"}]}`); code != http.StatusNotFound {
		t.Errorf("inference passed the relay: %d", code)
	}
	_, tail := do("GET", "/admin/v1/audit/tail?n=10", "admin-token", "")
	for _, a := range []string{"tool:calculator", "tool:exec"} {
		if !strings.Contains(tail, a) {
			t.Errorf("the audit tail lacks the relayed decision %s: %s", a, tail)
		}
	}
	if strings.Contains(tail, "inference:") {
		t.Errorf("a refused relay request reached inference: %s", tail)
	}
}
