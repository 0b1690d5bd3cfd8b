package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/kars-io/kars/internal/mesh/wire"
)

// Inbound is a frame the relay delivered. A frame that does not parse
// comes with Err set and Frame nil: the caller decides what that is (a
// security event, for the router) and acks its id if it has one.
type Inbound struct {
	Frame *wire.Frame
	Raw   []byte
	Err   error
	ID    string // the envelope id, even when the frame did not parse
}

// Conn is a relay connection that survives disconnects: it reconnects
// with backoff, re-sends every frame the relay has not confirmed as
// stored (the relay deduplicates by id), and heartbeats every 30 s.
// Frames the relay delivers arrive on Recv and stay queued at the relay
// until Ack. Its methods are safe for concurrent use.
type Conn struct {
	c      *Client
	recv   chan Inbound
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	ws      *websocket.Conn
	up      chan struct{} // closed while connected
	pending map[string]*outbound
	order   []string
	acked   map[string]bool // recently acked ids, to drop redeliveries
	ackedQ  []string
	err     error
}

type outbound struct {
	raw    []byte
	stored chan error
}

// Errors from Send.
var (
	ErrClosed = errors.New("mesh relay: connection closed")
)

// Dial connects to the relay and keeps the connection up until Close.
// It returns once the first connection is established.
func (c *Client) Dial(ctx context.Context) (*Conn, error) {
	cctx, cancel := context.WithCancel(context.Background())
	cn := &Conn{c: c, recv: make(chan Inbound, 1024), ctx: cctx, cancel: cancel, done: make(chan struct{}),
		up: make(chan struct{}), pending: map[string]*outbound{}, acked: map[string]bool{}}
	ws, err := cn.connect(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	go cn.run(ws)
	return cn, nil
}

func (cn *Conn) connect(ctx context.Context) (*websocket.Conn, error) {
	ws, _, err := websocket.Dial(ctx, cn.c.Relay, &websocket.DialOptions{HTTPClient: cn.c.HTTP})
	if err != nil {
		return nil, fmt.Errorf("mesh relay: dialing %s: %w", cn.c.Relay, err)
	}
	ws.SetReadLimit(wire.MaxFrameBytes)
	f := wire.ConnectFrame(cn.c.ID, cn.c.now())
	f.Receipts = !cn.c.NoReceipts
	b, _ := f.Marshal()
	if err := ws.Write(ctx, websocket.MessageText, b); err != nil {
		ws.CloseNow()
		return nil, fmt.Errorf("mesh relay: connect frame: %w", err)
	}
	return ws, nil
}

// run owns the connection: reads until it fails, then reconnects.
func (cn *Conn) run(ws *websocket.Conn) {
	defer close(cn.done)
	backoff := 100 * time.Millisecond
	for {
		cn.attach(ws)
		err := cn.readLoop(ws)
		cn.detach(ws, err)
		if cn.ctx.Err() != nil {
			return
		}
		for {
			select {
			case <-cn.ctx.Done():
				return
			case <-time.After(backoff):
			}
			dctx, cancel := context.WithTimeout(cn.ctx, 10*time.Second)
			var derr error
			ws, derr = cn.connect(dctx)
			cancel()
			if derr == nil {
				backoff = 100 * time.Millisecond
				break
			}
			backoff = min(backoff*2, 10*time.Second)
		}
	}
}

// attach makes ws current and re-sends unconfirmed frames, in order.
func (cn *Conn) attach(ws *websocket.Conn) {
	cn.mu.Lock()
	cn.ws = ws
	close(cn.up)
	resend := make([][]byte, 0, len(cn.order))
	for _, id := range cn.order {
		if p := cn.pending[id]; p != nil {
			resend = append(resend, p.raw)
		}
	}
	cn.mu.Unlock()
	for _, b := range resend {
		cn.write(ws, b)
	}
	go cn.heartbeat(ws)
}

func (cn *Conn) detach(ws *websocket.Conn, err error) {
	ws.CloseNow()
	cn.mu.Lock()
	if cn.ws == ws {
		cn.ws = nil
		cn.up = make(chan struct{})
		cn.err = err
	}
	cn.mu.Unlock()
}

// heartbeat sends the §12.4 heartbeat frame every 30 s and checks the
// relay is still there with a WebSocket ping: a relay that vanished
// without closing (a partition, a killed host) would otherwise leave
// the client waiting on a dead socket for as long as TCP takes to tell.
func (cn *Conn) heartbeat(ws *websocket.Conn) {
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-cn.ctx.Done():
			return
		case <-t.C:
			b, _ := json.Marshal(wire.Frame{V: wire.Version, Type: wire.TypeHeartbeat, From: cn.c.ID.DID(), TS: cn.c.now().UTC().Format(time.RFC3339Nano)})
			if cn.write(ws, b) != nil {
				return
			}
			ctx, cancel := context.WithTimeout(cn.ctx, 10*time.Second)
			err := ws.Ping(ctx)
			cancel()
			if err != nil {
				ws.CloseNow() // the read loop ends and the connection is re-made
				return
			}
		}
	}
}

// heartbeatInterval is how often a connection heartbeats (§12.4).
const heartbeatInterval = 30 * time.Second

func (cn *Conn) write(ws *websocket.Conn, b []byte) error {
	ctx, cancel := context.WithTimeout(cn.ctx, 10*time.Second)
	defer cancel()
	return ws.Write(ctx, websocket.MessageText, b)
}

func (cn *Conn) readLoop(ws *websocket.Conn) error {
	for {
		_, raw, err := ws.Read(cn.ctx)
		if err != nil {
			return err
		}
		f, err := wire.Parse(raw)
		if err != nil {
			in := Inbound{Raw: raw, Err: err}
			if r, rerr := wire.ParseRouting(raw); rerr == nil {
				if r.Type == wire.TypeAck || r.Type == wire.TypeError {
					continue // the relay's own frames: nothing to hand on
				}
				in.ID = r.ID
			}
			select {
			case cn.recv <- in:
			case <-cn.ctx.Done():
				return cn.ctx.Err()
			}
			continue
		}
		switch f.Type {
		case wire.TypeAck:
			if f.Status == "stored" {
				cn.confirm(f.ID, nil)
			}
		case wire.TypeError:
			if f.ID != "" {
				cn.confirm(f.ID, fmt.Errorf("mesh relay refused %s: %s", f.ID, f.Detail))
			}
		default:
			if f.ID != "" && cn.wasAcked(f.ID) {
				cn.Ack(f.ID) // a redelivery after a lost ack
				continue
			}
			select {
			case cn.recv <- Inbound{Frame: f, Raw: raw, ID: f.ID}:
			case <-cn.ctx.Done():
				return cn.ctx.Err()
			}
		}
	}
}

func (cn *Conn) confirm(id string, err error) {
	cn.mu.Lock()
	p := cn.pending[id]
	delete(cn.pending, id)
	if p != nil {
		for i, o := range cn.order {
			if o == id {
				cn.order = append(cn.order[:i], cn.order[i+1:]...)
				break
			}
		}
	}
	cn.mu.Unlock()
	if p != nil {
		p.stored <- err
	}
}

// Send hands f to the relay and waits until the relay reports it stored
// durably (or refuses it). If the connection drops first, the frame is
// re-sent after reconnecting; Send keeps waiting until ctx ends.
func (cn *Conn) Send(ctx context.Context, f *wire.Frame) error {
	if f.ID == "" {
		return fmt.Errorf("mesh relay: frame needs an id")
	}
	raw, err := f.Marshal()
	if err != nil {
		return err
	}
	if cn.c.NoReceipts {
		if err := cn.WaitConnected(ctx); err != nil {
			return err
		}
		cn.mu.Lock()
		ws := cn.ws
		cn.mu.Unlock()
		if ws == nil {
			return fmt.Errorf("mesh relay: not connected")
		}
		return cn.write(ws, raw)
	}
	p := &outbound{raw: raw, stored: make(chan error, 1)}
	cn.mu.Lock()
	if _, dup := cn.pending[f.ID]; dup {
		cn.mu.Unlock()
		return fmt.Errorf("mesh relay: frame %s already in flight", f.ID)
	}
	cn.pending[f.ID] = p
	cn.order = append(cn.order, f.ID)
	ws := cn.ws
	cn.mu.Unlock()
	if ws != nil {
		cn.write(ws, raw) // on failure the reconnect re-sends it
	}
	select {
	case err := <-p.stored:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-cn.ctx.Done():
		return ErrClosed
	}
}

// Recv delivers inbound frames.
func (cn *Conn) Recv() <-chan Inbound { return cn.recv }

// Ack tells the relay to delete a delivered frame. Ack only after the
// frame's effect is safe (e.g. the ratchet state is persisted).
func (cn *Conn) Ack(id string) error {
	cn.mu.Lock()
	if !cn.acked[id] {
		cn.acked[id] = true
		cn.ackedQ = append(cn.ackedQ, id)
		if len(cn.ackedQ) > 4096 {
			delete(cn.acked, cn.ackedQ[0])
			cn.ackedQ = cn.ackedQ[1:]
		}
	}
	ws := cn.ws
	cn.mu.Unlock()
	if ws == nil {
		return nil // the relay redelivers after reconnect and we ack again
	}
	b, _ := json.Marshal(wire.Frame{V: wire.Version, Type: wire.TypeAck, ID: id})
	return cn.write(ws, b)
}

func (cn *Conn) wasAcked(id string) bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.acked[id]
}

// WaitConnected blocks until the connection is up.
func (cn *Conn) WaitConnected(ctx context.Context) error {
	cn.mu.Lock()
	up := cn.up
	cn.mu.Unlock()
	select {
	case <-up:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close sends a disconnect frame and stops reconnecting.
func (cn *Conn) Close() error {
	cn.mu.Lock()
	ws := cn.ws
	cn.mu.Unlock()
	if ws != nil {
		b, _ := json.Marshal(wire.Frame{V: wire.Version, Type: wire.TypeDisconnect, From: cn.c.ID.DID()})
		cn.write(ws, b)
		ws.Close(websocket.StatusNormalClosure, "bye")
	}
	cn.cancel()
	<-cn.done
	return nil
}
