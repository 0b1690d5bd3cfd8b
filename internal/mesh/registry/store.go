package registry

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/journal"
	"github.com/kars-io/kars/internal/mesh/wire"
)

// Agent is one registered agent.
type Agent struct {
	DID          string            `json:"did"`
	PublicKey    []byte            `json:"public_key"`
	Capabilities []string          `json:"capabilities"`
	Metadata     map[string]string `json:"metadata"`
	RegisteredAt time.Time         `json:"registered_at"`

	// The current prekey bundle, nil until the first upload.
	Bundle *wire.BundleUpload `json:"bundle,omitempty"`

	lastSeen time.Time // presence is not durable: it is re-learned
}

// record is one journal entry.
type record struct {
	Op     string             `json:"op"` // agent, prekeys, opk, delete
	Agent  *Agent             `json:"agent,omitempty"`
	DID    string             `json:"did,omitempty"`
	Bundle *wire.BundleUpload `json:"bundle,omitempty"`
	KeyID  uint32             `json:"key_id,omitempty"`
}

// Store holds registrations and prekeys in memory, journalled so a
// restart loses no registration and re-issues no one-time prekey.
type Store struct {
	mu      sync.Mutex
	agents  map[string]*Agent
	aliases map[string]string // did:agentmesh: → did:mesh:
	log     *journal.Log
	records int // since the last compaction
}

// ErrExists reports a second registration of the same key.
var ErrExists = errors.New("registry: agent already registered")

// ErrNotFound reports an unknown DID.
var ErrNotFound = errors.New("registry: agent not found")

// compactAfter is how many journal records may pile up past the live
// set before the journal is rewritten.
const compactAfter = 10_000

// OpenStore opens the registry journal in dir.
func OpenStore(dir string) (*Store, error) {
	s := &Store{agents: map[string]*Agent{}, aliases: map[string]string{}}
	log, err := journal.Open(filepath.Join(dir, "registry.journal"), s.apply)
	if err != nil {
		return nil, err
	}
	s.log = log
	return s, nil
}

// Close closes the journal.
func (s *Store) Close() error { return s.log.Close() }

func (s *Store) apply(raw []byte) error {
	var r record
	if err := json.Unmarshal(raw, &r); err != nil {
		return err
	}
	s.records++
	switch r.Op {
	case "agent":
		s.put(r.Agent)
	case "prekeys":
		if a := s.agents[r.DID]; a != nil {
			a.Bundle = r.Bundle
		}
	case "opk":
		if a := s.agents[r.DID]; a != nil && a.Bundle != nil {
			a.Bundle.OneTimePreKeys = slices.DeleteFunc(a.Bundle.OneTimePreKeys, func(o wire.OneTimePreKeyJSON) bool { return o.KeyID == r.KeyID })
		}
	case "delete":
		s.remove(r.DID)
	default:
		return fmt.Errorf("unknown registry record %q", r.Op)
	}
	return nil
}

func (s *Store) put(a *Agent) {
	s.agents[a.DID] = a
	s.aliases[identity.AgentMeshDID(a.PublicKey)] = a.DID
}

func (s *Store) remove(did string) {
	if a := s.agents[did]; a != nil {
		delete(s.aliases, identity.AgentMeshDID(a.PublicKey))
		delete(s.agents, did)
	}
}

// resolve maps either DID form to the stored agent. Callers hold mu.
func (s *Store) resolve(did string) *Agent {
	if strings.HasPrefix(did, identity.PrefixAgentMesh) {
		did = s.aliases[did]
	}
	return s.agents[did]
}

// commit appends r under mu and returns a ticket to wait on after
// unlocking, compacting when the journal has grown.
func (s *Store) commitLocked(r record) (uint64, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return 0, err
	}
	t := s.log.Append(b)
	s.records++
	if s.records > compactAfter+2*len(s.agents) {
		if err := s.log.Rewrite(s.live); err != nil {
			return 0, err
		}
		s.records = 2 * len(s.agents)
	}
	return t, nil
}

func (s *Store) live(emit func([]byte)) error {
	dids := make([]string, 0, len(s.agents))
	for d := range s.agents {
		dids = append(dids, d)
	}
	sort.Strings(dids)
	for _, d := range dids {
		a := s.agents[d]
		cp := *a
		cp.Bundle = nil
		b, err := json.Marshal(record{Op: "agent", Agent: &cp})
		if err != nil {
			return err
		}
		emit(b)
		if a.Bundle != nil {
			b, err := json.Marshal(record{Op: "prekeys", DID: d, Bundle: a.Bundle})
			if err != nil {
				return err
			}
			emit(b)
		}
	}
	return nil
}

// Register adds an agent. The DID is derived from the key (did:mesh:,
// the toolkit's form); its did:agentmesh: alias resolves to the same
// record.
func (s *Store) Register(pub ed25519.PublicKey, caps []string, meta map[string]string, now time.Time) (*Agent, error) {
	a := &Agent{DID: identity.MeshDID(pub), PublicKey: slices.Clone(pub), Capabilities: caps, Metadata: meta, RegisteredAt: now.UTC(), lastSeen: now}
	s.mu.Lock()
	if s.agents[a.DID] != nil {
		s.mu.Unlock()
		return nil, ErrExists
	}
	s.put(a)
	t, err := s.commitLocked(record{Op: "agent", Agent: a})
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return a, s.log.Wait(t)
}

// Get returns a copy of the agent named by either DID form.
func (s *Store) Get(did string) (Agent, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.resolve(did)
	if a == nil {
		return Agent{}, false
	}
	return *a, true
}

// PublicKey returns the Ed25519 key registered for did.
func (s *Store) PublicKey(did string) (ed25519.PublicKey, bool) {
	a, ok := s.Get(did)
	return a.PublicKey, ok
}

// Seen records presence for did.
func (s *Store) Seen(did string, t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.resolve(did); a != nil && t.After(a.lastSeen) {
		a.lastSeen = t
	}
}

// LastSeen reports when did was last seen.
func (s *Store) LastSeen(did string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.resolve(did)
	if a == nil {
		return time.Time{}, false
	}
	return a.lastSeen, true
}

// Delete removes an agent and its prekeys.
func (s *Store) Delete(did string) error {
	s.mu.Lock()
	a := s.resolve(did)
	if a == nil {
		s.mu.Unlock()
		return ErrNotFound
	}
	s.remove(a.DID)
	t, err := s.commitLocked(record{Op: "delete", DID: a.DID})
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.log.Wait(t)
}

// PutPrekeys replaces an agent's bundle (the toolkit replaces; so do we).
func (s *Store) PutPrekeys(did string, b *wire.BundleUpload) error {
	s.mu.Lock()
	a := s.resolve(did)
	if a == nil {
		s.mu.Unlock()
		return ErrNotFound
	}
	a.Bundle = b
	t, err := s.commitLocked(record{Op: "prekeys", DID: a.DID, Bundle: b})
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.log.Wait(t)
}

// TakeBundle returns did's bundle with at most one one-time prekey,
// removing that prekey atomically: concurrent fetches never share one,
// and the removal is durable before the bundle is returned, so a
// restart cannot hand it out again (X3DH §3.2, AgentMesh §11.3).
func (s *Store) TakeBundle(did string) (*wire.BundleResponse, error) {
	s.mu.Lock()
	a := s.resolve(did)
	if a == nil || a.Bundle == nil {
		s.mu.Unlock()
		return nil, ErrNotFound
	}
	b := a.Bundle
	resp := &wire.BundleResponse{IdentityKey: b.IdentityKey, IdentityKeyEd: b.IdentityKeyEd, SignedPreKey: b.SignedPreKey}
	var t uint64
	if len(b.OneTimePreKeys) > 0 {
		o := b.OneTimePreKeys[0]
		resp.OneTimePreKey = &o
		// Copy on write: a concurrent reader of the old slice (the
		// journal's compaction) keeps a consistent view.
		nb := *b
		nb.OneTimePreKeys = slices.Clone(b.OneTimePreKeys[1:])
		a.Bundle = &nb
		var err error
		if t, err = s.commitLocked(record{Op: "opk", DID: a.DID, KeyID: o.KeyID}); err != nil {
			s.mu.Unlock()
			return nil, err
		}
	}
	s.mu.Unlock()
	if t != 0 {
		if err := s.log.Wait(t); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// Discover lists agents holding capability, by DID, at most limit.
func (s *Store) Discover(capability string, limit int) []Agent {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Agent
	for _, a := range s.agents {
		if slices.Contains(a.Capabilities, capability) {
			out = append(out, *a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].DID < out[j].DID })
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}
