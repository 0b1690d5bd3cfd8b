// Package operator is `kars operator`: a terminal UI over the kars objects
// of a cluster, fed by watches (never polling) and acting through the
// user's own credentials, so the user's RBAC decides what it may change.
//
// The package is a pure core (State, the bubbletea Model and its View)
// and a thin shell (Watch turns informer events into messages; KubeActions
// changes objects on the API server). From internal/controller it uses only
// the SRE phases and ExpiresAt, so the TUI and the reconciler agree on when
// a proposal expires.
package operator

import (
	"sort"
	"strings"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
)

// maxEvents is how many events State keeps per namespace: the panel shows
// the newest few, and a busy namespace must not grow the TUI's memory.
const maxEvents = 50

// State is what the operator knows of the cluster: the latest version of
// each watched object. The zero value is not usable; use NewState.
type State struct {
	sandboxes map[types.NamespacedName]*karsv1.KarsSandbox
	inference map[types.NamespacedName]*karsv1.InferencePolicy
	sre       map[types.NamespacedName]*karsv1.KarsSREAction
	egress    map[types.NamespacedName]*karsv1.EgressApproval
	pairings  map[types.NamespacedName]*karsv1.KarsPairing
	events    map[string][]*eventsv1.Event // by namespace, newest first

	toolPolicies map[types.NamespacedName]*karsv1.ToolPolicy
	mcpServers   map[types.NamespacedName]*karsv1.McpServer
	memories     map[types.NamespacedName]*karsv1.KarsMemory
	evals        map[types.NamespacedName]*karsv1.KarsEval
	trustGraphs  map[types.NamespacedName]*karsv1.TrustGraph // cluster scoped: no namespace

	// order is the sandboxes sorted by namespace/name, rebuilt only when
	// one is added or removed (an update keeps its place).
	order []types.NamespacedName
}

// NewState returns an empty State.
func NewState() *State {
	return &State{
		sandboxes: map[types.NamespacedName]*karsv1.KarsSandbox{},
		inference: map[types.NamespacedName]*karsv1.InferencePolicy{},
		sre:       map[types.NamespacedName]*karsv1.KarsSREAction{},
		egress:    map[types.NamespacedName]*karsv1.EgressApproval{},
		pairings:  map[types.NamespacedName]*karsv1.KarsPairing{},
		events:    map[string][]*eventsv1.Event{},

		toolPolicies: map[types.NamespacedName]*karsv1.ToolPolicy{},
		mcpServers:   map[types.NamespacedName]*karsv1.McpServer{},
		memories:     map[types.NamespacedName]*karsv1.KarsMemory{},
		evals:        map[types.NamespacedName]*karsv1.KarsEval{},
		trustGraphs:  map[types.NamespacedName]*karsv1.TrustGraph{},
	}
}

// Apply records one watch event: obj added or updated, or deleted. Kinds
// the operator does not show are ignored.
func (s *State) Apply(obj client.Object, deleted bool) {
	key := types.NamespacedName{Namespace: obj.GetNamespace(), Name: obj.GetName()}
	switch o := obj.(type) {
	case *karsv1.KarsSandbox:
		_, had := s.sandboxes[key]
		if deleted {
			delete(s.sandboxes, key)
		} else {
			s.sandboxes[key] = o
		}
		if had == deleted {
			s.reorder()
		}
	case *karsv1.InferencePolicy:
		put(s.inference, key, o, deleted)
	case *karsv1.KarsSREAction:
		put(s.sre, key, o, deleted)
	case *karsv1.EgressApproval:
		put(s.egress, key, o, deleted)
	case *karsv1.KarsPairing:
		put(s.pairings, key, o, deleted)
	case *karsv1.ToolPolicy:
		put(s.toolPolicies, key, o, deleted)
	case *karsv1.McpServer:
		put(s.mcpServers, key, o, deleted)
	case *karsv1.KarsMemory:
		put(s.memories, key, o, deleted)
	case *karsv1.KarsEval:
		put(s.evals, key, o, deleted)
	case *karsv1.TrustGraph:
		put(s.trustGraphs, key, o, deleted)
	case *eventsv1.Event:
		s.applyEvent(o, deleted)
	}
}

func put[T any](m map[types.NamespacedName]*T, key types.NamespacedName, o *T, deleted bool) {
	if deleted {
		delete(m, key)
		return
	}
	m[key] = o
}

func (s *State) reorder() {
	s.order = s.order[:0]
	for k := range s.sandboxes {
		s.order = append(s.order, k)
	}
	sort.Slice(s.order, func(i, j int) bool {
		if s.order[i].Namespace != s.order[j].Namespace {
			return s.order[i].Namespace < s.order[j].Namespace
		}
		return s.order[i].Name < s.order[j].Name
	})
}

// applyEvent keeps the newest maxEvents events of a namespace that concern
// kars objects, newest first.
func (s *State) applyEvent(e *eventsv1.Event, deleted bool) {
	switch k := e.Regarding.Kind; {
	case strings.HasPrefix(k, "Kars"), k == "EgressApproval", k == "InferencePolicy", k == "ToolPolicy", k == "McpServer", k == "TrustGraph":
	default:
		return
	}
	l := s.events[e.Namespace]
	for i, old := range l {
		if old.UID == e.UID {
			l = append(l[:i], l[i+1:]...)
			break
		}
	}
	if !deleted {
		at := eventTime(e)
		i := sort.Search(len(l), func(i int) bool { return !eventTime(l[i]).After(at) })
		l = append(l, nil)
		copy(l[i+1:], l[i:])
		l[i] = e
		if len(l) > maxEvents {
			l = l[:maxEvents]
		}
	}
	s.events[e.Namespace] = l
}

// Sandboxes returns the sandboxes' keys in display order.
func (s *State) Sandboxes() []types.NamespacedName { return s.order }

// Sandbox returns the sandbox named key, or nil.
func (s *State) Sandbox(key types.NamespacedName) *karsv1.KarsSandbox { return s.sandboxes[key] }

// Inference returns the InferencePolicy sandbox sb refers to, or nil.
func (s *State) Inference(sb *karsv1.KarsSandbox) *karsv1.InferencePolicy {
	return s.inference[types.NamespacedName{Namespace: sb.Namespace, Name: sb.Spec.InferenceRef.Name}]
}

// SREActions returns the actions on sandbox sb (open ones first, then the
// newest), or, for a nil sb, every open action.
func (s *State) SREActions(sb *karsv1.KarsSandbox) []*karsv1.KarsSREAction {
	var out []*karsv1.KarsSREAction
	for _, a := range s.sre {
		if sb == nil {
			if open(a) {
				out = append(out, a)
			}
			continue
		}
		if a.Namespace == sb.Namespace && a.Spec.Target.Kind == "KarsSandbox" && a.Spec.Target.Name == sb.Name {
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if oi, oj := open(out[i]), open(out[j]); oi != oj {
			return oi
		}
		if !out[i].CreationTimestamp.Equal(&out[j].CreationTimestamp) {
			return out[i].CreationTimestamp.After(out[j].CreationTimestamp.Time)
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// open reports whether an SRE action still awaits a decision.
func open(a *karsv1.KarsSREAction) bool {
	return (a.Spec.Approval.State == "" || a.Spec.Approval.State == "Pending") && a.Status.Phase != controller.SREPhaseExpired
}

// EgressApprovals returns sandbox sb's egress approvals, newest first.
func (s *State) EgressApprovals(sb *karsv1.KarsSandbox) []*karsv1.EgressApproval {
	var out []*karsv1.EgressApproval
	for _, e := range s.egress {
		if e.Namespace == sb.Namespace && e.Spec.Sandbox == sb.Name {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreationTimestamp.Equal(&out[j].CreationTimestamp) {
			return out[i].CreationTimestamp.After(out[j].CreationTimestamp.Time)
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Pairings returns the pairings of sandbox sb (those it issued and those
// naming it as the peer), by name.
func (s *State) Pairings(sb *karsv1.KarsSandbox) []*karsv1.KarsPairing {
	var out []*karsv1.KarsPairing
	for _, p := range s.pairings {
		issued := p.Namespace == sb.Namespace && p.Spec.SandboxRef != nil && p.Spec.SandboxRef.Name == sb.Name
		if issued || p.Spec.PeerSandbox == sb.Namespace+"/"+sb.Name {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Events returns the newest events of namespace ns, newest first.
func (s *State) Events(ns string) []*eventsv1.Event { return s.events[ns] }

// OpenSREActions counts the actions awaiting a decision.
func (s *State) OpenSREActions() int {
	n := 0
	for _, a := range s.sre {
		if open(a) {
			n++
		}
	}
	return n
}

// eventTime is when e last happened.
func eventTime(e *eventsv1.Event) time.Time {
	switch {
	case e.Series != nil:
		return e.Series.LastObservedTime.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	case !e.DeprecatedLastTimestamp.IsZero():
		return e.DeprecatedLastTimestamp.Time
	}
	return e.CreationTimestamp.Time
}
