package governance

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseAGT feeds arbitrary YAML to the AGT reader. Whatever it accepts
// must compile, survive a JSON round trip unchanged (the controller ships
// policies as JSON) and decide without panicking.
func FuzzParseAGT(f *testing.F) {
	files, _ := filepath.Glob("testdata/agt/*.yaml")
	for _, name := range files {
		if data, err := os.ReadFile(name); err == nil {
			f.Add(data)
		}
	}
	for _, s := range []string{
		"version: \"1\"\npolicies:\n  - name: a\n    type: capability\n    allowed_actions: [\"*\"]\n",
		"version: \"1\"\npolicies:\n  - name: r\n    type: rate_limit\n    actions: [\"tool:*\"]\n    max_calls: 2\n    window: 1h\n",
		"version: \"1\"\npolicies:\n  - name: a\n    type: approval\n    actions: [\"mesh:send:*\"]\n    min_approvals: 3\n    conditions: {x: [1, 2.5, true, null, \"s\"]}\n",
		"version: 1\npolicies: &p [{name: a, type: capability, denied_actions: [\"*\"]}]\n",
		"version: \"1\"\npolicies:\n  - name: a\n    type: capability\n    allowed_actions: [\"tool:*\"]\n    conditions: {\"weird \\\"key\\\\\": \"v\\u0000\"}\n",
		"{{", "", "---\n---\n", "version: \"1\"\npolicies: [\n",
	} {
		f.Add([]byte(s))
	}
	actions := []string{"tool:x", "shell:rm", "egress:a.b:443", "mesh:send:p", "inference:chat:m"}
	f.Fuzz(func(t *testing.T, doc []byte) {
		pol, err := ParseAGT("fuzz.yaml", doc)
		if err != nil {
			if pol != nil {
				t.Fatal("policy returned with an error")
			}
			return
		}
		p1, err := Compile(pol)
		if err != nil {
			t.Fatalf("ParseAGT accepted a policy Compile rejects: %v", err)
		}
		js, err := json.Marshal(pol)
		if err != nil {
			t.Fatal(err)
		}
		var back Policy
		if err := json.Unmarshal(js, &back); err != nil {
			t.Fatal(err)
		}
		p2, err := Compile(&back)
		if err != nil || p2.Digest() != p1.Digest() {
			t.Fatalf("JSON round trip changed the policy: %v", err)
		}
		e := NewEngine()
		if err := e.LoadAGT("fuzz.yaml", doc); err != nil {
			t.Fatalf("LoadAGT rejects what ParseAGT accepted: %v", err)
		}
		for _, a := range actions {
			if d := e.Decide(&Request{Agent: "a", Action: a, Args: map[string]any{"x": 1.0}}); d.Reason == "" {
				t.Fatalf("decision without a reason for %s", a)
			}
		}
	})
}

// FuzzCompileJSON feeds arbitrary JSON policies (what the router reads from
// its config) to Compile.
func FuzzCompileJSON(f *testing.F) {
	seed, _ := json.Marshal(benchPolicy(12))
	f.Add(seed)
	f.Add([]byte(`{"rules":[{"name":"a","effect":"allow","actions":["tool:*"],"conditions":[{"expression":"args.a > 1"}],"rateLimit":{"requests":1,"windowSeconds":1}}],"approval":{"mode":"aboveThreshold","threshold":"10.5"},"commerce":{"maxDaily":"100"}}`))
	f.Add([]byte(`{"rules":[{"name":"a","effect":"deny","actions":["*"],"conditions":[{"expression":"[1,2,3].map(x, x * 2).size() > 0"}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var pol Policy
		if json.Unmarshal(data, &pol) != nil {
			return
		}
		p, err := Compile(&pol)
		if err != nil {
			return
		}
		e := NewEngine()
		e.cur.Store(p)
		d := e.Decide(&Request{Agent: "a", Action: "tool:x", Args: map[string]any{"amount": 5.0, "a": 3.0}})
		if d.Reason == "" {
			t.Fatal("decision without a reason")
		}
	})
}

// FuzzCheckAction checks the action grammar: it never panics, accepts only
// bounded printable actions with a known namespace, and an accepted action
// used as an exact pattern matches itself and nothing else.
func FuzzCheckAction(f *testing.F) {
	for _, r := range benchRequests() {
		f.Add(r.Action)
	}
	for _, s := range []string{"", "tool:", ":", "tool", "egress:[::1]:443", "egress:h:65535", "egress:h:65536",
		"mesh:send:", "spawn:create:x:y", "inference:a:b:c", "shell:ls -la", "tool:\x00", "mcp:.x", strings.Repeat("a", 300)} {
		f.Add(s)
	}
	e := NewEngine()
	if err := e.Load(&Policy{Rules: []Rule{{Name: "all", Effect: EffectAllow, Actions: []string{"*"}}}}); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, action string) {
		ns, reason := CheckAction(action)
		d := e.Decide(&Request{Agent: "a", Action: action})
		if reason != "" {
			if ns != nsInvalid || d.Verdict != Deny || d.Reason != reason {
				t.Fatalf("malformed %q: ns %v, decision %+v", action, ns, d)
			}
			return
		}
		if len(action) > MaxActionLen || strings.ContainsAny(action, "*?") || !strings.HasPrefix(action, ns.String()+":") {
			t.Fatalf("accepted %q (namespace %s)", action, ns)
		}
		if d.Verdict != Allow {
			t.Fatalf("well-formed %q not allowed by \"*\": %+v", action, d)
		}
		g, err := compileGlob(action)
		if err != nil || !g.match(action) || g.match(action+"x") {
			t.Fatalf("%q as an exact pattern: %v", action, err)
		}
	})
}

// globRef is the obvious recursive matcher, for differential testing.
func globRef(p, s string) bool {
	if p == "" {
		return s == ""
	}
	switch p[0] {
	case '*':
		for i := 0; i <= len(s); i++ {
			if globRef(p[1:], s[i:]) {
				return true
			}
		}
		return false
	case '?':
		return s != "" && globRef(p[1:], s[1:])
	}
	return s != "" && s[0] == p[0] && globRef(p[1:], s[1:])
}

func FuzzGlobMatch(f *testing.F) {
	for _, c := range [][2]string{{"tool:*", "tool:x"}, {"*.github.com:443", "api.github.com:443"}, {"a*b*c", "aXbYc"},
		{"a?c", "abc"}, {"**", ""}, {"*a", "aaa"}, {"a*a*a", "aa"}} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, p, s string) {
		if len(p) > 24 || len(s) > 32 || strings.Count(p, "*") > 4 {
			return // keep the reference matcher's exponential worst case small
		}
		if got, want := globMatch(p, s), globRef(p, s); got != want {
			t.Fatalf("globMatch(%q, %q) = %v, reference says %v", p, s, got, want)
		}
		if g, err := compileGlob(p); err == nil {
			if got, want := g.match(s), globRef(p, s); got != want {
				t.Fatalf("compiled %q on %q = %v, reference says %v", p, s, got, want)
			}
		}
	})
}
