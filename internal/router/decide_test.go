package router

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/agent"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/behavior"
	"github.com/kars-io/kars/internal/governance/toolpolicy"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// toolPolicy is a ToolPolicy as a user would apply it, converted the way
// the controller converts it for router.json.
func toolPolicy() *karsv1.ToolPolicySpec {
	return &karsv1.ToolPolicySpec{Rules: []karsv1.ToolRule{
		{Name: "models", Effect: karsv1.EffectAllow, Actions: []string{"inference:*:gpt-4.1*", "inference:*:kars-offline"}},
		{Name: "no-shell", Effect: karsv1.EffectDeny, Actions: []string{"shell:*"}, Priority: 100},
		{Name: "search", Effect: karsv1.EffectAllow, Actions: []string{"tool:web_search", "mcp:github.*"}},
		{Name: "email-needs-a-human", Effect: karsv1.EffectRequireApproval, Actions: []string{"tool:send_email"}},
		{Name: "fetch", Effect: karsv1.EffectAllow, Actions: []string{"tool:fetch"},
			RateLimit: &karsv1.RuleRateLimit{Requests: 2, WindowSeconds: 3600}},
		{Name: "small-payments", Effect: karsv1.EffectAllow, Actions: []string{"tool:pay"},
			Conditions: []karsv1.ToolCondition{{Expression: "args.amount <= 100.0"}}},
		{Name: "calculator", Effect: karsv1.EffectAllow, Actions: []string{"tool:calculator"}},
	}}
}

func withToolPolicy(_ *harness, c *routerconfig.Config) {
	c.Governance = toolpolicy.FromSpec("kars-test/tools", toolPolicy())
}

// decide posts body to the decide endpoint and decodes the answer.
func (h *harness) decide(body string) (int, map[string]any) {
	h.t.Helper()
	resp, err := http.Post(h.agent.URL+DecidePath, "application/json", strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		h.t.Fatalf("decide %s: %d, body not JSON: %q", body, resp.StatusCode, b)
	}
	return resp.StatusCode, v
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestDecideVerdicts(t *testing.T) {
	h := newHarness(t, withToolPolicy)
	const secret = "do-not-log-this-argument"
	cases := []struct {
		name, action, args string
		decision, rule     string
	}{
		{"allowed tool", "tool:web_search", `{"query":"` + secret + `"}`, "allow", "search"},
		{"allowed mcp tool", "mcp:github.create_issue", `{"title":"x"}`, "allow", "search"},
		{"denied by a rule", "shell:rm -rf /", "", "deny", "no-shell"},
		{"no rule matches", "tool:launch_missiles", `{}`, "deny", ""},
		{"approval required", "tool:send_email", `{"to":"a@example.com"}`, "require_approval", "email-needs-a-human"},
		{"rate limit, first", "tool:fetch", `{"url":"https://example.com/1"}`, "allow", "fetch"},
		{"rate limit, second", "tool:fetch", `{"url":"https://example.com/2"}`, "allow", "fetch"},
		{"rate limit, third", "tool:fetch", `{"url":"https://example.com/3"}`, "rate_limited", "fetch"},
		{"condition holds", "tool:pay", `{"amount":40}`, "allow", "small-payments"},
		{"condition fails", "tool:pay", `{"amount":4000}`, "deny", ""},
		{"null args", "tool:web_search", `null`, "allow", "search"},
	}
	for _, tc := range cases {
		body := `{"action":` + mustJSON(tc.action)
		if tc.args != "" {
			body += `,"args":` + tc.args
		}
		body += "}"
		code, v := h.decide(body)
		if code != 200 || v["decision"] != tc.decision || v["rule"] != tc.rule || v["reason"] == "" {
			t.Fatalf("%s: %d %v, want %s by rule %q", tc.name, code, v, tc.decision, tc.rule)
		}
	}
	// Exactly one entry per decision, written before the answer: no
	// quiescing needed, the entries are already durable.
	all, err := AuditTail(h.cfg.Audit.Dir, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var recs []audit.Entry
	for _, e := range all {
		if e.Action != audit.ActionOpen {
			recs = append(recs, e)
		}
	}
	if len(recs) != len(cases) {
		t.Fatalf("%d audit entries for %d decisions", len(recs), len(cases))
	}
	for i, tc := range cases {
		e := recs[i]
		wantPayload := ""
		if tc.args != "" {
			wantPayload = sha256Hex(tc.args)
		}
		if e.Action != tc.action || e.Decision != tc.decision || e.Rule != tc.rule || e.Reason == "" ||
			e.PayloadSHA256 != wantPayload || e.Agent != "kars-test/bot" || e.Latency <= 0 ||
			e.Attrs["op"] != "decide" || e.Attrs["status"] != "200" {
			t.Fatalf("%s: audit entry %+v", tc.name, e)
		}
	}
	if rep, err := audit.Verify(h.cfg.Audit.Dir, audit.VerifyOptions{}); err != nil || !rep.OK() {
		t.Fatalf("audit verify: %+v %v", rep, err)
	}
	raw, _ := os.ReadFile(filepath.Join(h.cfg.Audit.Dir, filepath.Base(firstLogFile(t, h.cfg.Audit.Dir))))
	if strings.Contains(string(raw), secret) {
		t.Fatal("the audit log holds a tool argument; only its hash belongs there")
	}
	m := h.router.metrics
	for verdict, want := range map[string]float64{"allow": 6, "deny": 3, "require_approval": 1, "rate_limited": 1} {
		if got := testutil.ToFloat64(m.decisions.WithLabelValues(verdict)); got != want {
			t.Errorf("decisions_total{verdict=%q} = %v, want %v", verdict, got, want)
		}
	}
	if got := testutil.ToFloat64(m.requests.WithLabelValues("decide", "", "200", "allow")); got != 6 {
		t.Errorf("requests_total for allowed decides = %v, want 6", got)
	}
	if h.fake.Requests.Load() != 0 {
		t.Fatal("a decision reached the upstream")
	}
}

func firstLogFile(t *testing.T, dir string) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "audit-*.jsonl"))
	if len(files) != 1 {
		t.Fatalf("audit files %v", files)
	}
	return files[0]
}

func mustJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestDecideRejectsBadRequests(t *testing.T) {
	h := newHarness(t, withToolPolicy)
	long := "tool:" + strings.Repeat("a", 300)
	cases := []struct {
		name, body string
		audited    bool   // a deny entry is written for a body that named an action
		action     string // the audited action
		msg        string // part of the error message
	}{
		{"not JSON", `tool:web_search`, false, "", "must be a JSON object"},
		{"array", `[{"action":"tool:web_search"}]`, false, "", "must be a JSON object"},
		{"null", `null`, false, "", "must be a JSON object"},
		{"no action", `{"args":{}}`, false, "", `"action" is required`},
		{"action not a string", `{"action":["tool:web_search"]}`, false, "", `"action" must be a string`},
		{"trailing data", `{"action":"tool:web_search"} {}`, false, "", "trailing data"},
		{"args not an object", `{"action":"tool:web_search","args":["q"]}`, true, "tool:web_search", `"args" must be a JSON object`},
		{"args a string", `{"action":"tool:web_search","args":"q"}`, true, "tool:web_search", `"args" must be a JSON object`},
		{"unknown member", `{"action":"tool:web_search","session":"s1"}`, true, "tool:web_search", `unknown member "session"`},
		{"inference action", `{"action":"inference:chat:gpt-4.1"}`, true, "inference:chat:gpt-4.1", "decided by the router on its inference API"},
		{"unknown namespace", `{"action":"browser:open"}`, true, "browser:open", "unknown namespace"},
		{"malformed tool", `{"action":"tool:a:b"}`, true, "tool:a:b", "malformed action"},
		{"wildcard", `{"action":"tool:*"}`, true, "tool:*", "malformed action"},
		{"empty action", `{"action":""}`, true, "", "malformed action: empty"},
		{"too long", `{"action":"` + long + `"}`, true, long[:256] + "…", "longer than 256 bytes"},
		{"oversized body", `{"action":"tool:web_search","args":{"q":"` + strings.Repeat("x", MaxDecideBytes) + `"}}`, false, "", "exceeds 65536 bytes"},
	}
	audited := 0
	for _, tc := range cases {
		code, v := h.decide(tc.body)
		e, _ := v["error"].(map[string]any)
		if code != 400 || e == nil || e["code"] != "kars_bad_request" || !strings.Contains(e["message"].(string), tc.msg) || v["decision"] != nil {
			t.Fatalf("%s: %d %v, want 400 mentioning %q", tc.name, code, v, tc.msg)
		}
		recs := h.auditRecords()
		if tc.audited {
			audited++
		}
		if len(recs) != audited {
			t.Fatalf("%s: %d audit entries, want %d", tc.name, len(recs), audited)
		}
		if tc.audited {
			last := recs[len(recs)-1]
			if last.Action != tc.action || last.Decision != "deny" || last.Rule != DecideRule ||
				!strings.Contains(last.Reason, tc.msg) || last.Attrs["status"] != "400" {
				t.Fatalf("%s: audit entry %+v", tc.name, last)
			}
		}
	}
	resp, err := http.Get(h.agent.URL + DecidePath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET: %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	if testutil.ToFloat64(h.router.metrics.decisions.WithLabelValues("allow")) != 0 {
		t.Fatal("a refused request reached the governance engine")
	}
}

// TestDecideQuarantine: repeated denials trip the behaviour monitor, which
// then denies everything the agent asks — tool decisions and inference
// alike — across a restart, until an operator clears it.
func TestDecideQuarantine(t *testing.T) {
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		withToolPolicy(h, c)
		c.Behavior = &routerconfig.Behavior{MaxDenialsPerMinute: 2, Quarantine: true}
	})
	if _, v := h.decide(`{"action":"tool:web_search"}`); v["decision"] != "allow" {
		t.Fatalf("before: %v", v)
	}
	for i := range 3 {
		code, v := h.decide(`{"action":"shell:curl evil.example"}`)
		wantRule := "no-shell"
		if i == 2 {
			wantRule = behavior.Rule // the third denial in a minute trips it
		}
		if code != 200 || v["decision"] != "deny" || v["rule"] != wantRule {
			t.Fatalf("denial %d: %d %v, want rule %s", i+1, code, v, wantRule)
		}
	}
	code, v := h.decide(`{"action":"tool:web_search"}`)
	if code != 200 || v["decision"] != "deny" || v["rule"] != behavior.Rule || !strings.Contains(v["reason"].(string), "quarantined") {
		t.Fatalf("quarantined agent: %d %v", code, v)
	}
	resp, err := http.Post(h.agent.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(string(b), "kars_policy_denied") || !strings.Contains(string(b), behavior.Rule) {
		t.Fatalf("inference while quarantined: %d %s", resp.StatusCode, b)
	}
	if h.fake.Requests.Load() != 0 {
		t.Fatal("a quarantined agent's inference reached the upstream")
	}
	recs := h.auditRecords()
	if last := recs[len(recs)-1]; last.Rule != behavior.Rule || last.Decision != "deny" {
		t.Fatalf("audit of the refused inference: %+v", last)
	}

	// A restart keeps the quarantine: it is persisted in the state dir.
	r2, err := New(routerconfigtest.Snapshot(t, h.cfg), Options{Audit: h.sink, Ledger: h.router.Ledger(), Logger: h.router.log})
	if err != nil {
		t.Fatal(err)
	}
	agent2 := httptest.NewServer(r2.AgentHandler())
	defer agent2.Close()
	h2 := *h
	h2.agent = agent2
	if _, v := h2.decide(`{"action":"tool:web_search"}`); v["rule"] != behavior.Rule {
		t.Fatalf("after restart: %v", v)
	}

	// The operator clears it on the admin API; the agent is allowed again.
	admin := httptest.NewServer(r2.AdminHandler(h.cfg.Admin.TokenFile, AdminBackends{}))
	defer admin.Close()
	adminAt := func(method, query string, want int) map[string]any {
		req, _ := http.NewRequest(method, admin.URL+"/admin/v1/quarantine"+query, nil)
		req.Header.Set("Authorization", "Bearer admin-secret-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v map[string]any
		json.NewDecoder(resp.Body).Decode(&v)
		if resp.StatusCode != want {
			t.Fatalf("%s quarantine%s: %d %v", method, query, resp.StatusCode, v)
		}
		return v
	}
	adminDo := func(method string) map[string]any { return adminAt(method, "", 200) }
	if q := adminDo("GET")["quarantines"].([]any); len(q) != 1 || q[0].(map[string]any)["kind"] != string(behavior.RepeatedDenials) {
		t.Fatalf("quarantine list %v", q)
	}
	if v := adminDo("DELETE"); v["cleared"] != true {
		t.Fatalf("clear: %v", v)
	}
	if _, v := h2.decide(`{"action":"tool:web_search"}`); v["decision"] != "allow" {
		t.Fatalf("after clearing: %v", v)
	}

	// An operator quarantines the agent (the KarsSREAction QuarantineAgent):
	// without a reason, or with one that is not printable text, nothing
	// changes.
	adminAt("POST", "", 400)
	adminAt("POST", "?reason=a%0Ab", 400)
	adminAt("POST", "?reason="+strings.Repeat("x", 257), 400)
	if _, v := h2.decide(`{"action":"tool:web_search"}`); v["decision"] != "allow" {
		t.Fatalf("a refused quarantine changed something: %v", v)
	}
	if v := adminAt("POST", "?reason=incident+42", 200); v["imposed"] != true {
		t.Fatalf("impose: %v", v)
	}
	if v := adminAt("POST", "?reason=again", 200); v["imposed"] != false {
		t.Fatalf("second impose: %v", v)
	}
	if _, v := h2.decide(`{"action":"tool:web_search"}`); v["rule"] != behavior.Rule || !strings.Contains(fmt.Sprint(v["reason"]), "by an operator (incident 42)") {
		t.Fatalf("after an operator quarantine: %v", v)
	}
	if q := adminDo("GET")["quarantines"].([]any); len(q) != 1 || q[0].(map[string]any)["kind"] != string(behavior.Operator) {
		t.Fatalf("quarantine list %v", q)
	}
	if v := adminDo("DELETE"); v["cleared"] != true {
		t.Fatalf("clear: %v", v)
	}
}

// TestDecideFailsClosedWithoutAudit: a decision that cannot be put on
// record is not given.
func TestDecideFailsClosedWithoutAudit(t *testing.T) {
	h := newHarness(t, withToolPolicy)
	h.sink.Close()
	for i := range 2 { // the first append fails; the second is refused up front
		code, v := h.decide(`{"action":"tool:web_search"}`)
		e, _ := v["error"].(map[string]any)
		if code != 503 || e == nil || e["code"] != "kars_audit_unavailable" || v["decision"] != nil {
			t.Fatalf("call %d: %d %v", i+1, code, v)
		}
	}
	if got := testutil.ToFloat64(h.router.metrics.decisions.WithLabelValues("allow")); got != 1 {
		t.Fatalf("the engine decided %v times; only the first call, before the log was known to fail, may reach it", got)
	}
}

// TestReferenceAgentToolCalls runs the reference agent (internal/agent)
// against the router with the Offline model: the model asks for a tool, the
// agent asks the router, and runs the tool only when the router allows it.
func TestReferenceAgentToolCalls(t *testing.T) {
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		withToolPolicy(h, c)
		c.Models.Primary = routerconfigtest.OfflineTarget()
	})
	a, err := agent.New(agent.Config{AgentID: "kars-test/bot", RouterURL: h.agent.URL, Model: "any",
		Workspace: t.TempDir(), Tools: []string{"calculator", "list_files"}})
	if err != nil {
		t.Fatal(err)
	}
	turn, err := a.Chat(context.Background(), "s1", "use the calculator for 6*7")
	if err != nil {
		t.Fatal(err)
	}
	if len(turn.ToolCalls) != 1 || turn.ToolCalls[0].Name != "calculator" || turn.ToolCalls[0].Decision != "allow" || turn.ToolCalls[0].Result != "42" {
		t.Fatalf("allowed tool call: %+v", turn.ToolCalls)
	}
	turn, err = a.Chat(context.Background(), "s2", "list_files please")
	if err != nil {
		t.Fatal(err)
	}
	if len(turn.ToolCalls) != 1 || turn.ToolCalls[0].Decision != "deny" || turn.ToolCalls[0].Result != "" {
		t.Fatalf("denied tool call: %+v", turn.ToolCalls)
	}
	var decided []string
	for _, e := range h.auditRecords() {
		if e.Attrs["op"] == "decide" {
			decided = append(decided, e.Action+"="+e.Decision)
		}
	}
	if strings.Join(decided, ",") != "tool:calculator=allow,tool:list_files=deny" {
		t.Fatalf("audited decisions %v", decided)
	}
	if agent.DecidePath != DecidePath {
		t.Fatalf("the agent calls %s, the router serves %s", agent.DecidePath, DecidePath)
	}
}
