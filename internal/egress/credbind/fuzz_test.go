package credbind

import (
	"encoding/base64"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"testing"
)

// FuzzInspect feeds arbitrary requests — header, path and query forms,
// basic auth — to the test set. The oracle:
//   - a refused request comes back unchanged and its finding carries no
//     secret;
//   - a secret appears in the result only when the request goes to one of
//     its binding's endpoints, and only in the binding's place;
//   - a request without the marker anywhere comes back unchanged.
func FuzzInspect(f *testing.F) {
	seeds := []struct {
		hostIdx      uint8
		port         uint16
		https        bool
		target       string
		hname, hval  string
		user, passwd string
	}{
		{0, 443, true, "/bot" + phTelegram + "/getUpdates?timeout=30", "", "", "", ""},
		{0, 443, true, "/file/bot" + phTelegram + "/a.jpg", "", "", "", ""},
		{0, 443, true, "/bot/..;/bot" + phTelegram + "/getMe", "", "", "", ""},
		{1, 443, true, "/repos/kars-io/kars", "Authorization", "Bearer " + phGitHub, "", ""},
		{1, 443, true, "/repos/kars-io/..;/x", "Authorization", "Bearer " + phGitHub, "", ""},
		{1, 443, true, "/repos/kars-io%2f../user", "Authorization", "Bearer " + phGitHub, "", ""},
		{2, 443, true, "/v1/s?key=" + phSearch + "&q=1", "", "", "", ""},
		{2, 443, true, "/v1/s?q=" + phSearch, "", "", "", ""},
		{3, 8443, true, "/repo.git", "", "", "x-access-token", phGit},
		{3, 8443, true, "/repo.git", "", "", phGit, ""},
		{4, 443, true, "/bot" + phTelegram + "/getMe", "X-Token", phGitHub, "", ""},
		{1, 443, false, "/repos/kars-io/x?a=" + phTelegram, "Cookie", "a=" + phSearch, "", ""},
	}
	for _, s := range seeds {
		f.Add(s.hostIdx, s.port, s.https, s.target, s.hname, s.hval, s.user, s.passwd)
	}
	set := testSet(f)
	hosts := []string{"api.telegram.org", "api.github.com", "search.example.com", "git.example.com", "evil.example"}
	secrets := map[string]string{"telegram": telegramSecret, "github": githubSecret, "search": "sk-real-search-key", "git": gitSecret}
	f.Fuzz(func(t *testing.T, hostIdx uint8, port uint16, https bool, target, hname, hval, user, passwd string) {
		for _, s := range []string{target, hname, hval, user, passwd} {
			for _, sec := range secrets {
				if strings.Contains(s, sec) {
					t.Skip("the input holds a secret already")
				}
			}
		}
		if hname != "" && !validToken(hname) || strings.ContainsAny(hval, "\r\n") {
			t.Skip("not a header net/http would deliver")
		}
		scheme := "http"
		if https {
			scheme = "https"
		}
		h := http.Header{}
		if hname != "" {
			h.Set(hname, hval)
		}
		if user != "" || passwd != "" {
			h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+passwd)))
		}
		in := h.Clone()
		r := Request{Scheme: scheme, Host: hosts[int(hostIdx)%len(hosts)], Port: port, Target: target, Header: h}
		res := set.Inspect(r)
		if !headerEqual(h, in) {
			t.Fatal("Inspect changed the caller's header")
		}
		if res.Finding != nil {
			if res.Target != target || !headerEqual(res.Header, in) || len(res.Used) != 0 || len(res.Secrets) != 0 {
				t.Fatal("a refused request was changed")
			}
			for _, sec := range secrets {
				if strings.Contains(res.Finding.Error(), sec) {
					t.Fatal("a finding carries a secret")
				}
			}
			return
		}
		plain := !strings.Contains(target, Marker) && !strings.Contains(looseUnescape(target), Marker) && !headersHaveMarker(in)
		if b, _ := basicAuth(in); strings.Contains(b, Marker) {
			plain = false
		}
		if plain && (res.Target != target || !headerEqual(res.Header, in) || len(res.Used) != 0) {
			t.Fatalf("a request without placeholders was changed: %q", res.Target)
		}
		for _, b := range set.Bindings() {
			sec, ok := secrets[b.Name]
			if !ok {
				continue
			}
			where := secretPlaces(res, sec)
			if len(where) == 0 {
				continue
			}
			used := false
			for _, u := range res.Used {
				used = used || u == b.Name
			}
			if !used {
				t.Fatalf("secret of %s placed without being used", b.Name)
			}
			pathPart, _, _ := strings.Cut(res.Target, "?")
			var matched *Endpoint
			for i, e := range b.Endpoints {
				if e.Scheme == scheme && e.Host == r.Host && e.Port == port && strings.HasPrefix(pathPart, e.PathPrefix) {
					matched = &b.Endpoints[i]
				}
			}
			if matched == nil {
				t.Fatalf("secret of %s sent to %s://%s:%d%s", b.Name, scheme, r.Host, port, pathPart)
			}
			// The most lenient server reads the path under the prefix's
			// directory too.
			dir := matched.PathPrefix[:strings.LastIndexByte(matched.PathPrefix, '/')+1]
			if sp := serverPath(pathPart); !underPrefix(sp, dir) && sp+"/" != dir {
				t.Fatalf("secret of %s sent to a path a server reads as %q", b.Name, sp)
			}
			for _, w := range where {
				if w != placeName(b.Placement) {
					t.Fatalf("secret of %s placed in the %s, its binding says %s", b.Name, w, placeName(b.Placement))
				}
			}
		}
	})
}

// secretPlaces lists where sec appears in a result.
func secretPlaces(res Result, sec string) []string {
	var out []string
	pathPart, query, _ := strings.Cut(res.Target, "?")
	if strings.Contains(pathPart, sec) {
		out = append(out, "path")
	}
	if strings.Contains(query, url.QueryEscape(sec)) || strings.Contains(query, sec) {
		for _, pair := range strings.Split(query, "&") {
			k, v, _ := strings.Cut(pair, "=")
			if dv, err := url.QueryUnescape(v); (err == nil && strings.Contains(dv, sec)) || strings.Contains(v, sec) {
				dk, _ := url.QueryUnescape(k)
				out = append(out, "query parameter "+dk)
			}
		}
	}
	for k, vs := range res.Header {
		for _, v := range vs {
			if strings.Contains(v, sec) {
				out = append(out, "header "+textproto.CanonicalMIMEHeaderKey(k))
			}
			if k == "Authorization" {
				if b, _ := basicAuth(http.Header{"Authorization": {v}}); strings.Contains(b, sec) {
					out = append(out, "basic auth")
				}
			}
		}
	}
	return out
}

// FuzzCanonicalPath checks that a path CanonicalPath accepts is read the
// same way by the most lenient server: every prefix the canonical path is
// under, the server's reading is under too.
func FuzzCanonicalPath(f *testing.F) {
	for _, s := range []string{"/", "/repos/kars-io/x", "/repos/kars-io/..;/user", "/a/%2e%2e/b", "/a%2fb", `/a\..\b`,
		"/a/b;x=1/c", "/bot1:abc/getMe", "/a//b", "/%41%5f%7e", "/a/.;/b", "/..", "/a/...b/"} {
		f.Add(s)
	}
	prefixes := []string{"/repos/kars-io/", "/bot", "/v1", "/a/b"}
	f.Fuzz(func(t *testing.T, p string) {
		c, err := CanonicalPath(p)
		if err != nil {
			return
		}
		if c2, err := CanonicalPath(c); err != nil || c2 != c {
			t.Fatalf("not idempotent: %q → %q → %q %v", p, c, c2, err)
		}
		sp := serverPath(p)
		for _, pre := range prefixes {
			if underPrefix(c, pre) && !underPrefix(sp, pre) && !(sp+"/" == pre) {
				t.Fatalf("%q is under %q canonically (%q) but a server reads %q", p, pre, c, sp)
			}
		}
	})
}
