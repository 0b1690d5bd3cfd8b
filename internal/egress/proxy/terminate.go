package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/kars-io/kars/internal/egress/credbind"
)

// Broker decides what the proxy does with the requests it can read: those
// on agent connections it terminates (hosts a credential is bound to) and
// plain-HTTP requests. The router implements it with internal/egress/credbind
// for the configuration in force.
type Broker interface {
	// Certificate returns the certificate to present to the agent for
	// host:port when the proxy terminates TLS to it, nil when the
	// connection stays an end-to-end tunnel. An error means it must be
	// terminated but cannot be: the connection is refused.
	Certificate(host string, port uint16) (*tls.Certificate, error)
	// Inspect decides one request (credbind.Set.Inspect) and records the
	// use of a credential or a finding before returning.
	Inspect(ctx context.Context, dest Request, r credbind.Request) credbind.Result
	// BodyFinding records a placeholder met in a request's body.
	BodyFinding(ctx context.Context, dest Request, r credbind.Request)
}

// terminate serves an agent connection to req's host whose TLS the proxy
// terminates with cert: each HTTP/1.1 request on it is inspected by the
// Broker — a credential placed or the request refused — and sent to the
// real host over a new TLS connection verified against UpstreamRoots
// (the system's roots when nil), as any client would.
func (p *Proxy) terminate(agent net.Conn, req Request, cert *tls.Certificate, expires time.Time) {
	t := &tunnel{req: req, a: agent, expires: expires}
	if !p.track(t) {
		return
	}
	defer p.untrack(t)
	tc := tls.Server(agent, &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			// The name the agent asks for must be the host decided on
			// (CONNECT target or the transparent connection's SNI).
			if h.ServerName != "" && !strings.EqualFold(strings.TrimSuffix(h.ServerName, "."), req.Host) {
				return nil, errors.New("kars egress: the TLS server name is not the destination")
			}
			return cert, nil
		},
	})
	tc.SetDeadline(time.Now().Add(p.PeekTimeout))
	if err := tc.Handshake(); err != nil {
		p.Log.Info("egress: TLS handshake with the agent failed", "host", req.Host, "port", req.Port, "err", err)
		tc.Close()
		return
	}
	tc.SetDeadline(time.Time{})
	l := &oneConnListener{c: tc, done: make(chan struct{})}
	srv := &http.Server{
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          log.New(io.Discard, "", 0),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if IsProxyRequest(r) || !sameAuthority(r.Host, req.Host, req.Port) {
				// Another virtual host inside this connection (domain
				// fronting): not the destination decided on.
				refuse(w, http.StatusMisdirectedRequest, "", "kars egress: this connection is to "+hostPort(req.Host, req.Port)+"; the request names "+quote(r.Host))
				return
			}
			p.serveReadable(w, r, req, "https")
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

// sameAuthority reports whether a Host header names host:port.
func sameAuthority(authority, host string, port uint16) bool {
	h, p, err := ParseAuthority(authority, port)
	return err == nil && h == host && p == port
}

// track registers t as an open tunnel, unless the proxy is closed.
func (p *Proxy) track(t *tunnel) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		t.shut()
		return false
	}
	p.tunnels[t] = struct{}{}
	return true
}

func (p *Proxy) untrack(t *tunnel) {
	p.mu.Lock()
	delete(p.tunnels, t)
	p.mu.Unlock()
	t.shut()
}

// bodyScan wraps a request body in credbind.ScanReader and remembers
// whether it tripped.
type bodyScan struct {
	io.ReadCloser
	r       io.Reader
	tripped atomic.Bool
}

func (b *bodyScan) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if errors.Is(err, credbind.ErrPlaceholderInBody) {
		b.tripped.Store(true)
	}
	return n, err
}

// serveReadable sends one request the proxy can read — on a terminated
// connection (scheme "https") or plain HTTP ("http") — to dest, after the
// Broker's inspection: refused with 403 on a finding; with the credential
// in place, the request's body scanned for placeholders and the answer
// scrubbed of the credential otherwise.
func (p *Proxy) serveReadable(w http.ResponseWriter, r *http.Request, dest Request, scheme string) {
	dest.Method, dest.Path = r.Method, r.URL.Path
	cr := credbind.Request{Scheme: scheme, Host: dest.Host, Port: dest.Port, Target: r.URL.RequestURI(), Authority: r.Host, Header: r.Header}
	if scheme == "https" {
		cr.Target = r.RequestURI
	}
	var scan *bodyScan
	if r.Body != nil && r.Body != http.NoBody {
		// On a terminated connection (a host a credential is bound to) a
		// body that fits BodyHoldBytes is read whole and refused before
		// anything is sent. Otherwise it is scanned as it streams and the
		// upstream request aborted at a placeholder, before the bytes
		// that complete it: the upstream never gets a complete request
		// carrying one.
		var head []byte
		if scheme == "https" {
			var err error
			head, err = io.ReadAll(io.LimitReader(r.Body, BodyHoldBytes+1))
			if err != nil {
				refuse(w, http.StatusBadRequest, "", "kars egress proxy: reading the request body: "+err.Error())
				return
			}
			if bytes.Contains(head, []byte(credbind.Marker)) {
				if p.Broker != nil {
					p.Broker.BodyFinding(r.Context(), dest, cr)
				}
				refuse(w, http.StatusForbidden, "credential-binding", bodyRefusal(dest))
				return
			}
		}
		scan = &bodyScan{ReadCloser: r.Body}
		scan.r = credbind.ScanReader(io.MultiReader(bytes.NewReader(head), r.Body))
		r.Body = scan
	}
	var res credbind.Result
	if p.Broker != nil {
		res = p.Broker.Inspect(r.Context(), dest, cr)
	} else {
		res = credbind.Result{Target: cr.Target, Header: r.Header}
	}
	if f := res.Finding; f != nil {
		refuse(w, http.StatusForbidden, "credential-binding", "kars egress: request to "+hostPort(dest.Host, dest.Port)+" refused: "+f.Error())
		return
	}
	target, err := url.ParseRequestURI(res.Target)
	if err != nil || target.RequestURI() != res.Target {
		// Only a target that travels exactly as decided is sent.
		refuse(w, http.StatusBadRequest, "", "kars egress: request target "+quote(credbind.ScrubString(res.Target, res.Secrets, res.Placeholders))+" cannot be forwarded as it is")
		return
	}
	transport := p.transport
	if scheme == "https" {
		transport = p.tlsTransport
	}
	secrets, placeholders := res.Secrets, res.Placeholders
	rp := &httputil.ReverseProxy{
		Transport:     transport,
		FlushInterval: -1, // long polls and event streams pass through as they come
		ErrorLog:      log.New(io.Discard, "", 0),
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL = &url.URL{Scheme: scheme, Host: hostPort(dest.Host, dest.Port), Path: target.Path, RawPath: target.RawPath, RawQuery: target.RawQuery}
			pr.Out.Host = pr.Out.URL.Host
			if (scheme == "http" && dest.Port == 80) || (scheme == "https" && dest.Port == 443) {
				pr.Out.Host = bracket(dest.Host)
			}
			pr.Out.Header = res.Header.Clone()
			for _, h := range hopHeaders {
				pr.Out.Header.Del(h)
			}
			if len(secrets) > 0 {
				// An encoded answer could carry the credential past
				// the scrubber.
				pr.Out.Header.Set("Accept-Encoding", "identity")
			}
			pr.Out.RequestURI = ""
		},
		ModifyResponse: func(resp *http.Response) error {
			if len(secrets) == 0 {
				return nil
			}
			for k, vs := range resp.Header {
				for i, v := range vs {
					vs[i] = credbind.ScrubString(v, secrets, placeholders)
				}
				resp.Header[k] = vs
			}
			resp.Body = struct {
				io.Reader
				io.Closer
			}{credbind.Scrub(resp.Body, secrets, placeholders), resp.Body}
			resp.ContentLength = -1
			resp.Header.Del("Content-Length")
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			if scan != nil && scan.tripped.Load() {
				if p.Broker != nil {
					p.Broker.BodyFinding(r.Context(), dest, cr)
				}
				refuse(w, http.StatusForbidden, "credential-binding", bodyRefusal(dest))
				return
			}
			// The error may quote the URL, which may hold the credential.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			msg := credbind.ScrubString(err.Error(), secrets, placeholders)
			refuse(w, http.StatusBadGateway, "", "kars egress proxy: "+hostPort(dest.Host, dest.Port)+": "+msg)
		},
	}
	ctx := context.WithValue(r.Context(), dialTargetKey{}, dialTarget{host: dest.Host})
	rp.ServeHTTP(w, r.WithContext(ctx))
}

// BodyHoldBytes is how much of a readable request's body the proxy holds
// to look for placeholders before sending anything.
const BodyHoldBytes = 256 << 10

func bodyRefusal(dest Request) string {
	return "kars egress: request to " + hostPort(dest.Host, dest.Port) + " refused: " + credbind.ErrPlaceholderInBody.Error() + ": a credential is never placed in a body"
}

// dialTLSDecided connects to the decided host (as dialDecided) and does a
// verified TLS handshake with it.
func (p *Proxy) dialTLSDecided(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := p.dialDecided(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(addr)
	tc := tls.Client(c, &tls.Config{ServerName: host, RootCAs: p.UpstreamRoots, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12})
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// newTLSTransport is the transport of terminated connections' requests.
func (p *Proxy) newTLSTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialTLSContext:        p.dialTLSDecided,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: 5 * time.Minute,
		ForceAttemptHTTP2:     false,
	}
}
