package bridge

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/kars-io/kars/internal/mesh/policy"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/kars-io/kars/internal/governance/statefile"
	"github.com/kars-io/kars/internal/mesh/identity"
)

// Files in the bridge's state directory (<router stateDir>/mesh, 0700,
// owned by the router's UID; the agent never reads it).
const (
	identityFile = "identity.seed" // the 32-byte Ed25519 seed, written once
	journalFile  = "mesh.journal"  // sessions, prekeys, grants, inbox
	policyFile   = "policy.json"   // the last policy the controller pushed
)

// record is one journal entry. The journal is replayed in order on open;
// the last record about a thing wins.
type record struct {
	// T is the kind: session, end, prekeys, grant, inbox, taken.
	T    string `json:"t"`
	Peer string `json:"peer,omitempty"`
	// State is a session's or the prekey store's serialisation, secrets
	// included (the journal is 0600 in a 0700 folder of the router's).
	State     json.RawMessage `json:"state,omitempty"`
	Expires   time.Time       `json:"expires,omitzero"`
	Initiator bool            `json:"initiator,omitempty"`
	// IDs are the frame ids a session opened most recently, so that a
	// relay's redelivery after a crash is recognised as a duplicate, not
	// a decryption failure.
	IDs []string `json:"ids,omitempty"`
	Msg *Message `json:"msg,omitempty"`
	ID  string   `json:"id,omitempty"`
}

// loadIdentity reads the router's mesh identity from dir, creating it
// the first time. The seed is written to a temporary file and linked into
// place (link(2) fails if the name exists), so two routers racing on one
// volume end up with the same identity: the loser reads the winner's.
func loadIdentity(dir string) (*identity.Identity, error) {
	path := filepath.Join(dir, identityFile)
	seed, err := os.ReadFile(path)
	if err == nil {
		defer clear(seed)
		id, err := identity.FromSeed(seed)
		if err != nil {
			return nil, fmt.Errorf("mesh identity %s: %w", path, err)
		}
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("mesh identity: %w", err)
	}
	id, err := identity.New(rand.Reader)
	if err != nil {
		return nil, err
	}
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("mesh identity: %w", err)
	}
	s := id.Seed()
	_, err = f.Write(s)
	clear(s)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("mesh identity: %w", err)
	}
	err = os.Link(tmp, path)
	os.Remove(tmp)
	if errors.Is(err, fs.ErrExist) {
		return loadIdentity(dir)
	}
	if err != nil {
		return nil, fmt.Errorf("mesh identity: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return id, nil
}

// loadPolicy reads the persisted policy; none yet means no peers.
func loadPolicy(dir string) (*policy.Policy, error) {
	path := filepath.Join(dir, policyFile)
	b, err := statefile.Read(path)
	if err != nil {
		return nil, err
	}
	p := &policy.Policy{}
	if b == nil {
		return p, nil
	}
	if err := json.Unmarshal(b, p); err != nil {
		return nil, fmt.Errorf("mesh policy %s: %w", path, err)
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("mesh policy %s: %w", path, err)
	}
	return p, nil
}

func savePolicy(dir string, p *policy.Policy) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return statefile.Write(filepath.Join(dir, policyFile), b, 0o600)
}
