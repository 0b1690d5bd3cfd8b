// Package policy is the mesh policy a router enforces: which peers its
// sandbox is paired with and the part of the verified trust graph that
// concerns it, and Admit, the gate every KNOCK and message passes. The
// controller computes a Policy and pushes it to the router's admin API;
// the router's mesh bridge enforces it. It is pure.
package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/mesh/identity"
)

// Policy is who the router may talk to: the peers its sandbox is paired
// with (one per active KarsPairing of the sandbox) and the verified trust
// graph. The controller computes it and pushes it to the admin API; the
// bridge persists it, so a restarted router enforces the last policy it
// was given, and an empty policy (none pushed yet) pairs with no one.
type Policy struct {
	Peers []Peer `json:"peers"`
	// Graph is the verified trust graph projected for this router; nil
	// when no TrustGraph names it.
	Graph *Graph `json:"graph,omitempty"`
}

// Peer is one paired peer.
type Peer struct {
	// Name is how the agent addresses the peer ("@worker") and the
	// <peer> of mesh:send:<peer> and mesh:receive:<peer>: the name of
	// the KarsPairing, unique among the sandbox's pairings.
	Name string `json:"name"`
	// DID is the peer's mesh identity.
	DID string `json:"did"`
	// Pairing is the KarsPairing ("namespace/name") that allows it.
	Pairing string `json:"pairing"`
	// Sandbox is the peer's KarsSandbox ("namespace/name") when it is a
	// kars sandbox, for trust-graph edges that name sandboxes.
	Sandbox string `json:"sandbox,omitempty"`
	// Registry is the peer's registry when it is not this router's
	// (a federated cluster); empty means the router's own.
	Registry string `json:"registry,omitempty"`
	// Capabilities granted by the pairing (offload, handoff); they are
	// what a KNOCK to the peer asks for.
	Capabilities []string `json:"capabilities,omitempty"`
	// ExpiresAt ends the pairing.
	ExpiresAt time.Time `json:"expiresAt"`
}

// Graph is the part of the verified trust graph that concerns this
// router: edges whose From is this sandbox (by agent id or DID).
type Graph struct {
	Edges []Edge `json:"edges"`
}

// Edge is one verified trust edge: From trusts To with Score (0..1000).
type Edge struct {
	From      string     `json:"from"`
	To        string     `json:"to"`
	Score     int        `json:"score"`
	ExpiresAt *time.Time `json:"expiresAt,omitempty"`
}

// MaxPeers bounds a policy.
const MaxPeers = 1000

// Validate checks a pushed policy: names usable in governance actions and
// unique, DIDs well formed and unique, a bounded size.
func (p *Policy) Validate() error {
	if len(p.Peers) > MaxPeers {
		return fmt.Errorf("policy lists %d peers, at most %d", len(p.Peers), MaxPeers)
	}
	names, dids := map[string]bool{}, map[string]bool{}
	for i, pe := range p.Peers {
		if _, bad := governance.CheckAction("mesh:send:" + pe.Name); bad != "" || pe.Name == UnpairedPeer {
			return fmt.Errorf("peers[%d]: name %q cannot name a peer in mesh:send:<peer> (%s)", i, pe.Name, bad)
		}
		if !identity.ValidDID(pe.DID) {
			return fmt.Errorf("peers[%d] (%s): %q is not a mesh DID", i, pe.Name, pe.DID)
		}
		if names[pe.Name] || dids[pe.DID] {
			return fmt.Errorf("peers[%d]: name %q or DID %s appears twice", i, pe.Name, pe.DID)
		}
		names[pe.Name], dids[pe.DID] = true, true
		if pe.ExpiresAt.IsZero() {
			return fmt.Errorf("peers[%d] (%s): expiresAt is required: pairings always expire", i, pe.Name)
		}
	}
	if g := p.Graph; g != nil {
		for i, e := range g.Edges {
			if e.From == "" || e.To == "" || e.Score < 0 || e.Score > 1000 {
				return fmt.Errorf("graph.edges[%d]: want from, to and a score in 0..1000", i)
			}
		}
	}
	return nil
}

// Digest identifies a policy, so the controller can tell whether a router
// enforces the one it computed.
func (p *Policy) Digest() string {
	b, _ := json.Marshal(p)
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ByName and ByDID find a peer.
func (p *Policy) ByName(name string) (Peer, bool) {
	for _, pe := range p.Peers {
		if pe.Name == name {
			return pe, true
		}
	}
	return Peer{}, false
}

func (p *Policy) ByDID(did string) (Peer, bool) {
	for _, pe := range p.Peers {
		if pe.DID == did {
			return pe, true
		}
	}
	return Peer{}, false
}

// UnpairedPeer is the <peer> of audit entries about frames from a DID no
// pairing names. It is not a valid KarsPairing name, so no pairing can
// take it.
const UnpairedPeer = "_unpaired"

// Refusal says why a peer may not talk to this router now; the zero value
// admits.
type Refusal struct {
	// Rule names the gate that refused (kars-mesh-pairing,
	// kars-mesh-trust, kars-mesh-graph).
	Rule   string
	Reason string
}

// Refused reports whether r refuses.
func (r Refusal) Refused() bool { return r.Rule != "" }

// The rules of the bridge's own refusals, as they appear in audit entries.
const (
	RulePairing  = "kars-mesh-pairing"
	RuleTrust    = "kars-mesh-trust"
	RuleGraph    = "kars-mesh-graph"
	RuleKnock    = "kars-mesh-knock"
	RuleSession  = "kars-mesh-session"
	RuleSecurity = "kars-mesh-security"
)

// Admit is the gate in front of every KNOCK, sent or received, and every
// message: the pairing must be live, the peer's trust score must reach
// the threshold (trust gating is always on), and when the trust graph
// names this router (self holds its agent id and DID) an unexpired edge
// from it to the peer must carry at least the threshold too. It is pure.
func Admit(p Peer, score, threshold int, g *Graph, self []string, now time.Time) Refusal {
	if !now.Before(p.ExpiresAt) {
		return Refusal{RulePairing, fmt.Sprintf("the pairing %s with %s expired at %s", p.Pairing, p.Name, p.ExpiresAt.UTC().Format(time.RFC3339))}
	}
	if score < threshold {
		return Refusal{RuleTrust, fmt.Sprintf("%s's trust score %d is below the threshold %d", p.Name, score, threshold)}
	}
	if g == nil {
		return Refusal{}
	}
	peerIDs := []string{p.DID, p.Sandbox}
	enforced, best := false, -1
	for _, e := range g.Edges {
		if !slices.Contains(self, e.From) {
			continue
		}
		enforced = true
		if e.ExpiresAt != nil && !now.Before(*e.ExpiresAt) {
			continue
		}
		if slices.ContainsFunc(peerIDs, func(id string) bool { return id != "" && id == e.To }) {
			best = max(best, e.Score)
		}
	}
	switch {
	case !enforced:
		return Refusal{}
	case best < 0:
		return Refusal{RuleGraph, fmt.Sprintf("the trust graph has no live edge from this agent to %s", p.Name)}
	case best < threshold:
		return Refusal{RuleGraph, fmt.Sprintf("the trust graph's edge to %s scores %d, below the threshold %d", p.Name, best, threshold)}
	}
	return Refusal{}
}
