// Package relay is the AgentMesh relay (Wire Protocol 1.0 §12): agents
// connect over WebSocket at /ws, prove their identity in the first
// frame, and exchange ciphertext frames the relay stores durably and
// forwards — live when the recipient is connected, on reconnect when
// not — until the recipient acks them or 72 hours pass.
//
// The relay never holds a key that could open a message: it routes by
// the from/to/id envelope fields and treats everything else as opaque.
package relay

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/ratelimit"
)

// Defaults (§12.3, §12.4).
const (
	DefaultTTL        = 72 * time.Hour
	HeartbeatInterval = 30 * time.Second
	OfflineAfter      = 90 * time.Second
	connectTimeout    = 10 * time.Second
	writeTimeout      = 10 * time.Second
	deliverBatch      = 256
)

// Close codes the toolkit's relay uses, kept for its clients.
const (
	closeNotConnect websocket.StatusCode = 4001
	closeAuth       websocket.StatusCode = 4003
	closeIdle       websocket.StatusCode = 4004
	closeProof      websocket.StatusCode = 4005
)

// Directory tells the relay agents' registered keys and hears about
// their presence; the registry's Store is one.
type Directory interface {
	PublicKey(did string) (ed25519.PublicKey, bool)
	Seen(did string, t time.Time)
}

// Options configure a relay.
type Options struct {
	// Directory resolves keys for spec-shaped connect proofs and
	// records presence. With RequireRegistered, agents it does not know
	// cannot connect.
	Directory         Directory
	RequireRegistered bool
	// TTL is how long an unacknowledged frame is kept (72 h when zero).
	TTL time.Duration
	// SendRate bounds frames per second from one agent (200/s, burst
	// 400 when zero).
	SendRate ratelimit.Limit
	// IdleTimeout closes a connection that sent nothing (OfflineAfter
	// when zero).
	IdleTimeout time.Duration
	Now         func() time.Time
	Logger      *slog.Logger
	// Remote, when set, carries frames for agents of federated meshes.
	Remote Remote
}

// Relay serves /ws. Create it with New; Close stops its sweeper.
type Relay struct {
	inbox  *Inbox
	opt    Options
	replay wire.ReplayGuard
	clock  ratelimit.Clock

	mu     sync.Mutex
	conns  map[string]*conn
	closed bool

	stop chan struct{}
	done chan struct{}

	routed, stored, delivered, refused atomic.Int64
}

// New makes a relay over inbox and starts its TTL sweeper.
func New(inbox *Inbox, opt Options) *Relay {
	if opt.TTL == 0 {
		opt.TTL = DefaultTTL
	}
	if opt.SendRate.Unlimited() {
		opt.SendRate = ratelimit.Limit{Events: 200, Per: time.Second, Burst: 400}
	}
	if opt.IdleTimeout == 0 {
		opt.IdleTimeout = OfflineAfter
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Relay{inbox: inbox, opt: opt, clock: ratelimit.NewClock(), conns: map[string]*conn{}, stop: make(chan struct{}), done: make(chan struct{})}
	go r.sweep()
	return r
}

// Close stops the sweeper and closes every connection.
func (r *Relay) Close() {
	close(r.stop)
	<-r.done
	r.mu.Lock()
	r.closed = true // connections still proving themselves close on arrival
	cs := make([]*conn, 0, len(r.conns))
	for _, c := range r.conns {
		cs = append(cs, c)
	}
	r.mu.Unlock()
	for _, c := range cs {
		c.ws.Close(websocket.StatusGoingAway, "relay shutting down")
	}
}

func (r *Relay) sweep() {
	defer close(r.done)
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			if n := r.inbox.Expire(r.opt.Now().Add(-r.opt.TTL)); n > 0 {
				r.opt.Logger.Info("expired undelivered frames", "count", n, "ttl", r.opt.TTL)
			}
		}
	}
}

// conn is one connected agent.
type conn struct {
	did      string
	pub      ed25519.PublicKey
	ws       *websocket.Conn
	notify   chan struct{}    // new frames queued for this agent
	ctrl     chan *wire.Frame // relay's own frames: receipts, errors
	receipt  chan receiptJob
	bucket   *ratelimit.Bucket
	wantRcp  bool
	lastSeen time.Time // when presence was last reported (readLoop only)
	ctx      context.Context
	cancel   context.CancelFunc
}

type receiptJob struct {
	ticket uint64
	id     string
}

// ServeHTTP upgrades GET /ws and serves /health.
func (r *Relay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	switch req.URL.Path {
	case "/ws":
		r.serveWS(w, req)
	case "/health":
		r.mu.Lock()
		n := len(r.conns)
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"status": "healthy", "service": "kars-mesh-relay", "connected_agents": n,
			"stats": map[string]int64{"messages_routed": r.routed.Load(), "messages_stored": r.stored.Load(), "messages_delivered": r.delivered.Load(), "frames_refused": r.refused.Load()},
		})
	default:
		http.NotFound(w, req)
	}
}

func (r *Relay) serveWS(w http.ResponseWriter, req *http.Request) {
	ws, err := websocket.Accept(w, req, nil)
	if err != nil {
		return
	}
	ws.SetReadLimit(wire.MaxFrameBytes)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	first, pub, err := r.readConnect(ctx, ws)
	if err != nil {
		return
	}
	c := &conn{did: first.From, pub: pub, ws: ws, notify: make(chan struct{}, 1), ctrl: make(chan *wire.Frame, 64), receipt: make(chan receiptJob, 1024),
		bucket: ratelimit.NewBucket(r.opt.SendRate), wantRcp: first.Receipts, ctx: ctx, cancel: cancel}

	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		ws.Close(websocket.StatusGoingAway, "relay shutting down")
		return
	}
	old := r.conns[c.did]
	r.conns[c.did] = c
	r.mu.Unlock()
	if old != nil {
		// A second connection for the same agent replaces the first; a
		// normal close keeps the old client from reconnecting over it.
		old.ws.Close(websocket.StatusNormalClosure, "session_replaced")
	}
	r.seen(c.did)
	r.opt.Logger.Debug("agent connected", "did", c.did)

	go r.writer(c)
	go r.receipts(c)
	c.kick()
	r.readLoop(c)

	cancel()
	r.mu.Lock()
	if r.conns[c.did] == c {
		delete(r.conns, c.did)
	}
	r.mu.Unlock()
	ws.CloseNow()
}

// readConnect reads and checks the first frame: a connect whose proof
// verifies under the agent's key (§12.2, §13.1).
func (r *Relay) readConnect(ctx context.Context, ws *websocket.Conn) (*wire.Frame, ed25519.PublicKey, error) {
	rctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	_, raw, err := ws.Read(rctx)
	if err != nil {
		ws.Close(closeNotConnect, "no connect frame")
		return nil, nil, err
	}
	refuse := func(code websocket.StatusCode, detail string) (*wire.Frame, ed25519.PublicKey, error) {
		r.refused.Add(1)
		wctx, c := context.WithTimeout(ctx, writeTimeout)
		defer c()
		b, _ := json.Marshal(wire.Frame{V: wire.Version, Type: wire.TypeError, Detail: detail})
		ws.Write(wctx, websocket.MessageText, b)
		// A close reason is at most 123 bytes (RFC 6455 §5.5); the error
		// frame above carries the whole detail.
		reason := detail
		if len(reason) > 120 {
			reason = reason[:120]
		}
		ws.Close(code, reason)
		return nil, nil, errors.New(detail)
	}
	f, err := wire.Parse(raw)
	if err != nil || f.Type != wire.TypeConnect {
		return refuse(closeNotConnect, "first frame must be 'connect'")
	}
	a, pub, err := wire.ConnectProof(f)
	if err != nil {
		return refuse(closeProof, "DID proof failed: "+err.Error())
	}
	var known ed25519.PublicKey
	var registered bool
	if r.opt.Directory != nil {
		known, registered = r.opt.Directory.PublicKey(f.From)
	}
	switch {
	case pub == nil && !registered:
		return refuse(closeProof, "DID proof failed: no public_key in the frame and the agent is not registered")
	case pub == nil:
		pub = known
	case registered && !ed25519.PublicKey(pub).Equal(known):
		return refuse(closeProof, "DID proof failed: public_key is not the registered key")
	}
	if r.opt.RequireRegistered && !registered {
		return refuse(closeAuth, "agent is not registered with this mesh's registry")
	}
	now := r.opt.Now()
	if err := a.Verify(pub, now); err != nil {
		return refuse(closeProof, "DID proof failed: "+err.Error())
	}
	if err := r.replay.Use(a, now); err != nil {
		return refuse(closeProof, "DID proof failed: "+err.Error())
	}
	// Address the agent by its canonical did:mesh: name whichever form
	// it connected with, so mail finds it.
	f.From = identity.MeshDID(pub)
	return f, pub, nil
}

func (r *Relay) readLoop(c *conn) {
	// One timer, reset per frame, rather than a context per read: the
	// read path runs for every frame the relay sees.
	var idle atomic.Bool
	timer := time.AfterFunc(r.opt.IdleTimeout, func() {
		idle.Store(true)
		c.ws.Close(closeIdle, "no frame for "+r.opt.IdleTimeout.String())
	})
	defer timer.Stop()
	// Frames are read into one reused buffer; only a routed frame, which
	// the inbox keeps, gets its own copy.
	var buf bytes.Buffer
	for {
		_, rd, err := c.ws.Reader(c.ctx)
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(rd)
		}
		if err != nil || idle.Load() {
			return
		}
		raw := buf.Bytes()
		timer.Reset(r.opt.IdleTimeout)
		if now := r.opt.Now(); now.Sub(c.lastSeen) >= time.Second {
			c.lastSeen = now
			r.seen(c.did)
		}
		f, err := wire.ParseRouting(raw)
		if err != nil {
			r.errorTo(c, "", err.Error())
			continue
		}
		switch {
		case wire.Routed(f.Type):
			r.route(c, f, bytes.Clone(raw))
		case f.Type == wire.TypeAck:
			r.inbox.Ack(c.did, f.ID)
		case f.Type == wire.TypeHeartbeat:
		case f.Type == wire.TypeDisconnect:
			c.ws.Close(websocket.StatusNormalClosure, "disconnect")
			return
		default:
			r.errorTo(c, f.ID, "frame type '"+f.Type+"' is not handled by the relay")
		}
	}
}

// route stores a frame for its recipient and wakes the recipient's
// connection. The frame is forwarded byte for byte as the sender wrote
// it; the relay only checks that it claims the sender's own DID.
func (r *Relay) route(c *conn, f *wire.Routing, raw []byte) {
	// from == the connected DID is the common case; anything else must
	// be the other DID form of the same key.
	if f.From != c.did && identity.CheckDID(f.From, c.pub) != nil {
		r.errorTo(c, f.ID, "from does not match the connected agent")
		return
	}
	if ok, _ := c.bucket.Allow(r.clock.Now()); !ok {
		r.errorTo(c, f.ID, "rate limit exceeded")
		return
	}
	to, ok := r.recipient(f.To)
	link := false
	if !ok && r.opt.Remote != nil {
		to, link = r.opt.Remote.Lookup(f.To)
		ok = link
	}
	if !ok {
		// Mail for agents nobody registered would only fill the disk.
		r.errorTo(c, f.ID, "recipient "+f.To+" is not registered")
		return
	}
	ticket, dup, err := r.inbox.Put(to, c.did, f.ID, raw, r.opt.Now())
	if errors.Is(err, ErrInboxFull) || errors.Is(err, ErrRelayFull) {
		r.errorTo(c, f.ID, err.Error())
		return
	}
	r.routed.Add(1)
	if !dup {
		r.stored.Add(1)
		if link {
			r.opt.Remote.Kick(to)
		}
		r.mu.Lock()
		rc := r.conns[to]
		r.mu.Unlock()
		if rc != nil {
			rc.kick()
		}
	}
	if c.wantRcp {
		select {
		case c.receipt <- receiptJob{ticket: ticket, id: f.ID}:
		case <-c.ctx.Done():
		}
	}
}

// recipient maps to to the did:mesh: name its connection uses. With
// RequireRegistered, unknown recipients are refused.
func (r *Relay) recipient(to string) (string, bool) {
	if r.opt.Directory == nil {
		return to, true
	}
	if strings.HasPrefix(to, identity.PrefixMesh) {
		if !r.opt.RequireRegistered {
			return to, true
		}
		_, ok := r.opt.Directory.PublicKey(to)
		return to, ok
	}
	pub, ok := r.opt.Directory.PublicKey(to)
	if !ok {
		return to, !r.opt.RequireRegistered
	}
	return identity.MeshDID(pub), true
}

// receipts tells the sender, in order, once each of its frames is
// durable (the kars "receipts" extension).
func (r *Relay) receipts(c *conn) {
	for {
		select {
		case <-c.ctx.Done():
			return
		case j := <-c.receipt:
			if j.ticket != 0 {
				if err := r.inbox.Wait(j.ticket); err != nil {
					r.opt.Logger.Error("journal write failed", "err", err)
					c.cancel()
					return
				}
			}
			r.send(c, &wire.Frame{V: wire.Version, Type: wire.TypeAck, ID: j.id, Status: "stored"})
		}
	}
}

func (r *Relay) errorTo(c *conn, id, detail string) {
	r.refused.Add(1)
	r.send(c, &wire.Frame{V: wire.Version, Type: wire.TypeError, ID: id, Detail: detail})
}

func (r *Relay) send(c *conn, f *wire.Frame) {
	select {
	case c.ctrl <- f:
	case <-c.ctx.Done():
	}
}

func (c *conn) kick() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// writer is the connection's only writer: relay frames, then queued
// mail from the cursor on. A fresh connection starts its cursor at zero,
// so whatever was sent but not acked before is delivered again.
func (r *Relay) writer(c *conn) {
	defer c.cancel()
	var cursor uint64
	// A write that stalls for writeTimeout (a peer that stopped
	// reading) closes the connection; one timer serves every write.
	stall := time.AfterFunc(time.Hour, func() { c.ws.CloseNow() })
	stall.Stop()
	defer stall.Stop()
	write := func(b []byte) bool {
		stall.Reset(writeTimeout)
		err := c.ws.Write(c.ctx, websocket.MessageText, b)
		stall.Stop()
		return err == nil
	}
	for {
		select {
		case <-c.ctx.Done():
			return
		case f := <-c.ctrl:
			b, _ := json.Marshal(f)
			if !write(b) {
				return
			}
		case <-c.notify:
			for {
				batch := r.inbox.After(c.did, cursor, deliverBatch)
				for _, e := range batch {
					if !write(e.frame) {
						return
					}
					cursor = e.seq
					r.delivered.Add(1)
				}
				if len(batch) < deliverBatch {
					break
				}
			}
		}
	}
}

func (r *Relay) seen(did string) {
	if r.opt.Directory != nil {
		r.opt.Directory.Seen(did, r.opt.Now())
	}
}

// Connected reports whether did has a live connection.
func (r *Relay) Connected(did string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns[did] != nil
}
