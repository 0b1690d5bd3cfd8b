package governance

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func loadAGTFile(t *testing.T, name string) *Engine {
	t.Helper()
	doc, err := os.ReadFile("testdata/agt/" + name)
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine()
	if err := e.LoadAGT(name, doc); err != nil {
		t.Fatalf("LoadAGT(%s): %v", name, err)
	}
	return e
}

// The toolkit's own example file loads and keeps its meaning: every listed
// SQL or Kubernetes condition denies, and (kars being default-deny)
// everything else is denied too, by no rule.
func TestAGTToolkitExampleFile(t *testing.T) {
	e := loadAGTFile(t, "wire-protocol-rules.yaml")
	if got := e.Profile().Rules(); got != 6 {
		t.Fatalf("compiled %d rules, want 6", got)
	}
	runDecide(t, e, []decideCase{
		{name: "drop denied", agent: "did:example:agent1", action: "tool:sql", args: map[string]any{"sql.verb": "DROP"}, verdict: Deny, rule: "deny-destructive-sql"},
		{name: "grant denied", agent: "did:example:agent1", action: "tool:sql", args: map[string]any{"sql.verb": "GRANT"}, verdict: Deny, rule: "deny-schema-changes"},
		{name: "case matters", agent: "did:example:agent1", action: "tool:sql", args: map[string]any{"sql.verb": "drop"}, verdict: Deny, rule: ""},
		{name: "k8s exec", agent: "did:example:agent1", action: "tool:kubectl", args: map[string]any{"k8s.subresource": "exec"}, verdict: Deny, rule: "deny-k8s-exec"},
		{name: "other agent", agent: "someone-else", action: "tool:sql", args: map[string]any{"sql.verb": "DROP"}, verdict: Deny, reason: "does not apply"},
	})
}

func TestAGTKarsProfile(t *testing.T) {
	e := loadAGTFile(t, "research-agent.yaml")
	runDecide(t, e, []decideCase{
		{name: "allowed mcp", action: "mcp:arxiv.search", verdict: Allow, rule: "research-tools"},
		{name: "allowed model glob", action: "inference:chat:gpt-4.1-mini", verdict: Allow, rule: "research-tools"},
		{name: "denied shell", action: "shell:ls", verdict: Deny, rule: "research-tools"},
		{name: "metadata service", action: "egress:169.254.169.254:80", verdict: Deny, rule: "no-metadata-service"},
		{name: "approval with min approvals", action: "tool:publish_blog", verdict: RequireApproval, rule: "publish-needs-approval", reason: "2 approval(s)"},
		{name: "condition denies", action: "tool:fetch_url", args: map[string]any{"region": "ru"}, verdict: Deny, rule: "eu-only-fetch"},
		{name: "condition absent", action: "tool:fetch_url", args: map[string]any{"url": "https://arxiv.org"}, verdict: Allow, rule: "research-tools"},
		{name: "outside allow list", action: "tool:delete_all", verdict: Deny, rule: ""},
	})
	for i := range 3 {
		if d := e.Decide(&Request{Agent: "x", Action: "tool:web_search"}); d.Verdict != Allow || d.Rule != "search-budget" {
			t.Fatalf("search %d: %+v", i, d)
		}
	}
	if d := e.Decide(&Request{Agent: "x", Action: "tool:web_search"}); d.Verdict != RateLimited {
		t.Fatalf("fourth search in a minute: %+v", d)
	}
}

func TestAGTErrorsCarryLinesAndFields(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		line int
		path string
		msg  string
	}{
		{"unknown top field", "version: \"1\"\nagnet: x\npolicies: []\n", 2, "agnet", "unknown field"},
		{"unknown policy field", "version: \"1\"\npolicies:\n  - name: a\n    type: capability\n    allow: [\"tool:x\"]\n", 5, "policies[0].allow", "unknown field"},
		{"duplicate field", "version: \"1\"\npolicies:\n  - name: a\n    name: b\n    type: capability\n    denied_actions: [\"tool:x\"]\n", 4, "policies[0].name", "twice"},
		{"bad type", "version: \"1\"\npolicies:\n  - name: a\n    type: capabilities\n", 4, "policies[0].type", "not one of"},
		{"bad window", "version: \"1\"\npolicies:\n  - name: r\n    type: rate_limit\n    actions: [\"tool:x\"]\n    max_calls: 3\n    window: 5x\n", 7, "policies[0].window", "window"},
		{"octal-looking count", "version: \"1\"\npolicies:\n  - name: r\n    type: rate_limit\n    actions: [\"tool:x\"]\n    max_calls: 010\n    window: 1m\n", 6, "policies[0].max_calls", "plain"},
		{"bad pattern maps to its line", "version: \"1\"\npolicies:\n  - name: a\n    type: capability\n    allowed_actions:\n      - \"tool:ok\"\n      - \"data.read\"\n", 7, "policies[0].actions[1]", "no namespace"},
		{"priority out of range", "version: \"1\"\npolicies:\n  - name: a\n    type: capability\n    priority: 20000\n    denied_actions: [\"tool:x\"]\n", 5, "policies[0].priority", "outside"},
		{"wrong version", "version: \"2\"\npolicies: []\n", 1, "version", "unsupported"},
		{"missing version", "policies:\n  - name: a\n    type: capability\n    denied_actions: [\"tool:x\"]\n", 1, "version", "required"},
		{"syntax error", "version: \"1\"\npolicies: [\n", 2, "", "YAML"},
		{"two documents", "version: \"1\"\npolicies: []\n---\nversion: \"1\"\n", 3, "", "more than one"},
		{"field for other type", "version: \"1\"\npolicies:\n  - name: a\n    type: capability\n    denied_actions: [\"tool:x\"]\n    max_calls: 3\n", 6, "policies[0].max_calls", "not meaningful"},
		{"scope", "version: \"1\"\npolicies:\n  - name: a\n    type: capability\n    scope: tenant\n    denied_actions: [\"tool:x\"]\n", 5, "policies[0].scope", "not supported"},
		{"nested condition", "version: \"1\"\npolicies:\n  - name: a\n    type: capability\n    denied_actions: [\"*\"]\n    conditions:\n      scope: {tenant: prod}\n", 7, "policies[0].conditions.scope", "nested"},
		{"custom tag", "version: \"1\"\npolicies:\n  - name: a\n    type: capability\n    denied_actions: [\"*\"]\n    conditions:\n      value: !custom prod\n", 7, "policies[0].conditions.value", "tag"},
		{"not a mapping", "- a\n- b\n", 1, "", "want a mapping"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAGT("p.yaml", []byte(tc.doc))
			var pe *PolicyError
			if !errors.As(err, &pe) {
				t.Fatalf("accepted or wrong error type: %v", err)
			}
			for _, fe := range pe.Errs {
				if fe.Line == tc.line && fe.Field == tc.path && strings.Contains(fe.Msg, tc.msg) {
					return
				}
			}
			t.Fatalf("want line %d field %q msg ~%q; got:\n%v", tc.line, tc.path, tc.msg, err)
		})
	}
}

func TestAGTInvalidReloadKeepsPrevious(t *testing.T) {
	e := loadAGTFile(t, "research-agent.yaml")
	before := e.Profile()
	bad := "version: \"1\"\npolicies:\n  - name: r\n    type: rate_limit\n    max_calls: 1\n    window: broken\n    actions: [\"*\"]\n"
	if err := e.LoadAGT("bad.yaml", []byte(bad)); err == nil {
		t.Fatal("broken profile accepted")
	} else if !strings.Contains(err.Error(), "bad.yaml") || !strings.Contains(err.Error(), "line 6") {
		t.Fatalf("error lacks source and line: %v", err)
	}
	if e.Profile() != before {
		t.Fatal("rejected profile replaced the one in force")
	}
	if d := e.Decide(&Request{Agent: "a", Action: "shell:rm"}); d.Verdict != Deny || d.Rule != "research-tools" {
		t.Fatalf("previous profile not in force: %+v", d)
	}
}

func TestAGTConditionLiteralsKeepTypes(t *testing.T) {
	doc := `version: "1"
policies:
  - name: gate
    type: capability
    denied_actions: ["*"]
    priority: 5
    conditions:
      flag: true
      count: 7
      label: "7"
      ratio: 1.5
  - name: rest
    type: capability
    allowed_actions: ["*"]
`
	e := NewEngine()
	if err := e.LoadAGT("typed.yaml", []byte(doc)); err != nil {
		t.Fatal(err)
	}
	match := map[string]any{"flag": true, "count": 7, "label": "7", "ratio": 1.5}
	if d := e.Decide(&Request{Agent: "a", Action: "tool:x", Args: match}); d.Rule != "gate" {
		t.Fatalf("all conditions hold but gate did not match: %+v", d)
	}
	for key, other := range map[string]any{"flag": "true", "label": 7, "ratio": 2.5} {
		args := map[string]any{}
		for k, v := range match {
			args[k] = v
		}
		args[key] = other
		if d := e.Decide(&Request{Agent: "a", Action: "tool:x", Args: args}); d.Rule != "rest" {
			t.Errorf("%s=%v (other type or value) still matched gate: %+v", key, other, d)
		}
	}
}
