package offload

import (
	"strings"
	"testing"
	"time"
)

func TestAdmit(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	base := Pairing{Name: "alice-laptop", Capabilities: []string{"offload", "handoff"}, Slots: 3,
		ExpiresAt: now.Add(90 * 24 * time.Hour), HasTemplate: true, TTL: 2 * time.Hour}
	req := &Request{V: 1, Op: OpOffload, ID: "r1", Task: &Task{Title: "t", SHA256: strings.Repeat("a", 64), Bytes: 10}}
	with := func(f func(*Pairing)) Pairing { p := base; f(&p); return p }
	live := func(n int, tokens int64) []Live {
		var out []Live
		for i := range n {
			out = append(out, Live{ID: string(rune('a'+i)) + "0000000", Request: "other", Tokens: tokens})
		}
		return out
	}
	cases := []struct {
		name     string
		p        Pairing
		live     []Live
		req      *Request
		code     string // refusal code, "" for admitted
		say      string // the refusal names this
		tokens   int64
		ttl      time.Duration
		existing string
	}{
		{name: "admitted, no budget", p: base, tokens: 0, ttl: 2 * time.Hour},
		{name: "revoked", p: with(func(p *Pairing) { p.Revoked = true; p.RevokedAt = now.Add(-time.Minute) }), code: CodeRevoked, say: "revoked by the cluster's operator at 2026-12-07T09:59:00Z"},
		{name: "revoked beats expired", p: with(func(p *Pairing) { p.Revoked = true; p.ExpiresAt = now }), code: CodeRevoked},
		{name: "expired at the instant", p: with(func(p *Pairing) { p.ExpiresAt = now }), code: CodeExpired, say: "expired at 2026-12-07T10:00:00Z"},
		{name: "handoff only", p: with(func(p *Pairing) { p.Capabilities = []string{"handoff"} }), code: CodeCapability, say: "grants handoff, not offload"},
		{name: "no template", p: with(func(p *Pairing) { p.HasTemplate = false }), code: CodeNoTemplate},
		{name: "slots exhausted", p: base, live: live(3, 0), code: CodeSlots, say: "holds 3 of 3 offload slots (a0000000, b0000000, c0000000)"},
		{name: "last slot", p: base, live: live(2, 0), ttl: 2 * time.Hour},
		{name: "retry of a created request", p: base, live: []Live{{ID: "0123abcd", Request: "r1", Tokens: 7}, {ID: "1", Request: "x"}, {ID: "2", Request: "y"}}, existing: "0123abcd", tokens: 7},
		{name: "daily budget: a share of the rest per free slot", p: with(func(p *Pairing) { p.Daily = 1000; p.Used = 300; p.Day = "2026-12-07" }), live: live(1, 200), tokens: 250, ttl: 2 * time.Hour},
		{name: "daily budget: the last free slot gets the rest", p: with(func(p *Pairing) { p.Daily = 1000; p.Used = 300; p.Day = "2026-12-07" }), live: live(2, 100), tokens: 500, ttl: 2 * time.Hour},
		{name: "daily budget: yesterday's use does not count", p: with(func(p *Pairing) { p.Daily = 1000; p.Used = 1000; p.Day = "2026-12-06" }), tokens: 333, ttl: 2 * time.Hour},
		{name: "budget spent", p: with(func(p *Pairing) { p.Daily = 1000; p.Used = 800; p.Day = "2026-12-07" }), live: live(1, 200), code: CodeBudget, say: "spent its daily budget of 1000 tokens (800 used today, 200 held by live offloads)"},
		{name: "per offload cap", p: with(func(p *Pairing) { p.Daily = 1000; p.PerOffload = 250 }), tokens: 250, ttl: 2 * time.Hour},
		{name: "per offload cap without daily", p: with(func(p *Pairing) { p.PerOffload = 250 }), tokens: 250, ttl: 2 * time.Hour},
		{name: "host asks for less", p: with(func(p *Pairing) { p.Daily = 1000 }), req: &Request{ID: "r2", Limits: &Limits{MaxTokens: 100, TTLSeconds: 60}}, tokens: 100, ttl: time.Minute},
		{name: "host asks for more than allowed", p: with(func(p *Pairing) { p.PerOffload = 50 }), req: &Request{ID: "r2", Limits: &Limits{MaxTokens: 100, TTLSeconds: 86400}}, tokens: 50, ttl: 2 * time.Hour},
		{name: "never outlives the pairing", p: with(func(p *Pairing) { p.ExpiresAt = now.Add(10*time.Minute + 500*time.Millisecond) }), tokens: 0, ttl: 10 * time.Minute},
		{name: "default ttl", p: with(func(p *Pairing) { p.TTL = 0 }), ttl: DefaultTTL},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := req
			if c.req != nil {
				r = c.req
			}
			d := Admit(c.p, c.live, r, now)
			if c.code != "" {
				if d.Refusal == nil || d.Refusal.Code != c.code || !strings.Contains(d.Refusal.Message, c.say) || !strings.Contains(d.Refusal.Message, "nothing was created") {
					t.Fatalf("Admit = %+v, want refusal %s saying %q and that nothing was created", d.Refusal, c.code, c.say)
				}
				return
			}
			if d.Refusal != nil {
				t.Fatalf("refused: %v", d.Refusal)
			}
			if d.Existing != c.existing || d.Tokens != c.tokens || (c.existing == "" && d.TTL != c.ttl) {
				t.Fatalf("Admit = %+v, want existing %q tokens %d ttl %s", d, c.existing, c.tokens, c.ttl)
			}
		})
	}
}

func TestMayHandoff(t *testing.T) {
	if e := MayHandoff(Pairing{Name: "p", Capabilities: []string{"offload"}}); e == nil || e.Code != CodeCapability || !strings.Contains(e.Message, "not handoff") {
		t.Fatalf("offload-only pairing: %v", e)
	}
	if e := MayHandoff(Pairing{Name: "p", Capabilities: []string{"offload", "handoff"}}); e != nil {
		t.Fatalf("handoff pairing refused: %v", e)
	}
}
