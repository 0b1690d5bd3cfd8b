package governance

import "testing"

// TestA2AActionGrammar: inbound calls are a2a:receive:<skill>, outbound
// calls a2a:call:<agent>; a single name stays valid; nothing else with a
// colon is.
func TestA2AActionGrammar(t *testing.T) {
	for action, ok := range map[string]bool{
		"a2a:receive:search.web":  true,
		"a2a:call:partner-agent":  true,
		"a2a:message_send":        true,
		"a2a:receive:":            false,
		"a2a:call:a:b":            false,
		"a2a:send:x":              false,
		"a2a:receive:summarize.x": true,
	} {
		ns, reason := CheckAction(action)
		if (reason == "") != ok || (ok && ns != NSA2A) {
			t.Errorf("CheckAction(%q) = %v, %q", action, ns, reason)
		}
	}
	e := NewEngine()
	if err := e.Load(&Policy{Rules: []Rule{
		{Name: "skills", Effect: EffectAllow, Actions: []string{"a2a:receive:*"}},
		{Name: "no-calls", Effect: EffectDeny, Actions: []string{"a2a:call:*"}},
	}}); err != nil {
		t.Fatal(err)
	}
	if d := e.Decide(&Request{Agent: "a", Action: "a2a:receive:search.web"}); d.Verdict != Allow || d.Rule != "skills" {
		t.Fatalf("%+v", d)
	}
	if d := e.Decide(&Request{Agent: "a", Action: "a2a:call:partner"}); d.Verdict != Deny || d.Rule != "no-calls" {
		t.Fatalf("%+v", d)
	}
}
