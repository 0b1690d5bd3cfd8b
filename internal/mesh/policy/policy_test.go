package policy

import (
	"strings"
	"testing"
	"time"
)

func TestAdmit(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	later, earlier := now.Add(time.Hour), now.Add(-time.Hour)
	peer := Peer{Name: "worker", DID: "did:mesh:00112233445566778899aabbccddeeff", Pairing: "kars-planner/worker",
		Sandbox: "kars-worker/worker", ExpiresAt: later}
	self := []string{"kars-planner/planner", "did:mesh:ffeeddccbbaa99887766554433221100"}
	edge := func(from, to string, score int, exp *time.Time) Edge {
		return Edge{From: from, To: to, Score: score, ExpiresAt: exp}
	}
	for _, c := range []struct {
		name  string
		peer  Peer
		score int
		g     *Graph
		rule  string
	}{
		{"admitted", peer, 500, nil, ""},
		{"pairing expired", Peer{Name: "worker", ExpiresAt: earlier}, 900, nil, RulePairing},
		{"pairing expires exactly now", Peer{Name: "worker", ExpiresAt: now}, 900, nil, RulePairing},
		{"trust below threshold", peer, 499, nil, RuleTrust},
		{"graph not naming this router does not apply", peer, 500, &Graph{Edges: []Edge{edge("kars-x/x", "kars-worker/worker", 0, nil)}}, ""},
		{"graph edge by sandbox", peer, 500, &Graph{Edges: []Edge{edge("kars-planner/planner", "kars-worker/worker", 700, nil)}}, ""},
		{"graph edge by DID", peer, 500, &Graph{Edges: []Edge{edge(self[1], peer.DID, 600, nil)}}, ""},
		{"graph names this router but not the peer", peer, 500, &Graph{Edges: []Edge{edge("kars-planner/planner", "kars-other/other", 900, nil)}}, RuleGraph},
		{"graph edge below threshold", peer, 500, &Graph{Edges: []Edge{edge("kars-planner/planner", "kars-worker/worker", 499, nil)}}, RuleGraph},
		{"graph edge expired", peer, 500, &Graph{Edges: []Edge{edge("kars-planner/planner", "kars-worker/worker", 900, &earlier)}}, RuleGraph},
		{"best of several edges", peer, 500, &Graph{Edges: []Edge{
			edge("kars-planner/planner", "kars-worker/worker", 100, nil), edge(self[1], "kars-worker/worker", 800, &later)}}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := Admit(c.peer, c.score, 500, c.g, self, now)
			if r.Rule != c.rule {
				t.Fatalf("rule %q (%s), want %q", r.Rule, r.Reason, c.rule)
			}
			if r.Refused() != (c.rule != "") || (r.Refused() && r.Reason == "") {
				t.Fatalf("refusal %+v", r)
			}
		})
	}
}

func TestPolicyValidate(t *testing.T) {
	exp := time.Now().Add(time.Hour)
	ok := Peer{Name: "worker", DID: "did:mesh:00112233445566778899aabbccddeeff", ExpiresAt: exp}
	for _, c := range []struct {
		name string
		p    Policy
		err  string
	}{
		{"valid", Policy{Peers: []Peer{ok}}, ""},
		{"empty", Policy{}, ""},
		{"name with colon", Policy{Peers: []Peer{{Name: "a:b", DID: ok.DID, ExpiresAt: exp}}}, "cannot name a peer"},
		{"reserved name", Policy{Peers: []Peer{{Name: UnpairedPeer, DID: ok.DID, ExpiresAt: exp}}}, "cannot name a peer"},
		{"bad DID", Policy{Peers: []Peer{{Name: "w", DID: "did:web:x", ExpiresAt: exp}}}, "not a mesh DID"},
		{"duplicate name", Policy{Peers: []Peer{ok, {Name: "worker", DID: "did:mesh:ffeeddccbbaa99887766554433221100", ExpiresAt: exp}}}, "twice"},
		{"duplicate DID", Policy{Peers: []Peer{ok, {Name: "other", DID: ok.DID, ExpiresAt: exp}}}, "twice"},
		{"no expiry", Policy{Peers: []Peer{{Name: "w", DID: ok.DID}}}, "always expire"},
		{"edge score", Policy{Graph: &Graph{Edges: []Edge{{From: "a", To: "b", Score: 1001}}}}, "score"},
	} {
		err := c.p.Validate()
		if (err == nil) != (c.err == "") || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.err)
		}
	}
}
