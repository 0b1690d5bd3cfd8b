package relay

import "errors"

// Remote routes frames for agents of federated meshes
// (internal/mesh/federation). For a recipient this relay's directory does
// not know, Lookup names the queue of the link that reaches it; the frame
// is stored there, durably, like any other, and Kick wakes the link.
type Remote interface {
	Lookup(did string) (queue string, ok bool)
	Kick(queue string)
}

// Outbound is a frame queued for a federation link.
type Outbound struct {
	Seq    uint64
	ID     string
	Sender string
	Frame  []byte
}

// Outbound returns up to max frames queued for queue with seq > after,
// in order: what a link sends next. A link restarts from zero after a
// reconnect, so the peer sees every frame it has not confirmed again
// (and its inbox drops the duplicates).
func (r *Relay) Outbound(queue string, after uint64, max int) []Outbound {
	es := r.inbox.After(queue, after, max)
	out := make([]Outbound, len(es))
	for i, e := range es {
		out[i] = Outbound{Seq: e.seq, ID: e.id, Sender: e.sender, Frame: e.frame}
	}
	return out
}

// Forwarded deletes a frame the peer mesh has stored: it is the peer's
// now.
func (r *Relay) Forwarded(queue, id string) { r.inbox.Ack(queue, id) }

// ErrNotLocal refuses a federated frame for an agent this relay does not
// serve.
var ErrNotLocal = errors.New("relay: the recipient is not an agent of this mesh")

// AcceptRemote stores a frame that arrived over a federation link for
// one of this relay's agents, wakes the agent, and returns once the frame
// is durable, so the link can tell the peer it may forget it. The peer
// mesh authenticated the sender; the caller checks that it vouches for
// it.
func (r *Relay) AcceptRemote(to, from, id string, frame []byte) error {
	rcpt, ok := r.recipient(to)
	if !ok {
		return ErrNotLocal
	}
	ticket, _, err := r.inbox.Put(rcpt, from, id, frame, r.opt.Now())
	if err != nil {
		return err
	}
	r.mu.Lock()
	rc := r.conns[rcpt]
	r.mu.Unlock()
	if rc != nil {
		rc.kick()
	}
	if ticket == 0 {
		return nil
	}
	return r.inbox.Wait(ticket)
}
