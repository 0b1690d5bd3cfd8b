package bridge

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/mesh/client"
	"github.com/kars-io/kars/internal/mesh/policy"
	"github.com/kars-io/kars/internal/mesh/session"
	"github.com/kars-io/kars/internal/mesh/wire"
)

// SendRequest is one message from the agent.
type SendRequest struct {
	To        string
	Text      string
	InReplyTo string
	// Await, when positive, waits that long for the peer's reply.
	Await time.Duration
}

// SendResult is what Send did.
type SendResult struct {
	ID    string   `json:"id"`
	To    string   `json:"to"`
	Reply *Message `json:"reply,omitempty"`
}

// RefusedError is a send the bridge or the policy refused; it has been
// audited.
type RefusedError struct {
	Rule, Reason string
	// Verdict is the governance verdict when governance refused
	// (deny, require_approval, rate_limited); empty for the bridge's
	// own gates.
	Verdict string
}

func (e *RefusedError) Error() string { return e.Reason }

// Unwrap lets callers test errors.Is(err, ErrRefused).
func (e *RefusedError) Unwrap() error { return ErrRefused }

func payloadHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// Send delivers the agent's text to the peer it names. The order is the
// security argument: the peer must be paired and admitted; governance
// decides mesh:send:<peer> and the decision is on record; a session
// exists (KNOCK first if not); the ratchet's new state is durable; only
// then does the ciphertext leave for the relay.
func (b *Bridge) Send(ctx context.Context, req SendRequest) (*SendResult, error) {
	start := b.o.Now()
	if len(req.Text) > MaxText {
		return nil, fmt.Errorf("the message is %d bytes, at most %d", len(req.Text), MaxText)
	}
	cn := b.conn.Load()
	pol := b.Policy()
	peer, ok := pol.ByName(req.To)
	action := "mesh:send:" + req.To
	rec := audit.Record{Action: action, PayloadSHA256: payloadHash(req.Text),
		Attrs: map[string]string{"op": "mesh_send"}}
	if _, bad := governance.CheckAction(action); bad != "" {
		return nil, fmt.Errorf("%q cannot name a peer: %s", req.To, bad)
	}
	refuse := func(rule, reason, verdict string) error {
		rec.Decision, rec.Rule, rec.Reason, rec.Latency = "deny", rule, reason, b.o.Now().Sub(start)
		if verdict != "" {
			rec.Decision = verdict
		}
		b.metrics.messages.WithLabelValues("send", rec.Decision).Inc()
		if err := b.o.Gov.Audit(ctx, rec); err != nil {
			return err
		}
		return &RefusedError{Rule: rule, Reason: reason, Verdict: verdict}
	}
	if !ok {
		return nil, refuse(policy.RulePairing, fmt.Sprintf("no active pairing names %q: pair the sandboxes first (kars pair)", req.To), "")
	}
	rec.Attrs["peer_did"] = peer.DID
	if r := b.admit(peer); r.Refused() {
		return nil, refuse(r.Rule, r.Reason, "")
	}
	d := b.o.Gov.Decide(action)
	if d.Verdict != governance.Allow {
		return nil, refuse(d.Rule, d.Reason, d.Verdict.String())
	}
	if cn == nil {
		return nil, ErrNotConnected
	}
	id := newID("m_")
	rec.Attrs["id"] = id
	rec.Decision, rec.Rule, rec.Reason, rec.Latency = "allow", d.Rule, d.Reason, b.o.Now().Sub(start)
	if err := b.o.Gov.Audit(ctx, rec); err != nil {
		return nil, err
	}
	b.metrics.messages.WithLabelValues("send", "allow").Inc()
	if err := b.establish(ctx, cn, peer); err != nil {
		// The decision stands, but nothing was sent: say so on record.
		rule, reason := policy.RuleKnock, err.Error()
		var re *RefusedError
		if errors.As(err, &re) {
			rule = re.Rule
		}
		rec.Decision, rec.Rule, rec.Reason, rec.Latency = "deny", rule, "not sent: "+reason, b.o.Now().Sub(start)
		rec.Attrs["op"] = "mesh_knock"
		if aerr := b.o.Gov.Audit(ctx, rec); aerr != nil {
			return nil, aerr
		}
		return nil, err
	}
	pt, _ := json.Marshal(envelope{Text: req.Text, InReplyTo: req.InReplyTo})
	var reply chan Message
	if req.Await > 0 {
		reply = make(chan Message, 1)
		b.mu.Lock()
		b.awaiting[id] = reply
		b.mu.Unlock()
		defer func() {
			b.mu.Lock()
			delete(b.awaiting, id)
			b.mu.Unlock()
		}()
	}
	f, err := b.seal(peer, pt, id)
	if err != nil {
		return nil, err
	}
	if err := cn.Send(ctx, f); err != nil {
		return nil, fmt.Errorf("the relay did not store the message: %w", err)
	}
	res := &SendResult{ID: id, To: peer.Name}
	if reply == nil {
		return res, nil
	}
	t := time.NewTimer(req.Await)
	defer t.Stop()
	select {
	case m := <-reply:
		res.Reply = &m
		return res, nil
	case <-t.C:
		return res, ErrNoReply
	case <-ctx.Done():
		return res, ctx.Err()
	}
}

// seal encrypts pt for peer under its session and makes the advanced
// ratchet durable before returning the frame: a crash after this point
// cannot reuse the message key.
func (b *Bridge) seal(peer policy.Peer, pt []byte, id string) (*wire.Frame, error) {
	b.mu.Lock()
	ps := b.sessions[peer.DID]
	if ps == nil {
		b.mu.Unlock()
		return nil, &RefusedError{Rule: policy.RuleSession, Reason: "the session with " + peer.Name + " ended (a revocation?)"}
	}
	f, err := ps.s.Seal(pt, id, b.o.Now())
	if err != nil {
		b.mu.Unlock()
		return nil, err
	}
	t := b.appendLocked(sessionRecord(peer.DID, ps))
	b.mu.Unlock()
	return f, b.jl.Wait(t)
}

// admit runs policy.Admit for peer with its current score.
func (b *Bridge) admit(peer policy.Peer) policy.Refusal {
	b.mu.Lock()
	g := b.pol.Graph
	b.mu.Unlock()
	return policy.Admit(peer, b.o.Trust.Score(peer.DID), int(b.threshold.Load()), g, b.o.Self, b.o.Now())
}

// establish makes sure a live session with peer exists: if none does, it
// sends a signed KNOCK (§10) and, once the peer accepts, runs X3DH
// against the peer's bundle. Concurrent sends to one peer share one
// KNOCK.
func (b *Bridge) establish(ctx context.Context, cn *client.Conn, peer policy.Peer) error {
	for {
		b.mu.Lock()
		if ps := b.sessions[peer.DID]; ps != nil && b.o.Now().Before(ps.expires) {
			b.mu.Unlock()
			return nil
		}
		if wait, ok := b.busy[peer.DID]; ok {
			b.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		done := make(chan struct{})
		b.busy[peer.DID] = done
		b.mu.Unlock()
		err := b.knockAndInitiate(ctx, cn, peer)
		b.mu.Lock()
		delete(b.busy, peer.DID)
		close(done)
		b.mu.Unlock()
		return err
	}
}

// knockWait is a KNOCK waiting for its answer from did.
type knockWait struct {
	did string
	ch  chan knockAnswer
}

// knockAnswer is a peer's verified answer to our KNOCK.
type knockAnswer struct {
	accepted   bool
	reason     string
	conditions *wire.Conditions
}

func (b *Bridge) knockAndInitiate(ctx context.Context, cn *client.Conn, peer policy.Peer) error {
	threshold := int(b.threshold.Load())
	knockID := newID("k_")
	f := &wire.Frame{V: wire.Version, Type: wire.TypeKnock, From: b.self.DID(), To: peer.DID, ID: knockID,
		TS: b.o.Now().UTC().Format(time.RFC3339Nano),
		Intent: &wire.Intent{Action: "mesh:session", Description: "kars agent " + b.o.Self[0] + " asks for a session",
			CapabilitiesRequired: peer.Capabilities, TrustMinimum: threshold}}
	if err := wire.SignFrame(f, b.priv); err != nil {
		return err
	}
	answer := make(chan knockAnswer, 1)
	b.mu.Lock()
	b.knocks[knockID] = knockWait{did: peer.DID, ch: answer}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.knocks, knockID)
		b.mu.Unlock()
	}()
	kctx, cancel := context.WithTimeout(ctx, b.o.KnockTimeout)
	defer cancel()
	b.metrics.knocks.WithLabelValues("out", "sent").Inc()
	if err := cn.Send(kctx, f); err != nil {
		return fmt.Errorf("KNOCK to %s not stored by the relay: %w", peer.Name, err)
	}
	var a knockAnswer
	select {
	case a = <-answer:
	case <-kctx.Done():
		b.metrics.knocks.WithLabelValues("out", "timeout").Inc()
		return &RefusedError{Rule: policy.RuleKnock, Reason: fmt.Sprintf("%s did not answer the KNOCK within %s (is its router running and paired with this one?)", peer.Name, b.o.KnockTimeout)}
	}
	if !a.accepted {
		b.metrics.knocks.WithLabelValues("out", "rejected").Inc()
		return &RefusedError{Rule: policy.RuleKnock, Reason: fmt.Sprintf("%s refused the KNOCK: %s", peer.Name, a.reason)}
	}
	b.metrics.knocks.WithLabelValues("out", "accepted").Inc()
	ttl := b.o.SessionTTL
	if a.conditions != nil && a.conditions.TTLSeconds > 0 {
		ttl = min(ttl, time.Duration(a.conditions.TTLSeconds)*time.Second)
	}
	bundle, err := b.clientFor(peer).FetchBundle(ctx, peer.DID)
	if err != nil {
		return fmt.Errorf("prekey bundle of %s: %w", peer.Name, err)
	}
	s, err := session.Initiate(rand.Reader, b.self, peer.DID, bundle)
	if err != nil {
		return fmt.Errorf("X3DH with %s: %w", peer.Name, err)
	}
	b.mu.Lock()
	if _, still := b.pol.ByDID(peer.DID); !still {
		// Revoked while the KNOCK was in flight.
		b.mu.Unlock()
		s.Close()
		return &RefusedError{Rule: policy.RulePairing, Reason: "the pairing with " + peer.Name + " was revoked while the KNOCK was in flight"}
	}
	if old := b.sessions[peer.DID]; old != nil {
		old.s.Close()
	}
	ps := &peerSession{s: s, expires: b.o.Now().Add(ttl), initiator: true}
	b.sessions[peer.DID] = ps
	t := b.appendLocked(sessionRecord(peer.DID, ps))
	b.metrics.sessions.Set(float64(len(b.sessions)))
	b.mu.Unlock()
	return b.jl.Wait(t)
}

// clientFor returns a registry client for peer: the router's own, or one
// for the peer's federated registry.
func (b *Bridge) clientFor(peer policy.Peer) *client.Client {
	if peer.Registry == "" || peer.Registry == b.o.Registry {
		return b.client
	}
	c := *b.client
	c.Registry = peer.Registry
	return &c
}

// peerKey returns a peer's Ed25519 key, from the registry that serves it
// (and checked against its DID), cached.
func (b *Bridge) peerKey(ctx context.Context, peer policy.Peer) (ed25519.PublicKey, error) {
	b.mu.Lock()
	k, ok := b.peerKeys[peer.DID]
	b.mu.Unlock()
	if ok {
		return k, nil
	}
	kctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	k, err := b.clientFor(peer).PublicKey(kctx, peer.DID)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.peerKeys[peer.DID] = k
	b.mu.Unlock()
	return k, nil
}
