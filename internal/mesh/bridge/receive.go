package bridge

import (
	"cmp"
	"context"
	"crypto/rand"
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

// grantTTL is how long an accepted KNOCK lets the peer start a session.
const grantTTL = 10 * time.Minute

// expiryGrace tolerates clock skew between the two ends of a session.
const expiryGrace = time.Minute

// handle processes one inbound frame and acknowledges it to the relay
// once whatever it caused is durable. Frames are handled one at a time,
// in the relay's order.
func (b *Bridge) handle(ctx context.Context, cn *client.Conn, in client.Inbound) {
	if in.Err != nil || in.Frame == nil {
		b.securityEvent(ctx, policy.Peer{}, "", "malformed", fmt.Sprintf("a frame that does not parse: %v", in.Err), false)
		if in.ID != "" {
			cn.Ack(in.ID)
		}
		return
	}
	f := in.Frame
	if f.To == b.self.DID() {
		switch f.Type {
		case wire.TypeKnock:
			b.onKnock(ctx, cn, in.Raw, f)
		case wire.TypeKnockAccept, wire.TypeKnockReject:
			b.onKnockAnswer(ctx, in.Raw, f)
		case wire.TypeMessage:
			if !b.onMessage(ctx, f) {
				return // not on record yet: the relay keeps it
			}
		}
	}
	if f.ID != "" {
		cn.Ack(f.ID)
	}
}

// auditDurably writes rec, retrying while the audit log fails: an inbound
// message waits at the relay rather than be delivered off the record or
// dropped. It gives up only when ctx ends.
func (b *Bridge) auditDurably(ctx context.Context, rec audit.Record) error {
	wait := 100 * time.Millisecond
	for {
		err := b.o.Gov.Audit(ctx, rec)
		if err == nil {
			return nil
		}
		b.log.Error("mesh: audit append failed; holding inbound frames until it recovers", "action", rec.Action, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// securityEvent records what looks like an attack or a broken peer: an
// audit entry (decision deny, rule kars-mesh-security), the
// kars_router_mesh_security_events_total metric and, when penalize is
// set, a trust penalty for the sender (written through before it
// returns).
func (b *Bridge) securityEvent(ctx context.Context, peer policy.Peer, did, kind, reason string, penalize bool) {
	b.metrics.security.WithLabelValues(kind).Inc()
	name := peer.Name
	if name == "" {
		name = policy.UnpairedPeer
	}
	attrs := map[string]string{"op": "security_event", "kind": kind}
	if did != "" {
		attrs["peer_did"] = did
	}
	if penalize && did != "" {
		if score, err := b.o.Trust.PenalizeViolation(did); err != nil {
			b.log.Error("mesh: trust penalty not recorded", "peer", did, "err", err)
		} else {
			attrs["trust_score"] = fmt.Sprint(score)
		}
	}
	b.log.Warn("mesh security event", "kind", kind, "peer", name, "did", did, "reason", reason)
	b.auditDurably(ctx, audit.Record{Action: "mesh:receive:" + name, Decision: "deny", Rule: policy.RuleSecurity,
		Reason: "security_event: " + kind + ": " + reason, Attrs: attrs})
}

// refuseInbound records an inbound frame the bridge will not let through
// for a reason that is not an attack (no pairing, trust too low, the
// graph, an expired session).
func (b *Bridge) refuseInbound(ctx context.Context, peer policy.Peer, did, op string, r policy.Refusal) {
	name := peer.Name
	if name == "" {
		name = policy.UnpairedPeer
	}
	b.metrics.messages.WithLabelValues("receive", "deny").Inc()
	b.auditDurably(ctx, audit.Record{Action: "mesh:receive:" + name, Decision: "deny", Rule: r.Rule, Reason: r.Reason,
		Attrs: map[string]string{"op": op, "peer_did": did}})
}

// onMessage handles a message frame; it reports false when the frame
// must stay at the relay (ctx ended before it was on record).
func (b *Bridge) onMessage(ctx context.Context, f *wire.Frame) bool {
	start := b.o.Now()
	peer, ok := b.Policy().ByDID(f.From)
	if !ok {
		b.refuseInbound(ctx, policy.Peer{}, f.From, "mesh_receive", policy.Refusal{Rule: policy.RulePairing, Reason: "no active pairing names " + f.From})
		return true
	}
	if r := b.admit(peer); r.Refused() {
		b.refuseInbound(ctx, peer, f.From, "mesh_receive", r)
		return true
	}
	var peerKey []byte
	if f.X3DH != nil {
		// The registry's key for the sender authenticates the session
		// it starts (session.Accept checks the DID names it).
		k, err := b.peerKey(ctx, peer)
		if err != nil {
			b.refuseInbound(ctx, peer, f.From, "mesh_receive", policy.Refusal{Rule: policy.RuleSession, Reason: "the sender's key could not be looked up: " + err.Error()})
			return true
		}
		peerKey = k
	}
	pt, kind, err := b.open(f, peerKey)
	switch {
	case kind == "duplicate":
		return true
	case kind == "expired":
		b.refuseInbound(ctx, peer, f.From, "mesh_receive", policy.Refusal{Rule: policy.RuleSession, Reason: err.Error()})
		return true
	case err != nil:
		b.securityEvent(ctx, peer, f.From, kind, err.Error(), true)
		return true
	}
	env := openEnvelope(pt)
	clear(pt)
	action := "mesh:receive:" + peer.Name
	d := b.o.Gov.Decide(action)
	verdict := d.Verdict.String()
	rec := audit.Record{Action: action, Decision: verdict, Rule: d.Rule, Reason: d.Reason, PayloadSHA256: payloadHash(env.Text),
		Latency: b.o.Now().Sub(start), Attrs: map[string]string{"op": "mesh_receive", "peer_did": f.From, "id": f.ID}}
	if env.InReplyTo != "" {
		rec.Attrs["in_reply_to"] = env.InReplyTo
	}
	if err := b.auditDurably(ctx, rec); err != nil {
		// The session has moved on, so a redelivery would read as a
		// duplicate: this message is lost with the context.
		return false
	}
	b.metrics.messages.WithLabelValues("receive", verdict).Inc()
	if d.Verdict != governance.Allow {
		return true
	}
	b.o.Trust.RecordSuccess(f.From)
	m := Message{ID: f.ID, From: peer.Name, FromDID: f.From, Text: env.Text, InReplyTo: env.InReplyTo, ReceivedAt: b.o.Now().UTC()}
	return b.deliver(ctx, m)
}

// open decrypts f with the peer's session, or starts the session f
// initiates when a KNOCK from the peer was accepted. kind classifies a
// failure: duplicate (a redelivery of a frame already opened), expired,
// no_grant_expired, decrypt, no_session or unsolicited_session.
func (b *Bridge) open(f *wire.Frame, peerKey []byte) (pt []byte, kind string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.o.Now()
	ps := b.sessions[f.From]
	if ps != nil && ps.seen(f.ID) {
		return nil, "duplicate", nil
	}
	var openErr error
	if ps != nil && now.After(ps.expires.Add(expiryGrace)) {
		ps.s.Close()
		delete(b.sessions, f.From)
		b.appendLocked(record{T: "end", Peer: f.From})
		ps = nil
		openErr = errors.New("the session expired; the sender must KNOCK again")
		if f.X3DH == nil {
			return nil, "expired", openErr
		}
	}
	if ps != nil {
		if pt, openErr = ps.s.Open(f); openErr == nil {
			ps.remember(f.ID)
			t := b.appendLocked(sessionRecord(f.From, ps))
			b.mu.Unlock()
			err := b.jl.Wait(t)
			b.mu.Lock()
			return pt, "", err
		}
	}
	if f.X3DH == nil {
		if ps == nil {
			return nil, "no_session", errors.New("a message outside any session: it cannot be decrypted")
		}
		return nil, "decrypt", fmt.Errorf("the message does not decrypt under the session: %v", openErr)
	}
	until, granted := b.grants[f.From]
	if !granted || now.After(until) {
		if ps != nil {
			return nil, "decrypt", fmt.Errorf("the message does not decrypt under the session and no KNOCK allows a new one: %v", openErr)
		}
		return nil, "unsolicited_session", errors.New("a session was started without an accepted KNOCK")
	}
	s, pt, err := session.Accept(rand.Reader, b.keys, f, peerKey)
	if err != nil {
		return nil, "decrypt", fmt.Errorf("the session's first message does not decrypt: %v", err)
	}
	if ps != nil {
		ps.s.Close()
	}
	nps := &peerSession{s: s, expires: now.Add(b.o.SessionTTL)}
	nps.remember(f.ID)
	b.sessions[f.From] = nps
	delete(b.grants, f.From) // one KNOCK, one session
	b.appendLocked(b.prekeysRecord())
	t := b.appendLocked(sessionRecord(f.From, nps))
	b.metrics.sessions.Set(float64(len(b.sessions)))
	b.maybeCompactLocked()
	b.mu.Unlock()
	err = b.jl.Wait(t)
	b.mu.Lock()
	return pt, "", err
}

// deliver hands m to a Send waiting for it, or to the inbox (durably);
// when the inbox is full it waits, which keeps later frames at the relay.
func (b *Bridge) deliver(ctx context.Context, m Message) bool {
	if m.InReplyTo != "" {
		b.mu.Lock()
		ch, ok := b.awaiting[m.InReplyTo]
		b.mu.Unlock()
		if ok {
			select {
			case ch <- m:
				return true
			default:
			}
		}
	}
	for b.inbox.len() >= MaxInbox {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
	b.mu.Lock()
	t := b.appendLocked(record{T: "inbox", Msg: &m})
	b.mu.Unlock()
	if err := b.jl.Wait(t); err != nil {
		b.log.Error("mesh: inbox not persisted; the message stays at the relay", "err", err)
		return false
	}
	b.inbox.add(m)
	return true
}

// Take removes up to n messages from the inbox, waiting up to wait for
// one, and records that they were handed to the agent.
func (b *Bridge) Take(ctx context.Context, n int, wait time.Duration) []Message {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	ms := b.inbox.take(wctx, n)
	if len(ms) == 0 {
		return nil
	}
	b.mu.Lock()
	var t uint64
	for _, m := range ms {
		t = b.appendLocked(record{T: "taken", ID: m.ID})
	}
	b.maybeCompactLocked()
	b.mu.Unlock()
	if err := b.jl.Wait(t); err != nil {
		b.inbox.putBack(ms)
		return nil
	}
	return ms
}

// onKnock answers a peer's KNOCK (§10.1): accepted only from a paired,
// admitted peer whose frame is signed by its registered key and whom the
// policy lets the agent hear from (mesh:receive:<peer>). Each answer is
// audited and signed.
func (b *Bridge) onKnock(ctx context.Context, cn *client.Conn, raw []byte, f *wire.Frame) {
	start := b.o.Now()
	peer, ok := b.Policy().ByDID(f.From)
	reject := func(reason string) {
		b.metrics.knocks.WithLabelValues("in", "rejected").Inc()
		b.answerKnock(cn, f, false, reason)
	}
	if !ok {
		reason := "not paired"
		if b.o.Explain != nil {
			reason = cmp.Or(b.o.Explain(f.From), reason)
		}
		b.refuseInbound(ctx, policy.Peer{}, f.From, "mesh_knock", policy.Refusal{Rule: policy.RulePairing, Reason: "KNOCK from " + f.From + ", which no active pairing names: " + reason})
		reject(reason)
		return
	}
	key, err := b.peerKey(ctx, peer)
	if err != nil {
		b.refuseInbound(ctx, peer, f.From, "mesh_knock", policy.Refusal{Rule: policy.RuleKnock, Reason: "the KNOCK's sender key could not be looked up: " + err.Error()})
		reject("identity unknown to this router's registry")
		return
	}
	if err := wire.VerifyFrame(raw, key); err != nil {
		b.securityEvent(ctx, peer, f.From, "bad_signature", "a KNOCK whose signature does not verify", true)
		return
	}
	if r := b.admit(peer); r.Refused() {
		b.refuseInbound(ctx, peer, f.From, "mesh_knock", r)
		reject(r.Reason)
		return
	}
	action := "mesh:receive:" + peer.Name
	d := b.o.Gov.Decide(action)
	rec := audit.Record{Action: action, Decision: d.Verdict.String(), Rule: d.Rule, Reason: d.Reason, Latency: b.o.Now().Sub(start),
		Attrs: map[string]string{"op": "mesh_knock", "peer_did": f.From, "id": f.ID}}
	if d.Verdict != governance.Allow {
		b.auditDurably(ctx, rec)
		reject("the policy does not let this agent hear from " + b.o.Self[0])
		return
	}
	b.mu.Lock()
	b.grants[f.From] = b.o.Now().Add(grantTTL)
	t := b.appendLocked(record{T: "grant", Peer: f.From, Expires: b.grants[f.From]})
	b.mu.Unlock()
	if err := b.jl.Wait(t); err != nil {
		reject("the router could not record the KNOCK")
		return
	}
	if b.auditDurably(ctx, rec) != nil {
		return
	}
	b.metrics.knocks.WithLabelValues("in", "accepted").Inc()
	b.answerKnock(cn, f, true, "")
}

// answerKnock sends a signed knock_accept or knock_reject in the
// background: the relay's receipt arrives on the connection this loop
// reads.
func (b *Bridge) answerKnock(cn *client.Conn, knock *wire.Frame, accept bool, reason string) {
	a := &wire.Frame{V: wire.Version, From: b.self.DID(), To: knock.From, ID: newID("k_"),
		TS: b.o.Now().UTC().Format(time.RFC3339Nano), KnockID: knock.ID}
	if accept {
		a.Type = wire.TypeKnockAccept
		a.Conditions = &wire.Conditions{TTLSeconds: int(b.o.SessionTTL / time.Second), AllowedActions: []string{"message"}}
	} else {
		a.Type = wire.TypeKnockReject
		a.Reason = reason
	}
	if err := wire.SignFrame(a, b.priv); err != nil {
		b.log.Error("mesh: signing a KNOCK answer", "err", err)
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := cn.Send(ctx, a); err != nil {
			b.log.Warn("mesh: KNOCK answer not stored by the relay", "peer", knock.From, "err", err)
		}
	}()
}

// onKnockAnswer passes a verified answer to the KNOCK waiting for it.
func (b *Bridge) onKnockAnswer(ctx context.Context, raw []byte, f *wire.Frame) {
	b.mu.Lock()
	w, waiting := b.knocks[f.KnockID]
	b.mu.Unlock()
	if !waiting || w.did != f.From {
		return // an answer to nothing we wait for (late, or not from whom we knocked)
	}
	peer, ok := b.Policy().ByDID(f.From)
	if !ok {
		return
	}
	key, err := b.peerKey(ctx, peer)
	if err != nil {
		return
	}
	if err := wire.VerifyFrame(raw, key); err != nil {
		b.securityEvent(ctx, peer, f.From, "bad_signature", "a KNOCK answer whose signature does not verify", true)
		return
	}
	a := knockAnswer{accepted: f.Type == wire.TypeKnockAccept, reason: f.Reason, conditions: f.Conditions}
	select {
	case w.ch <- a:
	default:
	}
}
