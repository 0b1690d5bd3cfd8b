package credbind

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"path"
	"strings"
	"testing"
	"testing/iotest"
)

const (
	telegramSecret = "123456789:AAF-real-telegram-token_xyz"
	githubSecret   = "ghp_realGitHubToken0123456789abcdef"
	searchSecret   = "sk/real+search=&x" // needs query escaping; not pchar
	gitSecret      = "gitRealPassword42"
)

func testSet(t testing.TB) *Set {
	t.Helper()
	ep := func(s string) Endpoint {
		e, err := ParseEndpoint(s)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	val := func(s string) func() ([]byte, error) { return func() ([]byte, error) { return []byte(s), nil } }
	set, err := Compile([]Binding{
		{Name: "telegram", Placeholder: Placeholder("ns", "bot", "telegram"), Placement: Placement{In: InPath},
			Endpoints: []Endpoint{ep("https://api.telegram.org/bot"), ep("https://api.telegram.org/file/bot")}, Value: val(telegramSecret)},
		{Name: "github", Placeholder: Placeholder("ns", "bot", "github"), Placement: Placement{In: InHeader, Name: "authorization", ValuePrefix: "Bearer "},
			Endpoints: []Endpoint{ep("https://api.github.com/repos/kars-io/")}, Value: val(githubSecret)},
		{Name: "search", Placeholder: Placeholder("ns", "bot", "search"), Placement: Placement{In: InQuery, Name: "key"},
			Endpoints: []Endpoint{ep("https://search.example.com/v1")}, Value: val("sk-real-search-key")},
		{Name: "git", Placeholder: Placeholder("ns", "bot", "git"), Placement: Placement{In: InBasicAuth},
			Endpoints: []Endpoint{ep("https://git.example.com:8443/")}, Value: val(gitSecret)},
		{Name: "gone", Placeholder: Placeholder("ns", "bot", "gone"), Placement: Placement{In: InHeader, Name: "X-Key"},
			Endpoints: []Endpoint{ep("https://gone.example.com/")}, Value: func() ([]byte, error) { return nil, errors.New("no such file") }},
		{Name: "bad", Placeholder: Placeholder("ns", "bot", "bad"), Placement: Placement{In: InHeader, Name: "X-Key"},
			Endpoints: []Endpoint{ep("https://bad.example.com/")}, Value: val("line\r\nInjected: yes")},
	})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

var (
	phTelegram = Placeholder("ns", "bot", "telegram")
	phGitHub   = Placeholder("ns", "bot", "github")
	phSearch   = Placeholder("ns", "bot", "search")
	phGit      = Placeholder("ns", "bot", "git")
)

func basic(u, p string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) }

func TestInspect(t *testing.T) {
	set := testSet(t)
	type req struct {
		scheme, host string
		port         uint16
		target       string
		header       map[string]string
		authority    string
	}
	tg := func(target string) req {
		return req{scheme: "https", host: "api.telegram.org", port: 443, target: target}
	}
	gh := func(target, auth string) req {
		return req{scheme: "https", host: "api.github.com", port: 443, target: target, header: map[string]string{"Authorization": auth}}
	}
	for _, c := range []struct {
		name       string
		r          req
		wantTarget string // substituted target; "" with wantFinding
		wantHeader map[string]string
		wantUsed   string
		finding    string // substring of the finding; "" for none
	}{
		{name: "no placeholder passes unchanged", r: tg("/bot123/getMe"), wantTarget: "/bot123/getMe"},
		{name: "telegram getUpdates", r: tg("/bot" + phTelegram + "/getUpdates?timeout=30&offset=4"),
			wantTarget: "/bot" + telegramSecret + "/getUpdates?timeout=30&offset=4", wantUsed: "telegram"},
		{name: "telegram file download", r: tg("/file/bot" + phTelegram + "/photos/file_1.jpg"),
			wantTarget: "/file/bot" + telegramSecret + "/photos/file_1.jpg", wantUsed: "telegram"},
		{name: "telegram placeholder escaped the canonical way", r: tg("/bot" + strings.Replace(phTelegram, "_", "%5F", 1) + "/getMe"),
			wantTarget: "/bot" + telegramSecret + "/getMe", wantUsed: "telegram"},
		{name: "telegram to another host", r: req{scheme: "https", host: "evil.example", port: 443, target: "/bot" + phTelegram + "/getMe"}, finding: "not to https://api.telegram.org/bot"},
		{name: "telegram to another port", r: req{scheme: "https", host: "api.telegram.org", port: 8443, target: "/bot" + phTelegram + "/getMe"}, finding: "not to"},
		{name: "telegram over plain http", r: req{scheme: "http", host: "api.telegram.org", port: 443, target: "/bot" + phTelegram + "/getMe"}, finding: "not to"},
		{name: "telegram at another path", r: tg("/x/bot" + phTelegram + "/getMe"), finding: "right after the prefix"},
		{name: "telegram glued to more text", r: tg("/bot" + phTelegram + "x/getMe"), finding: "right after the prefix"},
		{name: "telegram through a dot segment", r: tg("/bot/../bot" + phTelegram + "/getMe"), finding: "'..' segment"},
		{name: "telegram in the query", r: tg("/bot1/getMe?token=" + phTelegram), finding: "places it in path"},
		{name: "telegram in a header", r: req{scheme: "https", host: "api.telegram.org", port: 443, target: "/bot1/getMe", header: map[string]string{"X-Token": phTelegram}}, finding: "places it in path"},
		{name: "telegram twice in the path", r: tg("/bot" + phTelegram + "/" + phTelegram), finding: "more than one placeholder"},
		{name: "placeholder in the Host header", r: req{scheme: "https", host: "api.telegram.org", port: 443, target: "/bot" + phTelegram + "/getMe", authority: phTelegram + ".evil"}, finding: "host name"},

		{name: "github bearer under the prefix", r: gh("/repos/kars-io/kars/issues", "Bearer "+phGitHub),
			wantTarget: "/repos/kars-io/kars/issues", wantHeader: map[string]string{"Authorization": "Bearer " + githubSecret}, wantUsed: "github"},
		{name: "github outside the prefix", r: gh("/user", "Bearer "+phGitHub), finding: "not to https://api.github.com/repos/kars-io/"},
		{name: "github sibling of the prefix", r: gh("/repos/kars-io-evil/x", "Bearer "+phGitHub), finding: "not to"},
		{name: "github climbing out", r: gh("/repos/kars-io/../../user", "Bearer "+phGitHub), finding: "'..' segment"},
		{name: "github ;. bypass", r: gh("/repos/kars-io/..;/..;/user", "Bearer "+phGitHub), finding: "'..' segment"},
		{name: "github ; in the prefix segment", r: gh("/repos/kars-io;x/../user", "Bearer "+phGitHub), finding: "'..' segment"},
		{name: "github ;. single dot", r: gh("/repos/kars-io/.;/x", "Bearer "+phGitHub), finding: "'..' segment"},
		{name: "github encoded slash", r: gh("/repos/kars-io%2F..%2Fuser", "Bearer "+phGitHub), finding: "percent-encodes"},
		{name: "github encoded dots", r: gh("/repos/kars-io/%2e%2e/user", "Bearer "+phGitHub), finding: "percent-encodes"},
		{name: "github backslash", r: gh(`/repos/kars-io/..\user`, "Bearer "+phGitHub), finding: "'\\'"},
		{name: "github double slash", r: gh("/repos//kars-io/x", "Bearer "+phGitHub), finding: "empty segment"},
		{name: "github wrong scheme word", r: gh("/repos/kars-io/x", "token "+phGitHub), finding: `"Bearer "`},
		{name: "github in another header", r: req{scheme: "https", host: "api.github.com", port: 443, target: "/repos/kars-io/x", header: map[string]string{"X-Api-Key": phGitHub}}, finding: "places it in header Authorization"},
		{name: "github in a cookie", r: req{scheme: "https", host: "api.github.com", port: 443, target: "/repos/kars-io/x", header: map[string]string{"Cookie": "t=" + phGitHub}}, finding: "places it in header Authorization"},

		{name: "search key in the query", r: req{scheme: "https", host: "search.example.com", port: 443, target: "/v1/search?q=kars&key=" + phSearch},
			wantTarget: "/v1/search?q=kars&key=sk-real-search-key", wantUsed: "search"},
		{name: "search key under another name", r: req{scheme: "https", host: "search.example.com", port: 443, target: "/v1/search?q=" + phSearch}, finding: "query parameter q"},
		{name: "search key with more text", r: req{scheme: "https", host: "search.example.com", port: 443, target: "/v1/search?key=x" + phSearch}, finding: "placeholder alone"},
		{name: "search key escaped in the query", r: req{scheme: "https", host: "search.example.com", port: 443, target: "/v1/search?key=" + strings.ReplaceAll(phSearch, "_", "%5f")},
			wantTarget: "/v1/search?key=sk-real-search-key", wantUsed: "search"},
		{name: "search key with ; separator", r: req{scheme: "https", host: "search.example.com", port: 443, target: "/v1/search?a=1;key=" + phSearch}, finding: "two ways"},
		{name: "search outside the prefix", r: req{scheme: "https", host: "search.example.com", port: 443, target: "/v1x/search?key=" + phSearch}, finding: "not to"},

		{name: "git basic password", r: req{scheme: "https", host: "git.example.com", port: 8443, target: "/kars/repo.git/info/refs", header: map[string]string{"Authorization": basic("x-access-token", phGit)}},
			wantTarget: "/kars/repo.git/info/refs", wantHeader: map[string]string{"Authorization": basic("x-access-token", gitSecret)}, wantUsed: "git"},
		{name: "git basic user", r: req{scheme: "https", host: "git.example.com", port: 8443, target: "/", header: map[string]string{"Authorization": basic(phGit, "")}},
			wantTarget: "/", wantHeader: map[string]string{"Authorization": basic(gitSecret, "")}, wantUsed: "git"},
		{name: "git basic to port 443", r: req{scheme: "https", host: "git.example.com", port: 443, target: "/", header: map[string]string{"Authorization": basic("u", phGit)}}, finding: "not to"},
		{name: "git basic wrapped", r: req{scheme: "https", host: "git.example.com", port: 8443, target: "/", header: map[string]string{"Authorization": basic("u", "x"+phGit)}}, finding: "placeholder alone"},
		{name: "github placeholder hidden in basic auth", r: gh("/repos/kars-io/x", basic("u", phGitHub)), finding: "places it in header Authorization"},

		{name: "a deleted binding's placeholder", r: req{scheme: "https", host: "api.github.com", port: 443, target: "/repos/kars-io/x", header: map[string]string{"Authorization": "Bearer " + Placeholder("ns", "bot", "deleted")}}, finding: "no binding of this sandbox owns"},
		{name: "credential file missing", r: req{scheme: "https", host: "gone.example.com", port: 443, target: "/", header: map[string]string{"X-Key": Placeholder("ns", "bot", "gone")}}, finding: "not available"},
		{name: "credential with a newline", r: req{scheme: "https", host: "bad.example.com", port: 443, target: "/", header: map[string]string{"X-Key": Placeholder("ns", "bot", "bad")}}, finding: "placed safely"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range c.r.header {
				h.Set(k, v)
			}
			in := h.Clone()
			res := set.Inspect(Request{Scheme: c.r.scheme, Host: c.r.host, Port: c.r.port, Target: c.r.target, Authority: c.r.authority, Header: h})
			if c.finding != "" {
				if res.Finding == nil {
					t.Fatalf("no finding; target %q header %v", res.Target, res.Header)
				}
				if msg := res.Finding.Error(); !strings.Contains(msg, c.finding) {
					t.Errorf("finding %q, want it to mention %q", msg, c.finding)
				}
				if res.Target != c.r.target || len(res.Used) != 0 || !headerEqual(res.Header, in) {
					t.Errorf("a refused request was changed: %q %v", res.Target, res.Header)
				}
				for _, s := range []string{telegramSecret, githubSecret, "sk-real-search-key", gitSecret} {
					if strings.Contains(res.Finding.Error(), s) {
						t.Errorf("the finding carries a secret: %s", res.Finding.Error())
					}
				}
				return
			}
			if res.Finding != nil {
				t.Fatalf("unexpected finding: %v", res.Finding)
			}
			if res.Target != c.wantTarget {
				t.Errorf("target %q, want %q", res.Target, c.wantTarget)
			}
			for k, v := range c.wantHeader {
				if got := res.Header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if got := strings.Join(res.Used, ","); got != c.wantUsed {
				t.Errorf("used %q, want %q", got, c.wantUsed)
			}
			if !headerEqual(h, in) {
				t.Errorf("Inspect changed the caller's header: %v", h)
			}
		})
	}
}

func headerEqual(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if strings.Join(v, "\x00") != strings.Join(b[k], "\x00") {
			return false
		}
	}
	return true
}

func TestQueryValueEscaped(t *testing.T) {
	set, err := Compile([]Binding{{Name: "q", Placeholder: Placeholder("a", "b", "q"), Placement: Placement{In: InQuery, Name: "key"},
		Endpoints: []Endpoint{{Scheme: "https", Host: "h.example", Port: 443, PathPrefix: "/"}},
		Value:     func() ([]byte, error) { return []byte(searchSecret), nil }}})
	if err != nil {
		t.Fatal(err)
	}
	res := set.Inspect(Request{Scheme: "https", Host: "h.example", Port: 443, Target: "/s?key=" + Placeholder("a", "b", "q") + "&z=1", Header: http.Header{}})
	if res.Finding != nil {
		t.Fatal(res.Finding)
	}
	if want := "/s?key=sk%2Freal%2Bsearch%3D%26x&z=1"; res.Target != want {
		t.Errorf("target %q, want %q (the value escaped, nothing split)", res.Target, want)
	}
}

func TestParseEndpoint(t *testing.T) {
	for raw, want := range map[string]string{
		"https://api.telegram.org/bot":      "https://api.telegram.org/bot",
		"https://API.GitHub.com":            "https://api.github.com/",
		"http://svc.example:8080/v1/":       "http://svc.example:8080/v1/",
		"https://git.example.com:443/x":     "https://git.example.com/x",
		"https://[2001:db8::1]:8443/a":      "https://[2001:db8::1]:8443/a",
		"https://*.github.com/":             "",
		"ftp://x.example/":                  "",
		"https://user@x.example/":           "",
		"https://x.example/?q=1":            "",
		"https://x.example/#f":              "",
		"https://x.example/a/../b":          "",
		"https://x.example/a;b":             "",
		"https://x.example/a%2Fb":           "",
		"https://x.example:0/":              "",
		"https://x.example:099/":            "",
		"https://x.example//a":              "",
		"https://exa mple.com/":             "",
		"https://x.example/%7Euser":         "", // not canonical: ~ need not be escaped
		"https://x.example/a%20b":           "https://x.example/a%20b",
		"https://api.telegram.org/file/bot": "https://api.telegram.org/file/bot",
	} {
		e, err := ParseEndpoint(raw)
		if want == "" {
			if err == nil {
				t.Errorf("%s: accepted as %s", raw, e)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", raw, err)
			continue
		}
		if e.String() != want {
			t.Errorf("%s: %s, want %s", raw, e, want)
		}
	}
}

func TestCompileRefuses(t *testing.T) {
	ep := []Endpoint{{Scheme: "https", Host: "x.example", Port: 443, PathPrefix: "/"}}
	for name, b := range map[string]Binding{
		"no marker":        {Name: "a", Placeholder: "secret-looking", Endpoints: ep, Placement: Placement{In: InPath}},
		"odd bytes":        {Name: "a", Placeholder: Marker + "a b", Endpoints: ep, Placement: Placement{In: InPath}},
		"no endpoints":     {Name: "a", Placeholder: Marker + "a", Placement: Placement{In: InPath}},
		"Host header":      {Name: "a", Placeholder: Marker + "a", Endpoints: ep, Placement: Placement{In: InHeader, Name: "host"}},
		"bad header name":  {Name: "a", Placeholder: Marker + "a", Endpoints: ep, Placement: Placement{In: InHeader, Name: "X Key"}},
		"query needs name": {Name: "a", Placeholder: Marker + "a", Endpoints: ep, Placement: Placement{In: InQuery}},
		"unknown place":    {Name: "a", Placeholder: Marker + "a", Endpoints: ep, Placement: Placement{In: "Body"}},
		"two markers":      {Name: "a", Placeholder: Marker + Marker, Endpoints: ep, Placement: Placement{In: InPath}},
	} {
		if _, err := Compile([]Binding{b}); err == nil {
			t.Errorf("%s: compiled", name)
		}
	}
	a := Binding{Name: "a", Placeholder: Marker + "abc", Endpoints: ep, Placement: Placement{In: InPath}}
	b := Binding{Name: "b", Placeholder: "x" + Marker + "abcd", Endpoints: ep, Placement: Placement{In: InPath}}
	if _, err := Compile([]Binding{a, b}); err == nil {
		t.Error("a placeholder containing another compiled")
	}
}

func TestTerminates(t *testing.T) {
	set := testSet(t)
	for _, c := range []struct {
		host string
		port uint16
		want bool
	}{{"api.telegram.org", 443, true}, {"api.github.com", 443, true}, {"git.example.com", 8443, true},
		{"git.example.com", 443, false}, {"telegram.org", 443, false}, {"evil.example", 443, false}} {
		if got := set.Terminates(c.host, c.port); got != c.want {
			t.Errorf("Terminates(%s, %d) = %v", c.host, c.port, got)
		}
	}
	var none *Set
	if none.Terminates("api.telegram.org", 443) {
		t.Error("a nil set terminates")
	}
}

func TestCanonicalPath(t *testing.T) {
	for in, want := range map[string]string{
		"/":              "/",
		"/a/b/":          "/a/b/",
		"/a%5fb":         "/a_b",
		"/a%7e":          "/a~",
		"/a%3ab":         "/a%3Ab",
		"/a;v=1/b":       "/a;v=1/b",
		"/bot1:x/getMe":  "/bot1:x/getMe",
		"a":              "",
		"":               "",
		"/a/./b":         "",
		"/a/../b":        "",
		"/a/..":          "",
		"/a/.":           "",
		"/..;/a":         "",
		"/a/..;jsession": "",
		"/a/.;x/b":       "",
		"/a//b":          "",
		"//a":            "",
		"/a/%2e%2e/b":    "",
		"/a/%2E./b":      "",
		"/a%2fb":         "",
		"/a%5cb":         "",
		"/a%3b/b":        "",
		"/a%25":          "",
		"/a%":            "",
		"/a%zz":          "",
		"/a%00":          "",
		"/a%C3%a9":       "/a%C3%A9",
		"/a%7F":          "",
		`/a\b`:           "",
		"/a b":           "",
		"/a#b":           "",
		"/a\x7f":         "",
		"/\xc3\xa9":      "",
		"/...":           "/...",
		"/.a/..b":        "/.a/..b",
	} {
		got, err := CanonicalPath(in)
		if want == "" {
			if err == nil {
				t.Errorf("%q: accepted as %q", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
}

func TestScanReader(t *testing.T) {
	body := strings.Repeat("hello ", 1000) + "my token is " + phTelegram + " ok"
	for name, r := range map[string]io.Reader{
		"whole":    ScanReader(strings.NewReader(body)),
		"one byte": ScanReader(iotest.OneByteReader(strings.NewReader(body))),
		"halves":   ScanReader(iotest.HalfReader(strings.NewReader(body))),
	} {
		got, err := io.ReadAll(r)
		if !errors.Is(err, ErrPlaceholderInBody) {
			t.Errorf("%s: err %v", name, err)
		}
		if bytes.Contains(got, []byte(Marker)) {
			t.Errorf("%s: the marker got through", name)
		}
	}
	clean := strings.Repeat("kars_placeholder", 100) + "kars_placeholde" + "r"
	got, err := io.ReadAll(ScanReader(iotest.OneByteReader(strings.NewReader(clean))))
	if err != nil || string(got) != clean {
		t.Errorf("a body without the marker: %v (%d bytes)", err, len(got))
	}
}

func TestScrub(t *testing.T) {
	secret, ph := []byte(telegramSecret), []byte(phTelegram)
	body := "before " + telegramSecret + " middle " + telegramSecret + telegramSecret + " end " + telegramSecret
	want := strings.ReplaceAll(body, telegramSecret, phTelegram)
	for name, r := range map[string]io.Reader{
		"whole":    strings.NewReader(body),
		"one byte": iotest.OneByteReader(strings.NewReader(body)),
		"halves":   iotest.HalfReader(strings.NewReader(body)),
		"data err": iotest.DataErrReader(strings.NewReader(body)),
	} {
		got, err := io.ReadAll(Scrub(r, [][]byte{secret}, [][]byte{ph}))
		if err != nil || string(got) != want {
			t.Errorf("%s: %q %v", name, got, err)
		}
	}
	long := strings.Repeat("x", 100<<10) + telegramSecret[:10]
	got, _ := io.ReadAll(Scrub(strings.NewReader(long), [][]byte{secret}, [][]byte{ph}))
	if string(got) != long {
		t.Error("a partial secret at the end was changed or lost")
	}
	if s := ScrubString("a "+githubSecret+" b", [][]byte{[]byte(githubSecret)}, [][]byte{[]byte(phGitHub)}); s != "a "+phGitHub+" b" {
		t.Errorf("ScrubString: %q", s)
	}
}

// serverPath is how the most lenient server reads a path: every escape
// decoded, backslashes as slashes, ';' parameters stripped from each
// segment, empty segments collapsed, dot segments resolved.
func serverPath(p string) string {
	p = strings.ReplaceAll(looseUnescapeNoPlus(p), `\`, "/")
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if j := strings.IndexByte(s, ';'); j >= 0 {
			segs[i] = s[:j]
		}
	}
	return path.Clean("/" + strings.Join(segs, "/"))
}

func looseUnescapeNoPlus(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && unhex(s[i+1]) >= 0 && unhex(s[i+2]) >= 0 {
			b.WriteByte(byte(unhex(s[i+1])<<4 | unhex(s[i+2])))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
