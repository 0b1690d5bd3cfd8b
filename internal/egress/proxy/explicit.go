package proxy

import (
	"crypto/tls"
	"net/http"
	"strings"
)

// IsProxyRequest reports whether req is addressed to a proxy rather than
// to the router's own API: a CONNECT, or a request in absolute form
// ("GET http://host/path").
func IsProxyRequest(req *http.Request) bool {
	return req.Method == http.MethodConnect || req.URL.IsAbs()
}

// Headers that concern only one hop (RFC 9110 §7.6.1) or the proxy itself;
// none of them travel upstream.
var hopHeaders = []string{"Proxy-Authorization", "Proxy-Connection", "Proxy-Authenticate"}

// ServeHTTP serves explicit proxy requests: CONNECT host:port, and
// plain-HTTP requests in absolute form.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	p.init()
	if req.Method == http.MethodConnect {
		p.serveConnect(w, req)
		return
	}
	if req.URL.Scheme != "http" {
		refuse(w, http.StatusBadRequest, "", "kars egress proxy: only http:// URLs are forwarded as requests; use CONNECT (HTTPS_PROXY) for "+req.URL.Scheme)
		return
	}
	host, port, err := ParseAuthority(req.URL.Host, 80)
	if err != nil {
		refuse(w, http.StatusBadRequest, "", "kars egress proxy: bad request host "+quote(req.URL.Host)+": "+err.Error())
		return
	}
	p.forward(w, req, Request{Host: host, Port: port, Via: ViaHTTP, Method: req.Method, Path: req.URL.Path})
}

func (p *Proxy) serveConnect(w http.ResponseWriter, req *http.Request) {
	host, port, err := ParseAuthority(req.Host, 0)
	if err != nil {
		refuse(w, http.StatusBadRequest, "", "kars egress proxy: bad CONNECT target "+quote(req.Host)+": "+err.Error())
		return
	}
	r := Request{Host: host, Port: port, Via: ViaConnect}
	if p.Broker != nil {
		cert, err := p.Broker.Certificate(host, port)
		if err != nil {
			refuse(w, http.StatusBadGateway, "credential-binding", "kars egress proxy: "+hostPort(host, port)+" has a credential bound to it, but the router cannot terminate its TLS: "+err.Error())
			return
		}
		if cert != nil {
			p.serveConnectTerminated(w, req, r, cert)
			return
		}
	}
	up, v, err := p.connect(req.Context(), r)
	if err != nil {
		refuse(w, http.StatusBadGateway, v.Rule, "kars egress proxy: "+err.Error())
		return
	}
	if !v.Allow {
		refuse(w, statusOf(v), v.Rule, v.Message)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		up.Close()
		refuse(w, http.StatusHTTPVersionNotSupported, "", "kars egress proxy: CONNECT needs HTTP/1.1")
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		up.Close()
		return
	}
	if _, err := conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		conn.Close()
		up.Close()
		return
	}
	agent := conn
	if n := brw.Reader.Buffered(); n > 0 {
		// Bytes the client sent after the CONNECT head (a ClientHello in
		// the same packet) are already read: send them first.
		b, _ := brw.Reader.Peek(n)
		if _, err := up.Write(b); err != nil {
			conn.Close()
			up.Close()
			return
		}
	}
	p.relay(r, agent, up, v.Expires)
}

// serveConnectTerminated answers a CONNECT to a host whose TLS the proxy
// terminates: decided like any tunnel, then served by terminate.
func (p *Proxy) serveConnectTerminated(w http.ResponseWriter, req *http.Request, r Request, cert *tls.Certificate) {
	v := p.decide(req.Context(), r)
	if !v.Allow {
		refuse(w, statusOf(v), v.Rule, v.Message)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		refuse(w, http.StatusHTTPVersionNotSupported, "", "kars egress proxy: CONNECT needs HTTP/1.1")
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	if _, err := conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		conn.Close()
		return
	}
	p.terminate(&bufConn{Conn: conn, r: brw.Reader}, r, cert, v.Expires)
}

// forward decides one plain-HTTP request and sends it on. The decided
// host is the one the request goes to and the one it names: a Host header
// cannot point elsewhere.
func (p *Proxy) forward(w http.ResponseWriter, req *http.Request, r Request) {
	v := p.Decider.Decide(req.Context(), r)
	if !v.Allow {
		refuse(w, statusOf(v), v.Rule, v.Message)
		return
	}
	p.serveReadable(w, req, r, "http")
}

func hostPort(host string, port uint16) string {
	return bracket(host) + ":" + itoa(port)
}

func bracket(host string) string {
	if strings.IndexByte(host, ':') >= 0 {
		return "[" + host + "]"
	}
	return host
}

func statusOf(v Verdict) int {
	if v.Status != 0 {
		return v.Status
	}
	return http.StatusForbidden
}

// refuse answers the agent with a plain-text explanation; the rule is
// repeated in a header for programs.
func refuse(w http.ResponseWriter, status int, rule, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Connection", "close")
	if rule != "" {
		h.Set("X-Kars-Egress-Rule", rule)
	}
	w.WriteHeader(status)
	w.Write([]byte(msg + "\n"))
}

func quote(s string) string {
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return `"` + strings.ToValidUTF8(s, "?") + `"`
}
