// Package upstreamhttp is the HTTP client transport kars-router calls model
// APIs with. It exists for memory: a router holds one upstream request open
// for every stream an agent has open, often a thousand at once, and
// net/http's Transport spends two goroutines (a read loop and a write loop,
// each with its stack) and two buffers on every HTTP/1.1 connection, and
// starts a TLS handshake for every request that finds no idle HTTP/2
// connection — a thousand at once when a burst of streams starts.
//
// Transport speaks HTTP/1.1 on the caller's goroutine: it writes the
// request with net/http's own serializer (Request.Write) and reads the
// answer with net/http's own parser (ReadResponse), so the wire format is
// the standard library's; only connection management is its own. A
// connection in use costs the net.Conn and one read buffer; an idle one
// only the net.Conn. HTTPS hosts are asked for HTTP/2 (ALPN) and served by
// a net/http Transport that dials one connection per host at a time
// (MaxConnsPerHost 1: a connection whose streams are all in use leaves the
// pool, and the next one is dialled then); hosts that answer HTTP/1.1 are
// remembered and served over TLS by the HTTP/1.1 path.
//
// It never uses a proxy from the environment (the router is the sandbox's
// egress), and asks for no compression on HTTP/1.1. It imports only the
// standard library.
package upstreamhttp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// Transport is an http.RoundTripper for http and https URLs. The zero
// value is ready to use with the defaults below.
type Transport struct {
	// DialTimeout bounds connecting (default 10s).
	DialTimeout time.Duration
	// KeepAlive is the TCP keep-alive period (default 30s).
	KeepAlive time.Duration
	// TLSHandshakeTimeout bounds a TLS handshake (default 10s).
	TLSHandshakeTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for the response header after
	// the request is written; 0 means no bound beyond the request's
	// context.
	ResponseHeaderTimeout time.Duration
	// IdleTimeout closes HTTP/1.1 and HTTP/2 connections idle this long
	// (default 90s).
	IdleTimeout time.Duration
	// MaxIdlePerHost bounds the idle HTTP/1.1 connections kept per host
	// (default 1024).
	MaxIdlePerHost int
	// TLSClientConfig is the TLS configuration for https URLs; nil means
	// the system roots (SSL_CERT_FILE and SSL_CERT_DIR are honoured).
	TLSClientConfig *tls.Config

	once sync.Once
	h2   *http.Transport

	mu      sync.Mutex
	idle    map[string][]*conn       // by key, most recently used last
	h1Hosts map[string]bool          // https hosts that chose HTTP/1.1
	dials   map[string]chan struct{} // by key: one token per dial in progress
}

func (t *Transport) dialTimeout() time.Duration { return orDefault(t.DialTimeout, 10*time.Second) }
func (t *Transport) keepAlive() time.Duration   { return orDefault(t.KeepAlive, 30*time.Second) }
func (t *Transport) tlsTimeout() time.Duration {
	return orDefault(t.TLSHandshakeTimeout, 10*time.Second)
}
func (t *Transport) idleTimeout() time.Duration { return orDefault(t.IdleTimeout, 90*time.Second) }

func (t *Transport) maxIdle() int {
	if t.MaxIdlePerHost > 0 {
		return t.MaxIdlePerHost
	}
	return 1024
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func (t *Transport) init() {
	t.once.Do(func() {
		t.h2 = &http.Transport{
			Proxy:                 nil,
			DialTLSContext:        t.dialH2,
			ForceAttemptHTTP2:     true,
			MaxConnsPerHost:       1,
			IdleConnTimeout:       t.idleTimeout(),
			ResponseHeaderTimeout: t.ResponseHeaderTimeout,
			// A stream may be quiet for minutes while a model thinks;
			// pings tell a dead connection from a slow answer.
			HTTP2: &http.HTTP2Config{SendPingTimeout: time.Minute, PingTimeout: 15 * time.Second},
		}
	})
}

// errNotH2 is what the HTTP/2 dialer returns for a host that negotiated
// HTTP/1.1; RoundTrip then serves the request over HTTP/1.1.
var errNotH2 = errors.New("upstreamhttp: the server chose HTTP/1.1")

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.init()
	u := req.URL
	if u == nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		closeBody(req)
		return nil, fmt.Errorf("upstreamhttp: unsupported URL %v", u)
	}
	key := connKey(u.Scheme, u.Host)
	if u.Scheme == "https" && !t.isH1(key) {
		resp, err := t.h2.RoundTrip(req)
		if !errors.Is(err, errNotH2) {
			return resp, err
		}
		if req, err = rewound(req); err != nil {
			return nil, err
		}
	}
	return t.roundTripH1(req, key)
}

var errHeaderTimeout = errors.New("upstreamhttp: timeout awaiting response headers")

// CloseIdleConnections closes every idle connection.
func (t *Transport) CloseIdleConnections() {
	t.init()
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, cs := range idle {
		for _, c := range cs {
			c.nc.Close()
		}
	}
	t.h2.CloseIdleConnections()
}

func (t *Transport) isH1(key string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.h1Hosts[key]
}

// dialH2 is the HTTP/2 transport's dialer. It offers both protocols, so
// that a server without HTTP/2 answers with HTTP/1.1 instead of failing
// the handshake; such a host is remembered, and its connection kept for
// the HTTP/1.1 path.
func (t *Transport) dialH2(ctx context.Context, network, addr string) (net.Conn, error) {
	key := "https://" + addr
	if t.isH1(key) {
		return nil, errNotH2
	}
	cfg := &tls.Config{}
	if t.TLSClientConfig != nil {
		cfg = t.TLSClientConfig.Clone()
	}
	if cfg.ServerName == "" {
		host, _, _ := net.SplitHostPort(addr)
		cfg.ServerName = host
	}
	cfg.NextProtos = []string{"h2", "http/1.1"}
	tc, err := t.dialTLS(ctx, addr, cfg)
	if err != nil {
		return nil, err
	}
	if tc.ConnectionState().NegotiatedProtocol == "h2" {
		return tc, nil
	}
	t.mu.Lock()
	if t.h1Hosts == nil {
		t.h1Hosts = map[string]bool{}
	}
	t.h1Hosts[key] = true
	t.mu.Unlock()
	t.putIdle(&conn{nc: tc, key: key})
	return nil, errNotH2
}

// dialTLS connects to addr and completes a TLS handshake under cfg.
func (t *Transport) dialTLS(ctx context.Context, addr string, cfg *tls.Config) (*tls.Conn, error) {
	nc, err := t.dialTCP(ctx, addr)
	if err != nil {
		return nil, err
	}
	hctx, cancel := context.WithTimeout(ctx, t.tlsTimeout())
	defer cancel()
	tc := tls.Client(nc, cfg)
	if err := tc.HandshakeContext(hctx); err != nil {
		nc.Close()
		return nil, err
	}
	return tc, nil
}

func (t *Transport) dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: t.dialTimeout(), KeepAlive: t.keepAlive()}
	return d.DialContext(ctx, "tcp", addr)
}

// connKey names a host's connections: scheme://host:port.
func connKey(scheme, host string) string {
	if _, _, err := net.SplitHostPort(host); err != nil {
		port := "80"
		if scheme == "https" {
			port = "443"
		}
		host = net.JoinHostPort(trimBrackets(host), port)
	}
	return scheme + "://" + host
}

func trimBrackets(h string) string {
	if len(h) > 1 && h[0] == '[' && h[len(h)-1] == ']' {
		return h[1 : len(h)-1]
	}
	return h
}

// rewound returns req with a fresh body, for sending it again.
func rewound(req *http.Request) (*http.Request, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return req, nil
	}
	if req.GetBody == nil {
		return nil, errors.New("upstreamhttp: the request body cannot be sent again")
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, err
	}
	r := *req
	r.Body = body
	return &r, nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}
