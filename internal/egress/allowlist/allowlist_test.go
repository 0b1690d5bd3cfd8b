package allowlist

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseEntry(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Entry
		err  string
	}{
		{in: "api.github.com", want: Entry{Host: "api.github.com"}},
		{in: "API.GitHub.com.:443", want: Entry{Host: "api.github.com", Ports: []uint16{443}}},
		{in: "*.GitHubUserContent.com", want: Entry{Host: "*.githubusercontent.com"}},
		{in: "*.example.com:8080", want: Entry{Host: "*.example.com", Ports: []uint16{8080}}},
		{in: "example.com:*", want: Entry{Host: "example.com", Ports: []uint16{AnyPort}}},
		{in: "[2001:db8::1]:443", want: Entry{Host: "2001:db8::1", Ports: []uint16{443}}},
		{in: "198.51.100.7:80", want: Entry{Host: "198.51.100.7", Ports: []uint16{80}}},
		{in: "example.com:", err: "empty port"},
		{in: "example.com:0", err: "port"},
		{in: "example.com:65536", err: "port"},
		{in: "example.com:080", err: "leading zeros"},
		{in: "*.com", err: "two labels"},
		{in: "*.10.0.0.1", err: "address"},
		{in: "a.*.com", err: "ASCII letters"},
		{in: "", err: "empty"},
	} {
		got, err := ParseEntry(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseEntry(%q) = %v, %v; want error with %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseEntry(%q) = %#v, %v; want %#v", c.in, got, err, c.want)
		}
	}
}

func mustRules(t testing.TB, name string, entries ...string) []Rule {
	t.Helper()
	var out []Rule
	for _, s := range entries {
		e, err := ParseEntry(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, Rule{Entry: e, Name: name + " " + e.String()})
	}
	return out
}

func TestMatch(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := Compile(mustRules(t, "allowedHosts", "api.github.com", "*.githubusercontent.com", "example.com:80", "example.com:8443",
		"any.example.org:*", "*.deep.example.net:22", "198.51.100.7:443"))
	for _, c := range []struct {
		host string
		port uint16
		rule string // "" = no match
	}{
		{"api.github.com", 443, "allowedHosts api.github.com"},
		{"api.github.com", 80, ""},
		{"github.com", 443, ""},
		{"raw.githubusercontent.com", 443, "allowedHosts *.githubusercontent.com"},
		{"a.b.githubusercontent.com", 443, "allowedHosts *.githubusercontent.com"},
		{"githubusercontent.com", 443, ""},
		{"evilgithubusercontent.com", 443, ""},
		{"example.com", 80, "allowedHosts example.com:80"},
		{"example.com", 8443, "allowedHosts example.com:8443"},
		{"example.com", 443, ""},
		{"any.example.org", 1, "allowedHosts any.example.org:*"},
		{"x.any.example.org", 1, ""},
		{"a.deep.example.net", 22, "allowedHosts *.deep.example.net:22"},
		{"a.deep.example.net", 443, ""},
		{"198.51.100.7", 443, "allowedHosts 198.51.100.7:443"},
		{"198.51.100.8", 443, ""},
	} {
		r, ok := l.Match(c.host, c.port, now)
		got := ""
		if ok {
			got = r.Name
		}
		if got != c.rule {
			t.Errorf("Match(%s, %d) = %q, want %q", c.host, c.port, got, c.rule)
		}
	}
	if _, ok := l.MatchHost("a.deep.example.net", now); !ok {
		t.Error("MatchHost must find a rule on any port")
	}
	if _, ok := l.MatchHost("deep.example.net", now); ok {
		t.Error("MatchHost: a wildcard does not cover its own base name")
	}
	var empty *List
	if _, ok := empty.Match("api.github.com", 443, now); ok || empty.Len() != 0 {
		t.Error("a nil List matches nothing")
	}
}

func TestExpiry(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	rs := mustRules(t, "approval a", "api.example.com")
	rs[0].Expires = t0.Add(time.Minute)
	perm := mustRules(t, "allowlist", "api.example.com")
	l := Compile(append(rs, perm...))
	r, ok := l.Match("api.example.com", 443, t0)
	if !ok || r.Name != "approval a api.example.com" {
		t.Fatalf("before expiry: %v %v", r, ok)
	}
	r, ok = l.Match("api.example.com", 443, t0.Add(time.Minute))
	if !ok || r.Name != "allowlist api.example.com" {
		t.Fatalf("at expiry the approval stops matching and the permanent rule takes over: %v %v", r, ok)
	}
	only := Compile(rs)
	if _, ok := only.Match("api.example.com", 443, t0.Add(time.Minute)); ok {
		t.Error("an expired rule matched")
	}
	if _, ok := only.MatchHost("api.example.com", t0.Add(time.Minute)); ok {
		t.Error("an expired rule matched by host")
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	var entries []string
	for i := range 1000 {
		entries = append(entries, fmt.Sprintf("h%d.example%d.com", i, i%10), fmt.Sprintf("*.w%d.example.net", i))
	}
	l := Compile(mustRules(t, "x", entries...))
	now := time.Now()
	if n := testing.AllocsPerRun(1000, func() {
		l.Match("a.b.w999.example.net", 443, now)
		l.Match("nothing.here.example.org", 443, now)
	}); n != 0 {
		t.Errorf("Match allocates %v times", n)
	}
}

func TestDocumentRoundTrip(t *testing.T) {
	var es []Entry
	for _, s := range []string{"api.github.com", "*.githubusercontent.com:443", "example.com:80", "api.github.com:443", "[2001:db8::1]:8443", "x.example.org:*"} {
		e, err := ParseEntry(s)
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
	d, err := NewDocument("ns/bot", es)
	if err != nil {
		t.Fatal(err)
	}
	raw := d.Marshal()
	want := `apiVersion: kars.azure.com/v1alpha1
kind: EgressAllowlist
sandbox: ns/bot
hosts:
- "*.githubusercontent.com:443"
- "[2001:db8::1]:8443"
- api.github.com:443
- example.com:80
- "x.example.org:*"
`
	if string(raw) != want {
		t.Fatalf("Marshal:\n%s\nwant:\n%s", raw, want)
	}
	back, entries, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, d) || len(entries) != 5 {
		t.Fatalf("round trip: %#v %v", back, entries)
	}
}

func TestParseRefuses(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field":   "apiVersion: kars.azure.com/v1alpha1\nkind: EgressAllowlist\nhosts: []\nextra: 1\n",
		"repeated field":  "apiVersion: kars.azure.com/v1alpha1\nkind: EgressAllowlist\nhosts: [a.com]\nhosts: [b.com]\n",
		"wrong kind":      "apiVersion: kars.azure.com/v1alpha1\nkind: Allowlist\nhosts: []\n",
		"bad host":        "apiVersion: kars.azure.com/v1alpha1\nkind: EgressAllowlist\nhosts: [\"*.com\"]\n",
		"not a list":      "apiVersion: kars.azure.com/v1alpha1\nkind: EgressAllowlist\nhosts: a.com\n",
		"too big":         strings.Repeat("#", MaxDocumentBytes+1),
		"not yaml at all": "\x00\x01",
	} {
		if _, _, err := Parse([]byte(doc)); err == nil {
			t.Errorf("%s: Parse accepted %q", name, doc)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("apiVersion: kars.azure.com/v1alpha1\nkind: EgressAllowlist\nhosts:\n- api.github.com:443\n- \"*.x.com\"\n"))
	f.Add([]byte(`{"apiVersion":"kars.azure.com/v1alpha1","kind":"EgressAllowlist","hosts":["[::1]:1"]}`))
	f.Add([]byte("hosts: [a, b]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, entries, err := Parse(data)
		if err != nil {
			return
		}
		if len(entries) != len(d.Hosts) {
			t.Fatalf("%d entries for %d hosts", len(entries), len(d.Hosts))
		}
		// Whatever parses, rebuilds into a document that parses to the
		// same rules.
		nd, err := NewDocument(d.Sandbox, entries)
		if err != nil {
			t.Fatalf("NewDocument of parsed entries: %v", err)
		}
		_, again, err := Parse(nd.Marshal())
		if err != nil {
			t.Fatalf("re-parse of %q: %v", nd.Marshal(), err)
		}
		l1, l2 := Compile(rulesOf(entries)), Compile(rulesOf(again))
		now := time.Now()
		for _, e := range entries {
			h := strings.TrimPrefix(e.Host, "*.")
			if strings.HasPrefix(e.Host, "*.") {
				h = "x." + h
			}
			for _, p := range []uint16{1, 80, 443, 8443} {
				_, a := l1.Match(h, p, now)
				_, b := l2.Match(h, p, now)
				if a != b {
					t.Fatalf("%s:%d matches %v before and %v after a round trip", h, p, a, b)
				}
			}
		}
	})
}

func FuzzParseEntry(f *testing.F) {
	for _, s := range []string{"api.github.com", "*.x.com:443", "[::1]:80", "a:*", "a:", "::"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEntry(s)
		if err != nil {
			return
		}
		// The entry's rendering reads back as the same entry.
		if len(e.Ports) <= 1 {
			e2, err := ParseEntry(e.String())
			if err != nil || !reflect.DeepEqual(e, e2) {
				t.Fatalf("ParseEntry(%q) = %#v; its String %q reads as %#v, %v", s, e, e.String(), e2, err)
			}
		}
	})
}

func rulesOf(es []Entry) []Rule {
	out := make([]Rule, len(es))
	for i, e := range es {
		out[i] = Rule{Entry: e, Name: e.String()}
	}
	return out
}
