// Package bridge makes kars-router the agent's AgentMesh endpoint
// (docs/mesh.md, "The router as mesh endpoint"). The router (UID 1001)
// holds the agent's mesh identity, prekeys and Double Ratchet sessions
// in its state directory; the agent (UID 1000) never sees a key. The agent
// sends and receives plaintext through the router's agent API, and the
// bridge:
//
//   - admits a peer only while a pairing names it, its trust score reaches
//     the sandbox's threshold, and the trust graph (when it names this
//     router) allows it (policy.Admit);
//   - sends a signed KNOCK before the first session with a peer and
//     accepts a session from a peer only after accepting its KNOCK;
//   - decides every send as mesh:send:<peer> and every delivery as
//     mesh:receive:<peer> with the router's governance, and writes each
//     decision to the audit log before the message moves;
//   - drops a message that fails to decrypt and raises a security event:
//     an audit entry, a metric and a trust penalty for the sender. There
//     is no plaintext path: a peer's frame reaches the agent only through
//     a session.
//
// Every state change that must survive a crash (a session's ratchet, a
// consumed one-time prekey, a granted KNOCK, an undelivered message) is
// journalled and fsynced before its effect is visible: before a sealed
// frame goes to the relay, and before an inbound frame is acknowledged.
//
// The package depends on the router only through the Governance
// interface, so the router imports it and not the other way round.
package bridge

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/mesh/client"
	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/journal"
	"github.com/kars-io/kars/internal/mesh/policy"
	"github.com/kars-io/kars/internal/mesh/session"
	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/mesh/x3dh"
	"github.com/kars-io/kars/internal/trust"
)

// Governance is the router's side: the live policy and the audit log.
type Governance interface {
	// Decide evaluates action for the sandbox's agent with the policy in
	// force. It does not audit: the bridge writes the entry.
	Decide(action string) governance.Decision
	// Audit appends rec (Sandbox and Agent filled in by the router) and
	// returns once it is durable. An error means it is not on record,
	// and whatever it records must not happen.
	Audit(ctx context.Context, rec audit.Record) error
	// AuditFailing reports that the log is failing, so nothing can be
	// decided until it recovers.
	AuditFailing() bool
}

// Options configure a Bridge.
type Options struct {
	// Dir holds the bridge's state; it is created 0700.
	Dir string
	// Registry and Relay are the mesh endpoints (routerconfig.Mesh).
	Registry, Relay string
	// Dial, when set, opens every connection to the registry and relay
	// (the local substrate hands the router a Unix socket to kars-mesh).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Self are the names trust-graph edges use for this router: its
	// agent id ("namespace/name"); its DID is added by the bridge.
	Self []string
	// Threshold is the trust score peers need.
	Threshold int
	// Global publishes the identity for federation (registryMode:
	// global): it registers with wire.CapabilityGlobal.
	Global bool
	Gov    Governance
	// Trust keeps peers' scores (keyed by DID).
	Trust *trust.Store
	// Registerer receives the bridge's metrics; nil registers none.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Explain, when set, explains to a DID no pairing names why it is
	// refused (a revoked or expired pairing), in the knock_reject it gets
	// and the audit entry; without it the reason is "not paired".
	Explain func(did string) string
	// SessionTTL is how long an accepted KNOCK's session lasts (24 h
	// when zero); KnockTimeout bounds the wait for an answer (15 s).
	SessionTTL, KnockTimeout time.Duration
	Now                      func() time.Time
}

// Bridge is one router's mesh endpoint.
type Bridge struct {
	o       Options
	log     *slog.Logger
	self    *identity.Identity
	priv    ed25519.PrivateKey
	client  *client.Client
	metrics *metrics
	jl      *journal.Log
	inbox   *inbox

	threshold atomic.Int64
	conn      atomic.Pointer[client.Conn]
	connected chan struct{}

	mu       sync.Mutex
	pol      *policy.Policy
	keys     *x3dh.Keys
	sessions map[string]*peerSession // by peer DID
	grants   map[string]time.Time    // accepted KNOCKs, by peer DID
	knocks   map[string]knockWait
	awaiting map[string]chan Message  // replies awaited, by message id
	busy     map[string]chan struct{} // sessions being established, by DID
	peerKeys map[string]ed25519.PublicKey
	records  int // journal records since the last compaction
}

// peerSession is a live session with one peer.
type peerSession struct {
	s         *session.Session
	expires   time.Time
	initiator bool
	ids       []string
}

const recentIDs = 64

func (p *peerSession) seen(id string) bool {
	for _, x := range p.ids {
		if x == id {
			return true
		}
	}
	return false
}

func (p *peerSession) remember(id string) {
	p.ids = append(p.ids, id)
	if len(p.ids) > recentIDs {
		p.ids = p.ids[len(p.ids)-recentIDs:]
	}
}

// Errors the agent API maps to statuses.
var (
	ErrNotPaired    = errors.New("not paired")
	ErrRefused      = errors.New("refused")
	ErrNotConnected = errors.New("the router is not connected to the mesh relay yet")
	ErrNoReply      = errors.New("no reply in time")
)

// Open loads (or creates) the bridge's state. It does no network I/O;
// Run connects.
func Open(o Options) (*Bridge, error) {
	if o.Gov == nil || o.Trust == nil {
		return nil, errors.New("bridge: Gov and Trust are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = 24 * time.Hour
	}
	if o.KnockTimeout <= 0 {
		o.KnockTimeout = 15 * time.Second
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("mesh state: %w", err)
	}
	self, err := loadIdentity(o.Dir)
	if err != nil {
		return nil, err
	}
	pol, err := loadPolicy(o.Dir)
	if err != nil {
		return nil, err
	}
	b := &Bridge{
		o: o, log: o.Logger, self: self, priv: ed25519.NewKeyFromSeed(self.Seed()),
		metrics: newMetrics(o.Registerer), connected: make(chan struct{}),
		pol: pol, sessions: map[string]*peerSession{}, grants: map[string]time.Time{},
		knocks: map[string]knockWait{}, awaiting: map[string]chan Message{},
		busy: map[string]chan struct{}{}, peerKeys: map[string]ed25519.PublicKey{},
		inbox: newInbox(),
	}
	b.o.Self = append(append([]string(nil), o.Self...), self.DID())
	b.threshold.Store(int64(o.Threshold))
	hc := &http.Client{Timeout: 20 * time.Second}
	if o.Dial != nil {
		hc.Transport = &http.Transport{DialContext: o.Dial, Proxy: nil, MaxIdleConnsPerHost: 4}
	} else {
		hc.Transport = &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4}
	}
	b.client = &client.Client{Registry: o.Registry, Relay: o.Relay, ID: self, HTTP: hc, Now: o.Now}
	if err := b.replay(); err != nil {
		return nil, err
	}
	if b.keys == nil {
		k, err := x3dh.NewKeys(rand.Reader, self, o.Now())
		if err != nil {
			return nil, err
		}
		b.keys = k
		if err := b.commit(b.prekeysRecord()); err != nil {
			return nil, err
		}
	}
	b.metrics.sessions.Set(float64(len(b.sessions)))
	return b, nil
}

// replay rebuilds the state from the journal.
func (b *Bridge) replay() error {
	var keysState json.RawMessage
	sessions := map[string]record{}
	inbox := map[string]*Message{}
	var order []string
	jl, err := journal.Open(filepath.Join(b.o.Dir, journalFile), func(raw []byte) error {
		var r record
		if err := json.Unmarshal(raw, &r); err != nil {
			return fmt.Errorf("mesh journal record: %w", err)
		}
		b.records++
		switch r.T {
		case "session":
			sessions[r.Peer] = r
		case "end":
			delete(sessions, r.Peer)
			delete(b.grants, r.Peer)
		case "prekeys":
			keysState = r.State
		case "grant":
			b.grants[r.Peer] = r.Expires
		case "inbox":
			if r.Msg != nil {
				inbox[r.Msg.ID] = r.Msg
				order = append(order, r.Msg.ID)
			}
		case "taken":
			delete(inbox, r.ID)
		}
		return nil
	})
	if err != nil {
		return err
	}
	b.jl = jl
	if keysState != nil {
		if b.keys, err = x3dh.RestoreKeys(b.self, keysState); err != nil {
			return fmt.Errorf("mesh prekeys: %w", err)
		}
	}
	for did, r := range sessions {
		s, err := session.Restore(rand.Reader, r.State)
		if err != nil {
			return fmt.Errorf("mesh session with %s: %w", did, err)
		}
		b.sessions[did] = &peerSession{s: s, expires: r.Expires, initiator: r.Initiator, ids: r.IDs}
	}
	for _, id := range order {
		if m, ok := inbox[id]; ok {
			b.inbox.add(*m)
			delete(inbox, id)
		}
	}
	return nil
}

// DID is the router's mesh identity.
func (b *Bridge) DID() string { return b.self.DID() }

// PublicKey is the identity's Ed25519 key.
func (b *Bridge) PublicKey() ed25519.PublicKey { return b.self.PublicKey() }

// SetThreshold changes the trust threshold (a config reload).
func (b *Bridge) SetThreshold(t int) { b.threshold.Store(int64(t)) }

// Policy returns the policy in force.
func (b *Bridge) Policy() *policy.Policy {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pol
}

// SetPolicy makes p the policy in force, durably, and cuts every session
// with a peer p no longer names: a revoked or expired pairing ends the
// conversation at once, whatever the ratchet state.
func (b *Bridge) SetPolicy(p *policy.Policy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if err := savePolicy(b.o.Dir, p); err != nil {
		return err
	}
	b.mu.Lock()
	b.pol = p
	var ended []record
	for did, ps := range b.sessions {
		if _, ok := p.ByDID(did); ok {
			continue
		}
		ps.s.Close()
		delete(b.sessions, did)
		ended = append(ended, record{T: "end", Peer: did})
	}
	for did := range b.grants {
		if _, ok := p.ByDID(did); !ok {
			delete(b.grants, did)
			ended = append(ended, record{T: "end", Peer: did})
		}
	}
	var t uint64
	for _, r := range ended {
		t = b.appendLocked(r)
	}
	b.metrics.sessions.Set(float64(len(b.sessions)))
	b.mu.Unlock()
	if len(ended) > 0 {
		b.log.Info("mesh policy cut sessions with peers it no longer names", "sessions", len(ended))
		return b.jl.Wait(t)
	}
	return nil
}

// appendLocked queues r in the journal; the caller holds b.mu, which
// orders journal records with the state they describe.
func (b *Bridge) appendLocked(r record) uint64 {
	raw, _ := json.Marshal(r)
	b.records++
	return b.jl.Append(raw)
}

// commit appends r and waits until it is durable.
func (b *Bridge) commit(r record) error {
	b.mu.Lock()
	t := b.appendLocked(r)
	b.mu.Unlock()
	return b.jl.Wait(t)
}

func (b *Bridge) prekeysRecord() record {
	st, _ := b.keys.MarshalJSON()
	return record{T: "prekeys", State: st}
}

func sessionRecord(did string, ps *peerSession) record {
	st, _ := ps.s.MarshalJSON()
	return record{T: "session", Peer: did, State: st, Expires: ps.expires, Initiator: ps.initiator, IDs: ps.ids}
}

// maybeCompact rewrites the journal with the live state when dead
// records dominate. The caller holds b.mu.
func (b *Bridge) maybeCompactLocked() {
	live := 1 + len(b.sessions) + len(b.grants) + b.inbox.len()
	if b.records < 4*live+1024 {
		return
	}
	err := b.jl.Rewrite(func(emit func([]byte)) error {
		put := func(r record) {
			raw, _ := json.Marshal(r)
			emit(raw)
		}
		put(b.prekeysRecord())
		for did, ps := range b.sessions {
			put(sessionRecord(did, ps))
		}
		for did, until := range b.grants {
			put(record{T: "grant", Peer: did, Expires: until})
		}
		for _, m := range b.inbox.snapshot() {
			put(record{T: "inbox", Msg: &m})
		}
		return nil
	})
	if err != nil {
		b.log.Error("mesh journal compaction failed", "err", err)
		return
	}
	b.records = live
}

// Run registers the identity, publishes prekeys, connects to the relay
// and handles inbound frames until ctx ends. It retries the registry and
// relay until they answer.
func (b *Bridge) Run(ctx context.Context) error {
	backoff := 200 * time.Millisecond
	var cn *client.Conn
	for {
		var err error
		cn, err = b.connect(ctx)
		if err == nil {
			break
		}
		b.log.Warn("mesh not connected yet; retrying", "registry", b.o.Registry, "relay", b.o.Relay, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
	b.conn.Store(cn)
	close(b.connected)
	b.log.Info("mesh connected", "did", b.self.DID(), "relay", b.o.Relay)
	defer cn.Close()
	maint := time.NewTicker(time.Hour)
	defer maint.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case in := <-cn.Recv():
			b.handle(ctx, cn, in)
		case <-maint.C:
			b.maintainPrekeys(ctx)
		}
	}
}

func (b *Bridge) connect(ctx context.Context) (*client.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	caps, mode := []string{"kars-router"}, "local"
	if b.o.Global {
		caps, mode = append(caps, wire.CapabilityGlobal), "global"
	}
	if _, err := b.client.Register(cctx, caps, map[string]string{"kind": "kars-router", "registry_mode": mode}); err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.keys.Prune(b.o.Now())
	b.mu.Unlock()
	if err := b.client.UploadPrekeys(cctx, b.keys); err != nil {
		return nil, err
	}
	return b.client.Dial(cctx)
}

// maintainPrekeys rotates the signed prekey when due (§6.2) and tops up
// one-time prekeys below the low-water mark (§6.3), then republishes.
func (b *Bridge) maintainPrekeys(ctx context.Context) {
	b.mu.Lock()
	now := b.o.Now()
	changed := false
	if b.keys.NeedsRotation(now) {
		if err := b.keys.RotateSignedPreKey(rand.Reader, now); err == nil {
			changed = true
		}
	}
	b.keys.Prune(now)
	if n := len(b.keys.OneTimePreKeys()); n < x3dh.OneTimeLowWater {
		if _, err := b.keys.GenerateOneTimePreKeys(rand.Reader, x3dh.OneTimeTarget-n); err == nil {
			changed = true
		}
	}
	if !changed {
		b.mu.Unlock()
		return
	}
	t := b.appendLocked(b.prekeysRecord())
	b.mu.Unlock()
	if err := b.jl.Wait(t); err != nil {
		b.log.Error("mesh prekeys not persisted", "err", err)
		return
	}
	uctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := b.client.UploadPrekeys(uctx, b.keys); err != nil {
		b.log.Warn("mesh prekeys not republished", "err", err)
	}
}

// Close stops nothing by itself (cancel Run's context) but closes the
// journal once Run has returned.
func (b *Bridge) Close() error {
	b.mu.Lock()
	for _, ps := range b.sessions {
		ps.s.Close()
	}
	b.mu.Unlock()
	return b.jl.Close()
}

// Connected reports whether Run has reached the relay.
func (b *Bridge) Connected() bool {
	select {
	case <-b.connected:
		return true
	default:
		return false
	}
}

func newID(prefix string) string {
	var b [12]byte
	if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b[:])
}
