package upstreamhttp

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// conn is one HTTP/1.1 connection, plain or over TLS.
type conn struct {
	nc  net.Conn
	br  *bufio.Reader // while in use; nil while idle
	key string
	// idleSince is when the connection was last put in the idle pool.
	idleSince time.Time
}

// readBufSize is the read buffer of a connection in use, one per open
// stream. It holds chunk headers and response header lines (a longer line
// is read in pieces); a read into a larger slice bypasses it when it is
// empty, so bodies are read straight into their reader's buffer.
const readBufSize = 1 << 10

// readers and writers pool the buffers of connections in use: an idle
// connection holds none, and a request is written in one go, so the write
// buffer goes back as soon as it is flushed.
var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufSize) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// errNothingWritten marks a request that failed before any of it was sent,
// which makes sending it again on another connection safe.
var errNothingWritten = errors.New("upstreamhttp: the connection failed before the request was sent")

// roundTripH1 sends req over HTTP/1.1 on the caller's goroutine.
func (t *Transport) roundTripH1(req *http.Request, key string) (*http.Response, error) {
	ctx := req.Context()
	for {
		c, reused, err := t.getConn(ctx, req.URL, key)
		if err != nil {
			closeBody(req)
			return nil, err
		}
		resp, err := t.exchange(c, req)
		if err == nil {
			return resp, nil
		}
		// An idle connection the server closed in the meantime fails
		// before anything is sent; the request is sent on another one.
		// Once any of it was sent, the server may have acted on it, and a
		// model call is not idempotent: the error goes to the caller.
		if !reused || !errors.Is(err, errNothingWritten) || ctx.Err() != nil {
			return nil, err
		}
		if req, err = rewound(req); err != nil {
			return nil, err
		}
	}
}

// exchange writes req on c and reads the response header. The body is read
// by the caller, from c, through body.
func (t *Transport) exchange(c *conn, req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// Cancelling the request closes the connection, which ends any read
	// or write on it.
	stop := context.AfterFunc(ctx, func() { c.nc.Close() })
	fail := func(err error) (*http.Response, error) {
		stop()
		c.nc.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	cw := &countingWriter{w: c.nc}
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(cw)
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	writers.Put(bw)
	if err != nil {
		if cw.n == 0 {
			err = fmt.Errorf("%w: %w", errNothingWritten, err)
		}
		return fail(fmt.Errorf("upstreamhttp: writing the request to %s: %w", c.key, err))
	}
	if t.ResponseHeaderTimeout > 0 {
		c.nc.SetReadDeadline(time.Now().Add(t.ResponseHeaderTimeout))
	}
	c.br = readers.Get().(*bufio.Reader)
	c.br.Reset(c.nc)
	var resp *http.Response
	for {
		resp, err = http.ReadResponse(c.br, req)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				err = errHeaderTimeout
			}
			return fail(fmt.Errorf("upstreamhttp: reading the response from %s: %w", c.key, err))
		}
		// 1xx answers are interim (RFC 9110 §15.2): the final one follows.
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return fail(fmt.Errorf("upstreamhttp: %s switched protocols, which kars-router does not speak", c.key))
	}
	if t.ResponseHeaderTimeout > 0 {
		c.nc.SetReadDeadline(time.Time{})
	}
	b := &body{rc: resp.Body, c: c, t: t, ctx: ctx, stop: stop, keep: !resp.Close && !req.Close}
	if resp.Body == http.NoBody {
		b.release(true)
		return resp, nil
	}
	resp.Body = b
	return resp, nil
}

// body is a response body read straight from its connection. At its end the
// connection goes back to the idle pool; closed before its end, the
// connection is closed (what is left of the body may be long: a stream).
type body struct {
	rc       io.ReadCloser // net/http's body reader, over c.br
	c        *conn
	t        *Transport
	ctx      context.Context
	stop     func() bool // stops the cancellation hook
	keep     bool        // the response allows reusing the connection
	released atomic.Bool
}

var errBodyClosed = errors.New("upstreamhttp: read on a closed response body")

func (b *body) Read(p []byte) (int, error) {
	if b.released.Load() {
		// At the end, or closed: the connection may serve another
		// request by now, so it is not read again.
		return 0, errBodyClosed
	}
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.release(true)
	case err != nil:
		b.release(false)
		if b.ctx.Err() != nil {
			err = b.ctx.Err()
		}
	}
	return n, err
}

// Close implements io.Closer. It may be called while another goroutine
// reads; that read then fails.
func (b *body) Close() error {
	b.release(false)
	return nil
}

// release ends the body's use of its connection, once: back to the pool if
// the body was read to its end and the connection can serve another
// request, closed otherwise.
func (b *body) release(atEnd bool) {
	if !b.released.CompareAndSwap(false, true) {
		return
	}
	if b.stop() && atEnd && b.keep && b.c.br.Buffered() == 0 {
		b.t.putIdle(b.c)
		return
	}
	// A read may still be in progress (Close from another goroutine), so
	// the read buffer is left to the garbage collector.
	b.c.nc.Close()
}

// getConn returns an idle connection to key that is still open, or a new
// one, and whether it was reused.
func (t *Transport) getConn(ctx context.Context, u *url.URL, key string) (*conn, bool, error) {
	for {
		c := t.popIdle(key)
		if c == nil {
			break
		}
		if alive(c.nc) {
			return c, true, nil
		}
		c.nc.Close()
	}
	c, err := t.dialAside(ctx, u, key)
	return c, false, err
}

// dialCall is a dial made on a goroutine of its own.
type dialCall struct {
	mu        sync.Mutex
	done      chan struct{}
	c         *conn
	err       error
	finished  bool
	abandoned bool
}

// maxDialsPerHost bounds the dials in progress to one host. A burst of new
// streams then has at most this many dialing goroutines (and their stacks)
// at once, and does not flood the upstream with connection attempts.
const maxDialsPerHost = 16

// dialAside dials on a goroutine of its own, for two reasons. Dialing and
// a TLS handshake are deep calls: made on the caller's goroutine, which
// then holds a stream open for minutes, they would double its stack for
// the stream's life. And a dial outlives a caller that gives up: its
// connection goes to the pool for the next request, as net/http's does.
func (t *Transport) dialAside(ctx context.Context, u *url.URL, key string) (*conn, error) {
	slot := t.dialSlot(key)
	select {
	case slot <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	d := &dialCall{done: make(chan struct{})}
	dctx := context.WithoutCancel(ctx) // bounded by the dial and handshake timeouts
	go func() {
		defer func() { <-slot }()
		c, err := t.dial(dctx, u, key)
		d.mu.Lock()
		d.c, d.err, d.finished = c, err, true
		abandoned := d.abandoned
		d.mu.Unlock()
		close(d.done)
		if abandoned && err == nil {
			t.putIdle(c)
		}
	}()
	select {
	case <-d.done:
		return d.c, d.err
	case <-ctx.Done():
		d.mu.Lock()
		d.abandoned = true
		finished := d.finished
		d.mu.Unlock()
		if finished && d.err == nil {
			t.putIdle(d.c)
		}
		return nil, ctx.Err()
	}
}

// dialSlot returns the semaphore of key's dials.
func (t *Transport) dialSlot(key string) chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dials == nil {
		t.dials = map[string]chan struct{}{}
	}
	s, ok := t.dials[key]
	if !ok {
		s = make(chan struct{}, maxDialsPerHost)
		t.dials[key] = s
	}
	return s
}

// dial opens a new connection for key.
func (t *Transport) dial(ctx context.Context, u *url.URL, key string) (*conn, error) {
	addr := strings.TrimPrefix(key, u.Scheme+"://")
	if u.Scheme != "https" {
		nc, err := t.dialTCP(ctx, addr)
		if err != nil {
			return nil, err
		}
		return &conn{nc: nc, key: key}, nil
	}
	cfg := &tls.Config{}
	if t.TLSClientConfig != nil {
		cfg = t.TLSClientConfig.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = u.Hostname()
	}
	cfg.NextProtos = []string{"http/1.1"}
	tc, err := t.dialTLS(ctx, addr, cfg)
	if err != nil {
		return nil, err
	}
	return &conn{nc: tc, key: key}, nil
}

// putIdle keeps c for the next request to its host, without its read
// buffer.
func (t *Transport) putIdle(c *conn) {
	if c.br != nil {
		c.br.Reset(nil)
		readers.Put(c.br)
		c.br = nil
	}
	c.idleSince = time.Now()
	t.mu.Lock()
	if t.idle == nil {
		t.idle = map[string][]*conn{}
	}
	cs := t.idle[c.key]
	if len(cs) >= t.maxIdle() {
		t.mu.Unlock()
		c.nc.Close()
		return
	}
	t.idle[c.key] = append(cs, c)
	t.mu.Unlock()
}

// popIdle takes the most recently used idle connection to key, closing
// those idle for longer than IdleTimeout on the way. There is no
// goroutine sweeping the pool: a connection the server closes is noticed
// (alive) and dropped when its turn comes.
func (t *Transport) popIdle(key string) *conn {
	now := time.Now()
	t.mu.Lock()
	cs := t.idle[key]
	var stale []*conn
	i := 0
	for i < len(cs) && now.Sub(cs[i].idleSince) > t.idleTimeout() {
		i++
	}
	if i > 0 {
		stale = slices.Clone(cs[:i])
		cs = slices.Delete(cs, 0, i)
	}
	var c *conn
	if n := len(cs); n > 0 {
		c, cs[n-1] = cs[n-1], nil
		cs = cs[:n-1]
	}
	if len(cs) == 0 {
		delete(t.idle, key)
	} else {
		t.idle[key] = cs
	}
	t.mu.Unlock()
	for _, s := range stale {
		s.nc.Close()
	}
	return c
}

// countingWriter counts the bytes that reached the connection.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
