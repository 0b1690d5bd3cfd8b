package operator

import (
	"slices"
	"sort"

	"k8s.io/apimachinery/pkg/types"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// This file is the part of State that answers "what is bound to this
// sandbox": its policies, MCP servers, memory, evaluations and trust
// edges. Each kind names its sandbox its own way (docs/kinds.md,
// docs/mesh.md), and each accessor follows that kind's reference.

// ToolPolicy returns the ToolPolicy sandbox sb enforces
// (spec.governance.toolPolicyRef), or nil: none named, or not (yet) seen.
func (s *State) ToolPolicy(sb *karsv1.KarsSandbox) *karsv1.ToolPolicy {
	ref := sb.Spec.Governance.ToolPolicyRef
	if ref == nil {
		return nil
	}
	return s.toolPolicies[types.NamespacedName{Namespace: sb.Namespace, Name: ref.Name}]
}

// McpServers returns the McpServers of sb's namespace that list sb in
// spec.sandboxes, by name.
func (s *State) McpServers(sb *karsv1.KarsSandbox) []*karsv1.McpServer {
	var out []*karsv1.McpServer
	for _, m := range s.mcpServers {
		if m.Namespace == sb.Namespace && slices.Contains(m.Spec.Sandboxes, sb.Name) {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Memories returns the KarsMemory bindings naming sb (spec.sandboxRef), by
// name: one is bound, a second is DuplicateBinding, and both are shown.
func (s *State) Memories(sb *karsv1.KarsSandbox) []*karsv1.KarsMemory {
	var out []*karsv1.KarsMemory
	for _, m := range s.memories {
		if m.Namespace == sb.Namespace && m.Spec.SandboxRef.Name == sb.Name {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Evals returns the KarsEvals of sb (spec.sandboxRef), by name.
func (s *State) Evals(sb *karsv1.KarsSandbox) []*karsv1.KarsEval {
	var out []*karsv1.KarsEval
	for _, e := range s.evals {
		if e.Namespace == sb.Namespace && e.Spec.SandboxRef.Name == sb.Name {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// TrustEdge is one edge of a TrustGraph that starts or ends at a sandbox,
// with the graph it is in.
type TrustEdge struct {
	Graph *karsv1.TrustGraph
	Edge  karsv1.TrustEdge
	// Outbound is true when the sandbox is the edge's From (it trusts To).
	Outbound bool
}

// TrustEdges returns the edges of every TrustGraph from or to sb, named as
// a graph names a sandbox, "namespace/name" (docs/mesh.md, "TrustGraph"),
// outbound first, then by graph and peer. Which of them verified is the
// graph's reconciler's business: the graph's counts and Ready condition
// say how many were dropped.
func (s *State) TrustEdges(sb *karsv1.KarsSandbox) []TrustEdge {
	id := sb.Namespace + "/" + sb.Name
	var out []TrustEdge
	for _, g := range s.trustGraphs {
		for _, e := range g.Spec.Edges {
			if e.From == id || e.To == id {
				out = append(out, TrustEdge{Graph: g, Edge: e, Outbound: e.From == id})
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Outbound != b.Outbound {
			return a.Outbound
		}
		if a.Graph.Name != b.Graph.Name {
			return a.Graph.Name < b.Graph.Name
		}
		return peerOf(a) < peerOf(b)
	})
	return out
}

func peerOf(e TrustEdge) string {
	if e.Outbound {
		return e.Edge.To
	}
	return e.Edge.From
}

// DefaultTrustThreshold is the threshold a sandbox without
// spec.governance.trustThreshold gets (the CRD's default; docs/mesh.md).
const DefaultTrustThreshold = 500

// TrustThreshold is the minimum trust score sb demands of a mesh peer.
func TrustThreshold(sb *karsv1.KarsSandbox) karsv1.TrustScore {
	if t := sb.Spec.Governance.TrustThreshold; t != nil {
		return *t
	}
	return DefaultTrustThreshold
}
