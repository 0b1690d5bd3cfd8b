// Package host is a minimal offload host (scenario 2, docs/offload.md):
// what an OpenClaw plugin does, in Go, for hosts that are not OpenClaw
// and for kars's own tests against the real broker. It pairs once with a
// token (redeemed with the host's own mesh identity), then speaks the
// offload protocol (internal/offload) with the cluster's broker over
// end-to-end encrypted mesh sessions, sends the task straight to the
// offload sandbox's router once the broker reports it ready, and reads
// the agent's answer.
//
// The host's mesh endpoint is the same bridge a kars router runs
// (internal/mesh/bridge): X3DH with the cluster's registry, a Double
// Ratchet per peer, every send and receive recorded in the host's own
// audit log. Only what the caller passes as the task text leaves the
// host.
package host

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/mesh/bridge"
	"github.com/kars-io/kars/internal/mesh/policy"
	"github.com/kars-io/kars/internal/offload"
	"github.com/kars-io/kars/internal/pairing"
	"github.com/kars-io/kars/internal/trust"
)

// BrokerPeer is the name the host gives the cluster's offload broker.
const BrokerPeer = "kars"

// Options configure a host.
type Options struct {
	// Dir holds the host's identity, sessions, pairing and audit log; it
	// is created 0700.
	Dir string
	// Registry and Relay override the token's (a port-forwarded mesh
	// edge, `kars mesh promote --port-forward`); empty means the token's.
	Registry, Relay string
	// Dial, when set, opens the connections to the registry and relay.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// AnswerTimeout bounds the wait for the broker's answer (30 s).
	AnswerTimeout time.Duration
	Logger        *slog.Logger
	Now           func() time.Time
}

// Host is a paired offload host.
type Host struct {
	o      Options
	br     *bridge.Bridge
	audit  *audit.Writer
	trust  *trust.Store
	paired *pairing.Result

	mu      sync.Mutex
	queues  map[string][]bridge.Message // by sender (the host's name for it)
	events  []offload.Message
	changed chan struct{}
	// revokedBy is the broker's revocation notice, kept once it arrived:
	// a revoked pairing stays revoked.
	revokedBy *offload.Error
}

// ErrNotPaired is returned by Open when the folder holds no pairing.
var ErrNotPaired = errors.New("offload host: not paired yet (redeem a pairing token first)")

const pairingFile = "pairing.json"

func (o *Options) defaults() {
	if o.AnswerTimeout <= 0 {
		o.AnswerTimeout = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Pair redeems token with a new identity kept in o.Dir and returns the
// paired host. The token is single-use: the cluster binds its pairing to
// this identity, and the token is not written anywhere.
func Pair(ctx context.Context, o Options, token string) (*Host, error) {
	o.defaults()
	if _, err := os.Stat(filepath.Join(o.Dir, pairingFile)); err == nil {
		return nil, fmt.Errorf("offload host: %s already holds a pairing", o.Dir)
	}
	p, err := pairing.Parse(token)
	if err != nil {
		return nil, err
	}
	if !containsStr(p.Capabilities, "offload") && !containsStr(p.Capabilities, "handoff") {
		return nil, errors.New("offload host: the token grants neither offload nor handoff")
	}
	if p.Issuer == "" {
		return nil, errors.New("offload host: the token names no issuer: it pairs with a sandbox, not with the cluster's offload broker")
	}
	reg, rel := cmpOr(o.Registry, p.Registry), cmpOr(o.Relay, p.Relay)
	h, err := open(o, reg, rel)
	if err != nil {
		return nil, err
	}
	res, err := h.br.Redeem(ctx, token)
	if err != nil {
		h.Close()
		return nil, err
	}
	if res.Issuer == "" {
		res.Issuer = p.Issuer
	}
	res.Registry, res.Relay = reg, rel
	raw, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(filepath.Join(o.Dir, pairingFile), raw, 0o600); err != nil {
		h.Close()
		return nil, err
	}
	if err := h.setPaired(res); err != nil {
		h.Close()
		return nil, err
	}
	h.record(ctx, audit.Record{Action: "offload:pair:" + res.Name, Decision: "allow", Rule: "kars-offload-host",
		Reason: "the pairing token was redeemed with this host's identity " + h.br.DID(),
		Attrs:  map[string]string{"pairing": res.Pairing, "broker_did": res.Issuer, "expires_at": res.ExpiresAt.Format(time.RFC3339)}})
	return h, nil
}

// Open reopens a paired host from o.Dir.
func Open(o Options) (*Host, error) {
	o.defaults()
	raw, err := os.ReadFile(filepath.Join(o.Dir, pairingFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotPaired
	}
	if err != nil {
		return nil, err
	}
	var res pairing.Result
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("offload host: %s: %w", pairingFile, err)
	}
	h, err := open(o, cmpOr(o.Registry, res.Registry), cmpOr(o.Relay, res.Relay))
	if err != nil {
		return nil, err
	}
	if err := h.setPaired(&res); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

func open(o Options, registry, relay string) (*Host, error) {
	if o.Dir == "" {
		return nil, errors.New("offload host: a state folder is required")
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, err
	}
	key, err := seedFile(filepath.Join(o.Dir, "audit-checkpoint.seed"))
	if err != nil {
		return nil, err
	}
	w, err := audit.Open(audit.Options{Dir: filepath.Join(o.Dir, "audit"), Sandbox: "offload-host", SigningKey: key, Now: o.Now})
	if err != nil {
		return nil, err
	}
	ts, err := trust.Open("", trust.DefaultConfig())
	if err != nil {
		w.Close()
		return nil, err
	}
	br, err := bridge.Open(bridge.Options{Dir: filepath.Join(o.Dir, "mesh"), Registry: registry, Relay: relay, Dial: o.Dial,
		Self: []string{"offload-host"}, Threshold: trust.DefaultConfig().Threshold, Gov: hostGov{w: w}, Trust: ts, Logger: o.Logger, Now: o.Now})
	if err != nil {
		w.Close()
		ts.Close()
		return nil, err
	}
	return &Host{o: o, br: br, audit: w, trust: ts, queues: map[string][]bridge.Message{}, changed: make(chan struct{})}, nil
}

// hostGov is the host's governance: the user chose to offload, so every
// exchange with a paired peer is allowed, and each is on the host's own
// record.
type hostGov struct{ w *audit.Writer }

func (hostGov) Decide(string) governance.Decision {
	return governance.Decision{Verdict: governance.Allow, Rule: "kars-offload-host", Reason: "the host's user offloads to the paired cluster"}
}

func (g hostGov) Audit(ctx context.Context, rec audit.Record) error {
	rec.Agent = "offload-host"
	_, err := g.w.Append(ctx, rec)
	return err
}

func (g hostGov) AuditFailing() bool { return g.w.Err() != nil }

func (h *Host) setPaired(res *pairing.Result) error {
	h.mu.Lock()
	h.paired = res
	h.mu.Unlock()
	return h.br.SetPolicy(&policy.Policy{Peers: []policy.Peer{h.brokerPeer()}})
}

func (h *Host) brokerPeer() policy.Peer {
	return policy.Peer{Name: BrokerPeer, DID: h.paired.Issuer, Pairing: h.paired.Pairing, Capabilities: h.paired.Capabilities, ExpiresAt: h.paired.ExpiresAt}
}

// DID is the host's mesh identity.
func (h *Host) DID() string { return h.br.DID() }

// Pairing is what the redemption returned.
func (h *Host) Pairing() pairing.Result {
	h.mu.Lock()
	defer h.mu.Unlock()
	return *h.paired
}

// AuditDir is the folder of the host's audit log (audit.Verify reads
// it).
func (h *Host) AuditDir() string { return filepath.Join(h.o.Dir, "audit") }

// Run keeps the host connected to the mesh and files what arrives until
// ctx ends.
func (h *Host) Run(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- h.br.Run(ctx) }()
	for ctx.Err() == nil {
		ms := h.br.Take(ctx, 16, 5*time.Second)
		if len(ms) == 0 {
			continue
		}
		h.mu.Lock()
		for _, m := range ms {
			if m.From == BrokerPeer {
				if ev, err := offload.ParseMessage([]byte(m.Text)); err == nil && ev.Op == offload.OpEvent {
					h.events = append(h.events, *ev)
					if ev.Event == offload.EventRevoked && ev.Error != nil {
						h.revokedBy = ev.Error
					}
					continue
				}
			}
			h.queues[m.From] = append(h.queues[m.From], m)
		}
		close(h.changed)
		h.changed = make(chan struct{})
		h.mu.Unlock()
	}
	return <-done
}

// Connected reports whether the host's mesh connection is up.
func (h *Host) Connected() bool { return h.br.Connected() }

// Close releases the host's state.
func (h *Host) Close() error {
	return errors.Join(h.br.Close(), h.audit.Close(), h.trust.Close())
}

var seq struct {
	sync.Mutex
	n int
}

func requestID() string {
	seq.Lock()
	defer seq.Unlock()
	seq.n++
	var b [4]byte
	rand.Read(b[:])
	return "r" + strconv.Itoa(seq.n) + "-" + hex.EncodeToString(b[:])
}

// call sends one request to the broker and returns its answer; a
// refusal is an *offload.Error.
func (h *Host) call(ctx context.Context, req offload.Request) (*offload.Message, error) {
	req.V = offload.Version
	if req.ID == "" {
		req.ID = requestID()
	}
	if e := h.revoked(); e != nil {
		return nil, e
	}
	// Just after Pair or Open the connection to the relay may still be
	// coming up: wait for it rather than fail the first request.
	for wait := time.Now().Add(h.o.AnswerTimeout); !h.br.Connected() && time.Now().Before(wait); {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	raw, _ := json.Marshal(req)
	res, err := h.br.Send(ctx, bridge.SendRequest{To: BrokerPeer, Text: string(raw), Await: h.o.AnswerTimeout})
	if err != nil || res.Reply == nil {
		// A broker that stopped answering may have said why: the
		// pairing was revoked.
		if e := h.revoked(); e != nil {
			return nil, e
		}
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("offload host: the broker did not answer %s within %s", req.ID, h.o.AnswerTimeout)
	}
	m, err := offload.ParseMessage([]byte(res.Reply.Text))
	if err != nil {
		return nil, fmt.Errorf("offload host: the broker's answer: %w", err)
	}
	if m.Re != req.ID {
		return nil, fmt.Errorf("offload host: the broker answered %q, not %q", m.Re, req.ID)
	}
	if !m.OK {
		if m.Error == nil {
			return nil, errors.New("offload host: the broker refused without a reason")
		}
		return m, m.Error
	}
	return m, nil
}

// Task is what the host offloads: Text is the only content that leaves
// the host.
type Task struct {
	Title string
	Text  string
	// RequestID makes a retried Offload idempotent; empty picks one.
	RequestID string
	Limits    *offload.Limits
}

// Offload asks the broker for an offload sandbox for t; the sandbox is
// Creating until WaitReady returns.
func (h *Host) Offload(ctx context.Context, t Task) (*offload.Info, error) {
	sum := sha256.Sum256([]byte(t.Text))
	m, err := h.call(ctx, offload.Request{Op: offload.OpOffload, ID: t.RequestID, Limits: t.Limits,
		Task: &offload.Task{Title: t.Title, SHA256: hex.EncodeToString(sum[:]), Bytes: len(t.Text)}})
	if err != nil {
		return nil, err
	}
	if m.Offload == nil {
		return nil, errors.New("offload host: the broker admitted the offload but named none")
	}
	return m.Offload, nil
}

// Status reports one offload (id) and the pairing's usage; id "" lists
// every offload of the pairing.
func (h *Host) Status(ctx context.Context, id string) (*offload.Message, error) {
	return h.call(ctx, offload.Request{Op: offload.OpStatus, Offload: id})
}

// Ack acknowledges an offload's result: the cluster ends it and charges
// what it used.
func (h *Host) Ack(ctx context.Context, id string) (*offload.Info, error) {
	m, err := h.call(ctx, offload.Request{Op: offload.OpAck, Offload: id})
	if err != nil {
		return nil, err
	}
	return m.Offload, nil
}

// Handoff takes a running offload back with its state summary.
func (h *Host) Handoff(ctx context.Context, id string) (*offload.Handoff, error) {
	m, err := h.call(ctx, offload.Request{Op: offload.OpHandoff, Offload: id})
	if err != nil {
		return nil, err
	}
	return m.Handoff, nil
}

// revoked is the broker's revocation notice, if one arrived.
func (h *Host) revoked() *offload.Error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.revokedBy
}

// Events returns and clears the broker's events received so far.
func (h *Host) Events() []offload.Message {
	h.mu.Lock()
	defer h.mu.Unlock()
	ev := h.events
	h.events = nil
	return ev
}

// WaitEvent waits for a broker event named name about offload id (any
// offload when id is "") and returns it.
func (h *Host) WaitEvent(ctx context.Context, name, id string) (*offload.Message, error) {
	for {
		h.mu.Lock()
		for i, ev := range h.events {
			if ev.Event == name && (id == "" || (ev.Offload != nil && ev.Offload.ID == id)) {
				h.events = append(h.events[:i:i], h.events[i+1:]...)
				h.mu.Unlock()
				return &ev, nil
			}
		}
		ch := h.changed
		h.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("offload host: no %s event for %q: %w", name, id, ctx.Err())
		case <-ch:
		}
	}
}

// WaitReady waits until offload id is ready for its task: the broker's
// ready event, or a status answer saying so (an event can be missed
// while the host is offline).
func (h *Host) WaitReady(ctx context.Context, id string) (*offload.Info, error) {
	for {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ev, err := h.WaitEvent(wctx, offload.EventReady, id)
		cancel()
		if err == nil && ev.Offload != nil && ev.Offload.DID != "" {
			return ev.Offload, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		m, err := h.Status(ctx, id)
		if err != nil {
			return nil, err
		}
		if m.Offload != nil && m.Offload.Phase == offload.PhaseReady && m.Offload.DID != "" {
			return m.Offload, nil
		}
		if m.Offload != nil && m.Offload.Phase == offload.PhaseEnding {
			return nil, fmt.Errorf("offload host: offload %s is ending (%s)", id, m.Offload.EndReason)
		}
	}
}

// PeerName is the host's name for offload id's sandbox.
func PeerName(id string) string { return "offload-" + id }

// SendTask sends the task text to the ready offload's router. The text
// must be the one Offload declared: the broker's, the router's and the
// host's audit logs name the same SHA-256.
func (h *Host) SendTask(ctx context.Context, in *offload.Info, text string) (string, error) {
	sum := sha256.Sum256([]byte(text))
	if in.TaskSHA256 != "" && hex.EncodeToString(sum[:]) != in.TaskSHA256 {
		return "", errors.New("offload host: the text is not the task the offload was admitted for (SHA-256 differs)")
	}
	if in.DID == "" {
		return "", fmt.Errorf("offload host: offload %s is not ready", in.ID)
	}
	pol := h.br.Policy()
	next := &policy.Policy{Peers: []policy.Peer{h.brokerPeer()}}
	for _, pe := range pol.Peers {
		if pe.Name != BrokerPeer && pe.Name != PeerName(in.ID) {
			next.Peers = append(next.Peers, pe)
		}
	}
	next.Peers = append(next.Peers, policy.Peer{Name: PeerName(in.ID), DID: in.DID, Pairing: h.Pairing().Pairing, Sandbox: in.Sandbox, ExpiresAt: in.ExpiresAt})
	if err := h.br.SetPolicy(next); err != nil {
		return "", err
	}
	res, err := h.br.Send(ctx, bridge.SendRequest{To: PeerName(in.ID), Text: text})
	if err != nil {
		return "", err
	}
	return res.ID, nil
}

// Result waits for the offload agent's next message and returns its
// text.
func (h *Host) Result(ctx context.Context, id string) (bridge.Message, error) {
	name := PeerName(id)
	for {
		h.mu.Lock()
		if q := h.queues[name]; len(q) > 0 {
			m := q[0]
			h.queues[name] = q[1:]
			h.mu.Unlock()
			return m, nil
		}
		ch := h.changed
		h.mu.Unlock()
		select {
		case <-ctx.Done():
			return bridge.Message{}, fmt.Errorf("offload host: no answer from offload %s: %w", id, ctx.Err())
		case <-ch:
		}
	}
}

func (h *Host) record(ctx context.Context, rec audit.Record) {
	if _, err := h.audit.Append(ctx, rec); err != nil {
		h.o.Logger.Warn("offload host: audit entry not written", "err", err)
	}
}

func seedFile(path string) (ed25519.PrivateKey, error) {
	seed, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		seed = make([]byte, ed25519.SeedSize)
		if _, err := rand.Read(seed); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, seed, 0o600); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%s holds %d bytes, want %d", path, len(seed), ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

func containsStr(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
