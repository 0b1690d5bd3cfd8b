package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"
)

// OriginalDst returns where a redirected connection was headed. It is
// SO_ORIGINAL_DST on Linux; tests may replace it.
var OriginalDst = originalDst

// firstByteTimeout is how long a redirected client may stay silent before
// it is taken for a server-speaks-first protocol.
const firstByteTimeout = time.Second

// ServeTransparent serves connections the egress guard redirected, until
// ln is closed.
func (p *Proxy) ServeTransparent(ln net.Listener) error {
	p.init()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		go p.serveTransparent(c)
	}
}

func (p *Proxy) serveTransparent(c net.Conn) {
	orig, err := OriginalDst(c)
	if err != nil || !orig.IsValid() || orig.Addr().IsLoopback() || orig.Addr().IsUnspecified() {
		// Not redirected (a direct connection to this port) or
		// unknowable: there is no destination to decide.
		p.Log.Warn("transparent egress connection without an original destination", "remote", c.RemoteAddr().String(), "err", err)
		reset(c)
		return
	}
	// TLS and HTTP clients speak first, at once; SSH, SMTP and the like
	// wait for the server. A client silent for FirstByteTimeout is such a
	// protocol: decide it by the name the agent resolved.
	c.SetReadDeadline(time.Now().Add(firstByteTimeout))
	br := bufio.NewReaderSize(c, 4096)
	first, err := br.Peek(1)
	if err != nil {
		c.SetReadDeadline(time.Time{})
		p.serveTCP(c, br, orig, nil)
		return
	}
	c.SetReadDeadline(time.Now().Add(p.PeekTimeout))
	switch {
	case first[0] == recordHandshake:
		name, raw, err := ReadClientHello(br)
		c.SetReadDeadline(time.Time{})
		if err != nil {
			p.Log.Info("transparent egress: unreadable TLS ClientHello", "dst", orig.String(), "err", err)
			tlsAlert(c)
			return
		}
		if name == "" {
			p.serveTCP(c, br, orig, raw)
			return
		}
		host, _, err := ParseAuthority(name, orig.Port())
		if err != nil {
			p.Log.Info("transparent egress: unusable TLS server name", "dst", orig.String(), "sni", quote(name), "err", err)
			tlsAlert(c)
			return
		}
		req := Request{Host: host, Port: orig.Port(), Via: ViaTransparentTLS, OrigDst: orig}
		if p.Broker != nil {
			cert, err := p.Broker.Certificate(host, orig.Port())
			if err != nil {
				p.Log.Warn("transparent egress: a credential is bound to the host, but its TLS cannot be terminated", "host", host, "port", orig.Port(), "err", err)
				tlsAlert(c)
				return
			}
			if cert != nil {
				v := p.decide(context.Background(), req)
				if !v.Allow {
					tlsAlert(c)
					return
				}
				// The TLS server reads the ClientHello again.
				p.terminate(&readerConn{Conn: c, r: io.MultiReader(bytes.NewReader(raw), br)}, req, cert, v.Expires)
				return
			}
		}
		up, v, err := p.connect(context.Background(), req)
		if err != nil || !v.Allow {
			if err != nil {
				p.Log.Info("transparent egress: upstream unreachable", "host", host, "port", orig.Port(), "err", err)
			}
			tlsAlert(c)
			return
		}
		if _, err := up.Write(raw); err != nil {
			up.Close()
			c.Close()
			return
		}
		p.relay(req, &bufConn{Conn: c, r: br}, up, v.Expires)
	case looksLikeHTTP(br):
		c.SetReadDeadline(time.Time{})
		p.serveTransparentHTTP(&bufConn{Conn: c, r: br}, orig)
	default:
		c.SetReadDeadline(time.Time{})
		p.serveTCP(c, br, orig, nil)
	}
}

// serveTCP decides a connection that names no host by the names the
// agent resolved to its original address (resolve.Resolver.NamesFor),
// falling back to the address itself.
func (p *Proxy) serveTCP(c net.Conn, br *bufio.Reader, orig netip.AddrPort, sent []byte) {
	names := p.Resolver.NamesFor(orig.Addr())
	slices.Sort(names)
	if len(names) == 0 {
		names = []string{orig.Addr().Unmap().String()}
	}
	var up net.Conn
	var req Request
	var v Verdict
	for _, n := range names {
		req = Request{Host: n, Port: orig.Port(), Via: ViaTransparentTCP, OrigDst: orig}
		var err error
		up, v, err = p.connect(context.Background(), req)
		if err != nil {
			p.Log.Info("transparent egress: upstream unreachable", "host", n, "port", orig.Port(), "err", err)
			reset(c)
			return
		}
		if v.Allow {
			break
		}
	}
	if !v.Allow {
		if sent != nil {
			tlsAlert(c)
		} else {
			reset(c)
		}
		return
	}
	if len(sent) > 0 {
		if _, err := up.Write(sent); err != nil {
			up.Close()
			c.Close()
			return
		}
	}
	p.relay(req, &bufConn{Conn: c, r: br}, up, v.Expires)
}

// serveTransparentHTTP serves plain-HTTP requests on a redirected
// connection, deciding each one by its Host header and the original port.
func (p *Proxy) serveTransparentHTTP(c net.Conn, orig netip.AddrPort) {
	l := &oneConnListener{c: c, done: make(chan struct{})}
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          nil,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if IsProxyRequest(req) {
				// A proxy request sent to an address that is not the
				// proxy: serve it as if it had come in explicitly.
				p.ServeHTTP(w, req)
				return
			}
			host, _, err := ParseAuthority(req.Host, orig.Port())
			if err != nil {
				refuse(w, http.StatusBadRequest, "", "kars egress proxy: bad Host header "+quote(req.Host)+": "+err.Error())
				return
			}
			// The port is the one the client connected to, whatever the
			// Host header says.
			p.forward(w, req, Request{Host: host, Port: orig.Port(), Via: ViaTransparentHTTP, OrigDst: orig, Method: req.Method, Path: req.URL.Path})
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				l.finish()
			}
		},
	}
	go srv.Serve(l)
	<-l.done
	srv.Close()
}

// looksLikeHTTP reports whether the buffered bytes start with an HTTP/1
// request line's method and a space.
func looksLikeHTTP(br *bufio.Reader) bool {
	b, _ := br.Peek(8)
	for i, c := range b {
		if c == ' ' {
			return i > 0
		}
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return false
}

// tlsAlert ends a TLS connection before its handshake with a fatal
// access_denied alert (RFC 8446 §6.2), so that the client reports a
// refusal ("tlsv1 alert access denied") instead of a broken connection.
func tlsAlert(c net.Conn) {
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	c.Write([]byte{21, 3, 3, 0, 2, 2, 49})
	c.Close()
}

// reset ends a connection with a TCP reset, as the egress guard does.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// bufConn reads through the buffered reader that holds the peeked bytes.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) {
	if b.r.Buffered() > 0 {
		return b.r.Read(p)
	}
	return b.Conn.Read(p)
}

// readerConn reads through r: bytes already consumed, then the rest.
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c *readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the underlying connection.
func (b *bufConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return b.Conn.Close()
}

// oneConnListener hands one connection to an http.Server.
type oneConnListener struct {
	c        net.Conn
	mu       sync.Mutex
	accepted bool
	done     chan struct{}
	once     sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if !l.accepted {
		l.accepted = true
		l.mu.Unlock()
		return l.c, nil
	}
	l.mu.Unlock()
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) finish()        { l.once.Do(func() { close(l.done) }) }
func (l *oneConnListener) Close() error   { l.finish(); return nil }
func (l *oneConnListener) Addr() net.Addr { return l.c.LocalAddr() }

func itoa(p uint16) string { return strconv.Itoa(int(p)) }
