package policy

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/egress/allowlist"
	"github.com/kars-io/kars/internal/egress/blocklist"
	"github.com/kars-io/kars/internal/governance"
)

func rules(t testing.TB, name string, expires time.Time, entries ...string) []allowlist.Rule {
	t.Helper()
	var out []allowlist.Rule
	for _, s := range entries {
		e, err := allowlist.ParseEntry(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, allowlist.Rule{Entry: e, Name: name + " " + e.String(), Expires: expires})
	}
	return out
}

func blocked(t testing.TB, domains ...string) *blocklist.Set {
	b := blocklist.NewBuilder()
	if _, err := blocklist.Parse(strings.NewReader(strings.Join(domains, "\n")), b); err != nil {
		t.Fatal(err)
	}
	return b.Build()
}

func TestDecideOrder(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	exp := now.Add(time.Hour)
	p := &Policy{
		Blocklist:     blocked(t, "evil.example.com", "blocked-but-approved.example.com"),
		BlocklistRule: "blocklist sha256:abc",
		Approvals:     allowlist.Compile(rules(t, "approval ea-1", exp, "approved.example.com", "blocked-but-approved.example.com", "*.both.example.com:8443")),
		Allowlist:     allowlist.Compile(rules(t, "allowedHosts", time.Time{}, "api.github.com", "*.both.example.com:8443", "*.example.com:80")),
	}
	for _, mode := range []Mode{Strict, Learn} {
		p.Mode = mode
		for _, c := range []struct {
			host  string
			port  uint16
			allow bool
			step  Step
			rule  string
		}{
			{"evil.example.com", 443, false, StepBlocklist, "blocklist sha256:abc"},
			{"x.evil.example.com", 80, false, StepBlocklist, "blocklist sha256:abc"},
			{"blocked-but-approved.example.com", 443, false, StepBlocklist, "blocklist sha256:abc"},
			{"approved.example.com", 443, true, StepApproval, "approval ea-1 approved.example.com"},
			{"a.both.example.com", 8443, true, StepApproval, "approval ea-1 *.both.example.com:8443"},
			{"api.github.com", 443, true, StepAllowlist, "allowedHosts api.github.com"},
			{"www.example.com", 80, true, StepAllowlist, "allowedHosts *.example.com:80"},
			{"169.254.169.254", 80, false, StepAddress, "refused-range"},
			{"10.0.0.1", 443, false, StepAddress, "refused-range"},
			{"::1", 443, false, StepAddress, "refused-range"},
		} {
			d := p.Decide(c.host, c.port, now)
			if d.Allow != c.allow || d.Step != c.step || d.Rule != c.rule {
				t.Errorf("%s: Decide(%s, %d) = %+v; want allow=%v step=%s rule=%q", mode, c.host, c.port, d, c.allow, c.step, c.rule)
			}
		}
		// Unlisted destinations (and listed hosts on other ports) are
		// what the mode decides.
		for _, hp := range []struct {
			host string
			port uint16
		}{{"unlisted.example.org", 443}, {"api.github.com", 22}, {"www.example.com", 443}, {"198.51.100.7", 443}} {
			d := p.Decide(hp.host, hp.port, now)
			want := StepDefault
			if mode == Learn {
				want = StepLearn
			}
			if d.Step != want || d.Allow != (mode == Learn) {
				t.Errorf("%s: Decide(%s, %d) = %+v; want %s", mode, hp.host, hp.port, d, want)
			}
		}
	}
	if d := p.Decide("approved.example.com", 443, exp); d.Step != StepLearn {
		t.Errorf("after the approval expired: %+v", d)
	}
	if d := p.Decide("approved.example.com", 443, now); !d.Expires.Equal(exp) {
		t.Errorf("an approval's decision carries its expiry: %+v", d)
	}
	if d := p.Decide("api.github.com", 0, now); d.Allow || d.Step != StepInvalid {
		t.Errorf("port 0: %+v", d)
	}
	if d := p.Decide("", 443, now); d.Allow {
		t.Errorf("empty host: %+v", d)
	}
}

func TestDecideHost(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	p := &Policy{
		Blocklist: blocked(t, "evil.example.com"),
		Allowlist: allowlist.Compile(rules(t, "a", time.Time{}, "ssh.example.com:22", "*.cdn.example.net")),
	}
	for host, want := range map[string]bool{
		"ssh.example.com": true, "img.cdn.example.net": true, "cdn.example.net": false,
		"evil.example.com": false, "other.example.com": false,
	} {
		if d := p.DecideHost(host, now); d.Allow != want {
			t.Errorf("DecideHost(%s) = %+v, want allow=%v", host, d, want)
		}
	}
}

// engine returns a governance engine with the given rules.
func engine(t *testing.T, rs ...governance.Rule) *governance.Engine {
	e := governance.NewEngine()
	if err := e.Load(&governance.Policy{Name: "t", Rules: rs}); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestGovern(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	p := &Policy{Mode: Learn, Allowlist: allowlist.Compile(rules(t, "a", time.Time{}, "api.github.com", "[2001:db8::1]:443"))}
	gov := NoRuleAllows{Next: engine(t,
		governance.Rule{Name: "no-pastebin", Effect: governance.EffectDeny, Actions: []string{"egress:*.pastebin.com:*"}},
		governance.Rule{Name: "ask-for-uploads", Effect: governance.EffectRequireApproval, Actions: []string{"egress:uploads.example.com:443"}},
		governance.Rule{Name: "no-v6-literal", Effect: governance.EffectDeny, Actions: []string{"egress:[2001:db8::1]:443"}},
		governance.Rule{Name: "tools", Effect: governance.EffectAllow, Actions: []string{"tool:*"}},
	)}
	for _, c := range []struct {
		host  string
		port  uint16
		allow bool
		rule  string
	}{
		{"api.github.com", 443, true, "a api.github.com"},
		{"x.pastebin.com", 443, false, "no-pastebin"},
		{"uploads.example.com", 443, false, "ask-for-uploads"},
		{"2001:db8::1", 443, false, "no-v6-literal"},
		{"unlisted.example.org", 443, true, "learn"},
	} {
		d := Govern(p.Decide(c.host, c.port, now), gov, "ns/bot", c.host, c.port)
		if d.Allow != c.allow || d.Rule != c.rule {
			t.Errorf("%s:%d = %+v; want allow=%v rule %q", c.host, c.port, d, c.allow, c.rule)
		}
	}
	// Governance cannot widen: an allow rule on a denied destination
	// changes nothing.
	strict := &Policy{}
	widen := NoRuleAllows{Next: engine(t, governance.Rule{Name: "all", Effect: governance.EffectAllow, Actions: []string{"egress:*"}})}
	if d := Govern(strict.Decide("unlisted.example.org", 443, now), widen, "ns/bot", "unlisted.example.org", 443); d.Allow {
		t.Errorf("a governance allow widened egress: %+v", d)
	}
	if d := (NoRuleAllows{}).Decide(&governance.Request{Action: "egress:a.com:443"}); !d.Allowed() {
		t.Errorf("no engine: %+v", d)
	}
}

func TestAction(t *testing.T) {
	for _, c := range []struct {
		host string
		port uint16
		want string
	}{
		{"api.github.com", 443, "egress:api.github.com:443"},
		{"198.51.100.7", 80, "egress:198.51.100.7:80"},
		{"2001:db8::1", 443, "egress:[2001:db8::1]:443"},
	} {
		got := Action(c.host, c.port)
		if got != c.want {
			t.Errorf("Action(%s, %d) = %s", c.host, c.port, got)
		}
		if _, bad := governance.CheckAction(got); bad != "" {
			t.Errorf("%s: %s", got, bad)
		}
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	now := time.Now()
	p := &Policy{Blocklist: blocked(t, "evil.example.com"), Allowlist: allowlist.Compile(rules(t, "a", time.Time{}, "*.github.com"))}
	if n := testing.AllocsPerRun(1000, func() {
		p.Decide("api.github.com", 443, now)
		p.Decide("x.evil.example.com", 443, now)
		p.Decide("unlisted.example.org", 443, now)
		p.Decide("198.51.100.7", 443, now)
	}); n != 0 {
		t.Errorf("Decide allocates %v times", n)
	}
}

// BenchmarkDecide measures a decision against 1,000,000 blocked domains
// and 1,000 allow rules (half exact, half wildcard), with the same
// decisions against empty lists as the same-run baseline. Each destination
// mix cycles through an allowed, a blocked and an unlisted host.
func BenchmarkDecide(b *testing.B) {
	var list bytes.Buffer
	for i := range 1_000_000 {
		fmt.Fprintf(&list, "d%07d.tracker%d.example\n", i, i%97)
	}
	bl := blocklist.NewBuilder()
	if _, err := blocklist.Parse(&list, bl); err != nil {
		b.Fatal(err)
	}
	var entries []string
	for i := range 500 {
		entries = append(entries, fmt.Sprintf("api%d.service%d.example.com", i, i%13), fmt.Sprintf("*.cdn%d.example.net:443", i))
	}
	full := &Policy{Blocklist: bl.Build(), BlocklistRule: "blocklist", Allowlist: allowlist.Compile(rules(b, "allowlist", time.Time{}, entries...))}
	dests := []string{"api250.service3.example.com", "x.d0500000.tracker40.example", "unlisted.some.example.org", "img.static.cdn499.example.net"}
	now := time.Now()
	for _, c := range []struct {
		name string
		p    *Policy
	}{{"baseline-empty-lists", &Policy{}}, {"1M-blocked-1k-allow", full}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			lat := make([]time.Duration, 0, 1<<16)
			for i := 0; b.Loop(); i++ {
				h := dests[i&3]
				if i&15 == 0 && len(lat) < cap(lat) {
					t0 := time.Now()
					c.p.Decide(h, 443, now)
					lat = append(lat, time.Since(t0))
					continue
				}
				c.p.Decide(h, 443, now)
			}
			if len(lat) > 0 {
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
				b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
			}
		})
	}
}
