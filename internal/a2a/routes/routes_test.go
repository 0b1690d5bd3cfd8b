package routes

import (
	"strings"
	"testing"
	"time"
)

func route(sb string, exp time.Time) Route {
	return Route{Sandbox: sb, Router: "r:8445", ServerName: "r", RouterCertPEM: "pem", Callers: []Caller{{Thumbprint: "sha256:x"}},
		Skills: []string{"s"}, BodyCapBytes: 1, RateLimit: RateLimit{RPM: 1}, ExpiresAt: exp}
}

func TestRoundTripAndLookup(t *testing.T) {
	now := time.Now()
	tab := &Table{Routes: []Route{route("b/b", now.Add(time.Hour)), route("a/a", now.Add(time.Hour)), route("c/c", now.Add(-time.Second))}}
	b, err := Marshal(tab)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Index(string(b), `"a/a"`) > strings.Index(string(b), `"b/b"`) {
		t.Fatal("routes not sorted")
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := got.Lookup("b/b", now); !ok || !r.Allows("sha256:x") || r.Allows("sha256:y") {
		t.Fatalf("lookup b/b: %+v %v", r, ok)
	}
	if _, ok := got.Lookup("c/c", now); ok {
		t.Fatal("expired route found")
	}
	if _, ok := got.Lookup("d/d", now); ok {
		t.Fatal("absent route found")
	}
	var nilTable *Table
	if _, ok := nilTable.Lookup("a/a", now); ok {
		t.Fatal("nil table routed")
	}
}

func TestParseRefuses(t *testing.T) {
	for name, in := range map[string]string{
		"unknown member": `{"routes":[],"extra":1}`,
		"incomplete":     `{"routes":[{"sandbox":"a/a"}]}`,
		"twice":          `{"routes":[` + mustJSON(route("a/a", time.Now())) + `,` + mustJSON(route("a/a", time.Now())) + `]}`,
		"not json":       `{`,
	} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func mustJSON(r Route) string {
	b, _ := Marshal(&Table{Routes: []Route{r}})
	s := string(b)
	return s[strings.Index(s, "[")+1 : strings.LastIndex(s, "]")]
}
