package federation

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/registry"
	"github.com/kars-io/kars/internal/mesh/relay"
	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/pairing"
)

// Link message types.
const (
	msgHello     = "hello"    // name: the sender's federation name
	msgAnnounce  = "announce" // agents: the sender's global agents, all of them
	msgFrame     = "frame"    // id, frame: a frame for one of the receiver's agents
	msgStored    = "stored"   // id: the receiver stored the frame durably
	msgRefused   = "refused"  // id, detail: the receiver will not take it
	msgBundle    = "bundle"   // rid, did: hand out a prekey bundle of a global agent
	msgRedeem    = "redeem"   // rid, redemption: redeem a token this receiver issued
	msgResult    = "result"   // rid, status, detail, bundle | result
	maxLinkBytes = 2 << 20
)

// message is one link message; only the fields its type uses are set.
type message struct {
	T          string               `json:"t"`
	Name       string               `json:"name,omitempty"`
	Agents     []announced          `json:"agents,omitempty"`
	ID         string               `json:"id,omitempty"`
	Frame      json.RawMessage      `json:"frame,omitempty"`
	Detail     string               `json:"detail,omitempty"`
	RID        uint64               `json:"rid,omitempty"`
	DID        string               `json:"did,omitempty"`
	Status     int                  `json:"status,omitempty"`
	Bundle     *wire.BundleResponse `json:"bundle,omitempty"`
	Redemption *pairing.Redemption  `json:"redemption,omitempty"`
	Result     *pairing.Result      `json:"result,omitempty"`
}

type announced struct {
	DID       string `json:"did"`
	PublicKey string `json:"public_key"`
}

// link is one live connection to a peer.
type link struct {
	f      *Federation
	peer   string
	ws     *websocket.Conn
	out    chan *message
	notify chan struct{}
	ctx    context.Context

	waitMu  chanMutex
	waiting map[uint64]chan *message
}

// chanMutex is a one-slot channel used as a mutex (so a select can wait
// on it with the context).
type chanMutex chan struct{}

func (m chanMutex) lock()   { m <- struct{}{} }
func (m chanMutex) unlock() { <-m }

func (l *link) kick() {
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

// send queues m for the link's writer.
func (l *link) send(m *message) bool {
	select {
	case l.out <- m:
		return true
	case <-l.ctx.Done():
		return false
	}
}

// request sends m with a fresh rid and waits for its result.
func (l *link) request(ctx context.Context, m *message) (*message, error) {
	m.RID = l.f.rid.Add(1)
	ch := make(chan *message, 1)
	l.waitMu.lock()
	l.waiting[m.RID] = ch
	l.waitMu.unlock()
	defer func() {
		l.waitMu.lock()
		delete(l.waiting, m.RID)
		l.waitMu.unlock()
	}()
	if !l.send(m) {
		return nil, fmt.Errorf("federation link to %s closed", l.peer)
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	select {
	case res := <-ch:
		return res, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("federation peer %s did not answer: %w", l.peer, ctx.Err())
	case <-l.ctx.Done():
		return nil, fmt.Errorf("federation link to %s closed", l.peer)
	}
}

// serve runs one link until it fails: a writer (announcements, queued
// frames, replies) and this reader. A newer link to the same peer
// replaces an older one.
func (f *Federation) serve(parent context.Context, peer string, ws *websocket.Conn) {
	ws.SetReadLimit(maxLinkBytes)
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	l := &link{f: f, peer: peer, ws: ws, out: make(chan *message, 256), notify: make(chan struct{}, 1), ctx: ctx,
		waitMu: make(chanMutex, 1), waiting: map[uint64]chan *message{}}
	f.mu.Lock()
	old := f.links[peer]
	f.links[peer] = l
	f.mu.Unlock()
	if old != nil {
		old.ws.Close(websocket.StatusNormalClosure, "replaced by a newer link")
	}
	f.o.Logger.Info("federation link up", "peer", peer)
	defer func() {
		f.mu.Lock()
		if f.links[peer] == l {
			delete(f.links, peer)
			for did, a := range f.remote {
				if a.link == peer {
					delete(f.remote, did)
				}
			}
		}
		f.mu.Unlock()
		ws.CloseNow()
		f.o.Logger.Info("federation link down", "peer", peer)
	}()
	go l.write()
	l.kick()
	hello := false
	for {
		_, raw, err := ws.Read(ctx)
		if err != nil {
			return
		}
		var m message
		if err := json.Unmarshal(raw, &m); err != nil {
			f.o.Logger.Warn("federation: an unreadable link message; closing the link", "peer", peer, "err", err)
			ws.Close(websocket.StatusPolicyViolation, "unreadable message")
			return
		}
		if !hello {
			// The name a peer claims must be the one its certificate
			// carries (checked by TLS on both sides before this).
			if m.T != msgHello || m.Name != peer {
				ws.Close(websocket.StatusPolicyViolation, "the first message must be hello with the certificate's name")
				return
			}
			hello = true
			continue
		}
		l.handle(&m)
	}
}

// write is the link's only writer.
func (l *link) write() {
	defer l.ws.CloseNow()
	var cursor uint64
	announce := time.NewTicker(l.f.o.AnnounceEvery)
	defer announce.Stop()
	put := func(m *message) bool {
		b, err := json.Marshal(m)
		if err != nil {
			return true
		}
		ctx, cancel := context.WithTimeout(l.ctx, 30*time.Second)
		defer cancel()
		return l.ws.Write(ctx, websocket.MessageText, b) == nil
	}
	sendAnnounce := func() bool { return put(&message{T: msgAnnounce, Agents: l.f.globalAgents()}) }
	if !put(&message{T: msgHello, Name: l.f.o.Name}) || !sendAnnounce() {
		return
	}
	for {
		select {
		case <-l.ctx.Done():
			return
		case m := <-l.out:
			if !put(m) {
				return
			}
		case <-announce.C:
			if !sendAnnounce() {
				return
			}
		case <-l.notify:
			for {
				batch := l.f.relay.Outbound(queueOf(l.peer), cursor, 64)
				for _, o := range batch {
					if !put(&message{T: msgFrame, ID: o.ID, Frame: o.Frame}) {
						return
					}
					cursor = o.Seq
				}
				if len(batch) < 64 {
					break
				}
			}
		}
	}
}

// globalAgents lists this mesh's agents published for federation.
func (f *Federation) globalAgents() []announced {
	as := f.o.Store.Discover(GlobalCapability, 100_000)
	out := make([]announced, 0, len(as))
	for _, a := range as {
		out = append(out, announced{DID: a.DID, PublicKey: wire.B64(a.PublicKey)})
	}
	return out
}

// isGlobal reports whether did is a local agent published for
// federation.
func (f *Federation) isGlobal(did string) bool {
	a, ok := f.o.Store.Get(did)
	if !ok {
		return false
	}
	for _, c := range a.Capabilities {
		if c == GlobalCapability {
			return true
		}
	}
	return false
}

// handle processes one message from the peer.
func (l *link) handle(m *message) {
	f := l.f
	switch m.T {
	case msgAnnounce:
		set := map[string]remoteAgent{}
		for _, a := range m.Agents {
			pub, err := wire.DecodeB64(a.PublicKey)
			// An announced DID must name its key; a peer cannot claim an
			// agent it cannot prove the key of.
			if err != nil || len(pub) != ed25519.PublicKeySize || identity.CheckDID(a.DID, pub) != nil {
				continue
			}
			set[a.DID] = remoteAgent{link: l.peer, pub: pub}
		}
		f.mu.Lock()
		for did, a := range f.remote {
			if a.link == l.peer {
				delete(f.remote, did)
			}
		}
		for did, a := range set {
			if _, local := f.o.Store.Get(did); !local {
				f.remote[did] = a
			}
		}
		f.mu.Unlock()
	case msgFrame:
		l.accept(m)
	case msgStored, msgRefused:
		if m.T == msgRefused {
			f.o.Logger.Warn("federation peer refused a frame", "peer", l.peer, "id", m.ID, "detail", m.Detail)
		}
		f.relay.Forwarded(queueOf(l.peer), m.ID)
	case msgBundle:
		res := &message{T: msgResult, RID: m.RID, Status: http.StatusOK}
		if !f.isGlobal(m.DID) {
			res.Status, res.Detail = http.StatusNotFound, "no global agent "+m.DID
		} else if b, err := f.o.Store.TakeBundle(m.DID); err != nil {
			res.Status, res.Detail = http.StatusNotFound, err.Error()
		} else {
			res.Bundle = b
		}
		l.send(res)
	case msgRedeem:
		go l.redeem(m)
	case msgResult:
		l.waitMu.lock()
		ch := l.waiting[m.RID]
		l.waitMu.unlock()
		if ch != nil {
			select {
			case ch <- m:
			default:
			}
		}
	}
}

// accept stores a frame from the peer for a local global agent. The
// sender must be an agent the peer announced: a peer vouches for its own
// agents only.
func (l *link) accept(m *message) {
	f := l.f
	refuse := func(detail string) { l.send(&message{T: msgRefused, ID: m.ID, Detail: detail}) }
	r, err := wire.ParseRouting(m.Frame)
	if err != nil || !wire.Routed(r.Type) || r.ID != m.ID {
		refuse("not a routed frame")
		return
	}
	f.mu.Lock()
	a, known := f.remote[r.From]
	f.mu.Unlock()
	if !known || a.link != l.peer {
		refuse("the sender " + r.From + " is not an agent this peer announced")
		return
	}
	if !f.isGlobal(r.To) {
		refuse("the recipient " + r.To + " is not a global agent of this mesh")
		return
	}
	err = f.relay.AcceptRemote(r.To, r.From, r.ID, []byte(m.Frame))
	switch {
	case err == nil:
		l.send(&message{T: msgStored, ID: m.ID})
	case errors.Is(err, relay.ErrInboxFull), errors.Is(err, relay.ErrRelayFull):
		// Not stored and not refused: the frame stays queued at the
		// peer and comes again with the next link.
		f.o.Logger.Warn("federation: inbox full; the peer keeps the frame", "to", r.To, "err", err)
	default:
		refuse(err.Error())
	}
}

func (l *link) redeem(m *message) {
	res := &message{T: msgResult, RID: m.RID}
	if l.f.o.Redeem == nil || m.Redemption == nil {
		res.Status, res.Detail = http.StatusForbidden, "this mesh redeems no tokens"
		l.send(res)
		return
	}
	r, err := l.f.o.Redeem(l.ctx, *m.Redemption)
	res.Status, res.Detail, res.Result = StatusOf(err), "", r
	if err != nil {
		res.Detail = err.Error()
	}
	l.send(res)
}

// StatusOf maps a redemption error to the HTTP status kars-mesh answers
// with (POST /v1/pairings/redeem).
func StatusOf(err error) int {
	switch {
	case err == nil:
		return http.StatusOK
	case errors.Is(err, pairing.ErrMalformed), errors.Is(err, pairing.ErrProof):
		return http.StatusBadRequest
	case errors.Is(err, pairing.ErrSignature):
		return http.StatusForbidden
	case errors.Is(err, pairing.ErrUnknownToken), errors.Is(err, registry.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, pairing.ErrAlreadyRedeemed):
		return http.StatusConflict
	case errors.Is(err, pairing.ErrExpired), errors.Is(err, pairing.ErrRevoked):
		return http.StatusGone
	}
	return http.StatusInternalServerError
}
