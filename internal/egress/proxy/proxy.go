// Package proxy is the agent's forward proxy inside kars-router: the only
// path from the agent to any host but its model.
//
// It takes connections two ways:
//
//   - explicit: the agent's HTTP_PROXY/HTTPS_PROXY point at the router's
//     agent port, and clients send CONNECT host:port (RFC 9110 §9.3.6) or
//     plain-HTTP requests in absolute form (RFC 9112 §3.2.2) — Proxy.ServeHTTP;
//   - transparent: the egress guard redirects every other TCP connection of
//     the agent's UID to a router port; the router reads the original
//     destination (SO_ORIGINAL_DST) and the name the client asks for — the
//     TLS server_name, the HTTP Host header, or, for other protocols, the
//     name the agent resolved to that address through the router's DNS —
//     Proxy.ServeTransparent. Clients that ignore proxy variables (Node's
//     fetch) are governed the same way.
//
// Every connection and every plain-HTTP request is decided by the Decider
// (the router: blocklist, approvals, allowlist, learn, governance, audit)
// on the host name and port before anything is sent upstream. The router
// then resolves the name itself and connects to it — never to the address
// the agent dialled — so a client that sends an allowed SNI to another
// address reaches the allowed host, not the other address. Answers in
// refused ranges (private, loopback, link-local, CGNAT, metadata) are never
// dialled. Tunnels that an approval allowed are closed when it expires.
package proxy

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/kars-io/kars/internal/egress/resolve"
)

// Via says how a connection reached the proxy.
type Via string

// The ways in.
const (
	ViaConnect         Via = "connect"
	ViaHTTP            Via = "http"
	ViaTransparentTLS  Via = "transparent-tls"
	ViaTransparentHTTP Via = "transparent-http"
	ViaTransparentTCP  Via = "transparent-tcp"
)

// Request is one destination the agent asked for.
type Request struct {
	Host string
	Port uint16
	Via  Via
	// OrigDst is where a transparently redirected connection was headed.
	OrigDst netip.AddrPort
	// Method and Path describe a plain-HTTP request (path without query).
	Method, Path string
}

// Verdict is the Decider's answer.
type Verdict struct {
	Allow bool
	// Status is the HTTP status for a refused explicit request: 403 for
	// policy, 429 for rate limits, 503 when the decision could not be
	// recorded.
	Status int
	// Rule and Message explain the verdict to the agent.
	Rule, Message string
	// Expires is when an allowed tunnel must be closed (an approval's
	// expiry); zero for none.
	Expires time.Time
}

// Decider decides destinations. Decide records its decision (audit, learn)
// before returning, so that nothing is sent upstream that is not on
// record; Still re-checks an open tunnel without recording; Refused
// records a refusal that came after an allow (the name resolved only to
// refused addresses).
type Decider interface {
	Decide(ctx context.Context, req Request) Verdict
	Still(req Request, now time.Time) Verdict
	Refused(ctx context.Context, req Request, reason string)
}

// Proxy serves the agent's egress. Set the exported fields, then use it;
// call Run for expiry and Close at shutdown.
type Proxy struct {
	Decider  Decider
	Resolver *resolve.Resolver
	// Dial connects to an address; nil means a net.Dialer with a 10 s
	// timeout.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	Log  *slog.Logger
	// PeekTimeout bounds how long a transparent connection may take to
	// send its first bytes (ClientHello, request head); zero means 10 s.
	PeekTimeout time.Duration
	// MaxTunnels bounds the open tunnels (each holds two sockets and two
	// goroutines); more are refused. Zero means DefaultMaxTunnels.
	MaxTunnels int
	// Broker, when set, terminates TLS to the hosts credentials are bound
	// to and inspects every request the proxy can read (terminate.go).
	Broker Broker
	// UpstreamRoots verify the hosts whose TLS the proxy terminates; nil
	// means the system's roots.
	UpstreamRoots *x509.CertPool

	once         sync.Once
	transport    *http.Transport
	tlsTransport *http.Transport
	mu           sync.Mutex
	tunnels      map[*tunnel]struct{}
	closed       bool
}

// tunnel is an open relay between the agent and an upstream.
type tunnel struct {
	req      Request
	a, b     net.Conn
	expires  time.Time
	shutOnce sync.Once
}

func (t *tunnel) shut() {
	t.shutOnce.Do(func() {
		t.a.Close()
		if t.b != nil { // nil for a connection the proxy terminates
			t.b.Close()
		}
	})
}

func (p *Proxy) init() {
	p.once.Do(func() {
		if p.Dial == nil {
			p.Dial = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
		}
		if p.Log == nil {
			p.Log = slog.Default()
		}
		if p.PeekTimeout == 0 {
			p.PeekTimeout = 10 * time.Second
		}
		if p.MaxTunnels == 0 {
			p.MaxTunnels = DefaultMaxTunnels
		}
		p.tunnels = map[*tunnel]struct{}{}
		p.transport = &http.Transport{
			Proxy:                 nil,
			DialContext:           p.dialDecided,
			MaxIdleConnsPerHost:   8,
			IdleConnTimeout:       30 * time.Second,
			ResponseHeaderTimeout: 5 * time.Minute,
			// The agent speaks HTTP/1.1 to the proxy; keep the upstream
			// leg the same so requests map one to one.
			ForceAttemptHTTP2: false,
		}
		p.tlsTransport = p.newTLSTransport()
	})
}

// dialTarget carries the decided destination of a plain-HTTP request to
// the transport's dialer, which dials nothing else.
type dialTarget struct{ host string }

type dialTargetKey struct{}

func (p *Proxy) dialDecided(ctx context.Context, network, addr string) (net.Conn, error) {
	t, ok := ctx.Value(dialTargetKey{}).(dialTarget)
	host, port, err := net.SplitHostPort(addr)
	if !ok || err != nil || host != t.host {
		return nil, fmt.Errorf("kars egress: refusing to dial %s, which was not decided", addr)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, err
	}
	return p.dialHost(ctx, host, uint16(n))
}

// dialHost resolves host and connects to its first reachable allowed
// address on port.
func (p *Proxy) dialHost(ctx context.Context, host string, port uint16) (net.Conn, error) {
	res, err := p.Resolver.Resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	if err := res.Err(host); err != nil {
		return nil, err
	}
	var errs []error
	for _, a := range res.Allowed {
		c, err := p.Dial(ctx, "tcp4", netip.AddrPortFrom(a, port).String())
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("connect %s:%d: %w", host, port, errors.Join(errs...))
}

// DefaultMaxTunnels is the default bound on open tunnels: the agent cannot
// exhaust the router's descriptors through its proxy.
const DefaultMaxTunnels = 1024

// decide decides a new tunnel: refused beyond MaxTunnels, else by the
// Decider.
func (p *Proxy) decide(ctx context.Context, req Request) Verdict {
	p.mu.Lock()
	n := len(p.tunnels)
	p.mu.Unlock()
	if n >= p.MaxTunnels {
		return Verdict{Status: http.StatusServiceUnavailable, Rule: "kars-max-tunnels",
			Message: fmt.Sprintf("kars egress proxy: %d tunnels are open, the most the router keeps; close some first", n)}
	}
	return p.Decider.Decide(ctx, req)
}

// connect decides req and, when allowed, dials it. On refusal it returns
// the verdict with Allow false; a dial failure is an error.
func (p *Proxy) connect(ctx context.Context, req Request) (net.Conn, Verdict, error) {
	v := p.decide(ctx, req)
	if !v.Allow {
		return nil, v, nil
	}
	up, err := p.dialHost(ctx, req.Host, req.Port)
	var refused *resolve.RefusedError
	if errors.As(err, &refused) {
		p.Decider.Refused(ctx, req, refused.Error())
		return nil, Verdict{Status: http.StatusForbidden, Rule: "refused-range", Message: refused.Error()}, nil
	}
	return up, v, err
}

// relay copies between the agent's connection and the upstream until both
// directions end, closing the tunnel when its grant expires (Run) or the
// proxy closes.
func (p *Proxy) relay(req Request, agent, up net.Conn, expires time.Time) {
	t := &tunnel{req: req, a: agent, b: up, expires: expires}
	if !p.track(t) {
		return
	}
	defer p.untrack(t)
	done := make(chan struct{}, 1)
	go func() {
		io.Copy(up, agent)
		closeWrite(up)
		done <- struct{}{}
	}()
	io.Copy(agent, up)
	closeWrite(agent)
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		c.Close()
	}
}

// Run closes tunnels whose grant has expired, checking every second,
// until ctx is done. A tunnel whose destination is still allowed by
// another rule (Decider.Still) stays open under that rule's expiry.
func (p *Proxy) Run(ctx context.Context) {
	p.init()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			p.Sweep(now, false)
		}
	}
}

// Sweep re-checks open tunnels at now: those past their expiry — or all,
// when all is set (the policy changed) — are decided again and closed
// unless still allowed.
func (p *Proxy) Sweep(now time.Time, all bool) {
	p.init()
	p.mu.Lock()
	var due []*tunnel
	for t := range p.tunnels {
		if all || (!t.expires.IsZero() && !now.Before(t.expires)) {
			due = append(due, t)
		}
	}
	p.mu.Unlock()
	for _, t := range due {
		v := p.Decider.Still(t.req, now)
		if v.Allow && (v.Expires.IsZero() || now.Before(v.Expires)) {
			p.mu.Lock()
			t.expires = v.Expires
			p.mu.Unlock()
			continue
		}
		p.Log.Info("egress tunnel closed: its grant ended", "host", t.req.Host, "port", t.req.Port, "rule", v.Rule, "reason", v.Message)
		t.shut()
	}
}

// Open returns the open tunnels' destinations.
func (p *Proxy) Open() []Request {
	p.init()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Request, 0, len(p.tunnels))
	for t := range p.tunnels {
		out = append(out, t.req)
	}
	return out
}

// Close closes every tunnel and refuses new ones.
func (p *Proxy) Close() {
	p.init()
	p.mu.Lock()
	p.closed = true
	ts := make([]*tunnel, 0, len(p.tunnels))
	for t := range p.tunnels {
		ts = append(ts, t)
	}
	p.mu.Unlock()
	for _, t := range ts {
		t.shut()
	}
	p.transport.CloseIdleConnections()
	p.tlsTransport.CloseIdleConnections()
}
