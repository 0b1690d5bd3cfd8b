package proxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/egress/dest"
	"github.com/kars-io/kars/internal/egress/resolve"
)

// testCA issues certificates for test names.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t testing.TB) *testCA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kars test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) leaf(t testing.TB, names ...string) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: names[0]},
		DNSNames: names, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// testDecider allows host:port keys until their expiry (zero: forever)
// and records what it was asked.
type testDecider struct {
	mu      sync.Mutex
	allow   map[string]time.Time
	decided []Request
	refused []string
}

func (d *testDecider) verdict(req Request, now time.Time) Verdict {
	d.mu.Lock()
	defer d.mu.Unlock()
	key := hostPort(req.Host, req.Port)
	if exp, ok := d.allow[key]; ok && (exp.IsZero() || now.Before(exp)) {
		return Verdict{Allow: true, Rule: "allow " + key, Expires: exp}
	}
	return Verdict{Status: http.StatusForbidden, Rule: "default-deny", Message: "kars egress: " + key + " is not allowed (rule default-deny)"}
}

func (d *testDecider) Decide(_ context.Context, req Request) Verdict {
	d.mu.Lock()
	d.decided = append(d.decided, req)
	d.mu.Unlock()
	return d.verdict(req, time.Now())
}

func (d *testDecider) Still(req Request, now time.Time) Verdict { return d.verdict(req, now) }

func (d *testDecider) Refused(_ context.Context, req Request, reason string) {
	d.mu.Lock()
	d.refused = append(d.refused, req.Host+": "+reason)
	d.mu.Unlock()
}

func (d *testDecider) set(key string, exp time.Time) {
	d.mu.Lock()
	d.allow[key] = exp
	d.mu.Unlock()
}

func (d *testDecider) last() Request {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.decided[len(d.decided)-1]
}

type env struct {
	ca      *testCA
	dec     *testDecider
	proxy   *Proxy
	proxyLn net.Listener
	// tlsAddr and httpAddr are the upstream servers (on loopback).
	tlsPort, httpPort uint16
	// lastHost is the Host header the plain-HTTP upstream saw last.
	mu       sync.Mutex
	lastHost string
	lastAuth string
}

func lookupTable(m map[string][]string) resolve.Lookup {
	return func(_ context.Context, fqdn string) ([]netip.Addr, error) {
		as, ok := m[strings.TrimSuffix(fqdn, ".")]
		if !ok {
			return nil, &net.DNSError{Err: "no such host", Name: fqdn, IsNotFound: true}
		}
		var out []netip.Addr
		for _, a := range as {
			out = append(out, netip.MustParseAddr(a))
		}
		return out, nil
	}
}

// loopbackOK lets tests reach servers on loopback; everything else
// refused stays refused.
func loopbackOK(a netip.Addr) string {
	if a.IsLoopback() {
		return ""
	}
	return dest.Refused(a)
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{ca: newCA(t), dec: &testDecider{allow: map[string]time.Time{}}}
	tlsLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{e.ca.leaf(t, "allowed.test", "other.test", "*.wild.test")}})
	if err != nil {
		t.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		e.lastHost, e.lastAuth = r.Host, r.Header.Get("Proxy-Authorization")
		e.mu.Unlock()
		fmt.Fprintf(w, "hello from %s %s", r.Host, r.URL.Path)
	})
	for _, l := range []net.Listener{tlsLn, httpLn} {
		srv := &http.Server{Handler: h}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
	}
	e.tlsPort = uint16(tlsLn.Addr().(*net.TCPAddr).Port)
	e.httpPort = uint16(httpLn.Addr().(*net.TCPAddr).Port)
	res := resolve.New(lookupTable(map[string][]string{
		"allowed.test":  {"127.0.0.1"},
		"other.test":    {"127.0.0.1"},
		"a.wild.test":   {"127.0.0.1"},
		"rebind.test":   {"10.0.0.5", "169.254.169.254"},
		"mixed.test":    {"169.254.169.254", "127.0.0.1"},
		"nowhere.test":  {"127.0.0.1"},
		"silent.test":   {"127.0.0.1"},
		"metadata.test": {"169.254.169.254"},
	})).WithRefused(loopbackOK)
	e.proxy = &Proxy{Decider: e.dec, Resolver: res, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), PeekTimeout: time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: e.proxy}
	go srv.Serve(ln)
	e.proxyLn = ln
	t.Cleanup(func() { e.proxy.Close(); srv.Close() })
	return e
}

// client is an HTTP client that uses the proxy explicitly.
func (e *env) client() *http.Client {
	pu, _ := url.Parse("http://" + e.proxyLn.Addr().String())
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(pu),
		TLSClientConfig: &tls.Config{RootCAs: e.ca.pool}, DisableKeepAlives: true}}
}

func get(c *http.Client, u string, hdr ...string) (int, string, error) {
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func TestConnectAllowedAndDenied(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	e.dec.set(fmt.Sprintf("allowed.test:%d", e.tlsPort), time.Time{})

	code, body, err := get(c, fmt.Sprintf("https://allowed.test:%d/x", e.tlsPort))
	if err != nil || code != 200 || !strings.Contains(body, "hello from allowed.test") {
		t.Fatalf("allowed: %d %q %v", code, body, err)
	}
	if r := e.dec.last(); r.Via != ViaConnect || r.Host != "allowed.test" || r.Port != e.tlsPort {
		t.Errorf("decided %+v", r)
	}

	// Unlisted host: the tunnel is refused with the reason.
	_, _, err = get(c, fmt.Sprintf("https://other.test:%d/", e.tlsPort))
	if err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Fatalf("unlisted host: %v", err)
	}
	// Port mismatch: allowed host, other port.
	_, _, err = get(c, fmt.Sprintf("https://allowed.test:%d/", e.httpPort))
	if err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Fatalf("port mismatch: %v", err)
	}

	// The refusal body says why, for people using curl -v.
	conn, err := net.Dial("tcp", e.proxyLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 403 || resp.Header.Get("X-Kars-Egress-Rule") != "default-deny" || !strings.Contains(string(b), "other.test:443 is not allowed") {
		t.Errorf("refusal: %d %v %q", resp.StatusCode, resp.Header, b)
	}
}

func TestConnectBadTargets(t *testing.T) {
	e := newEnv(t)
	for _, target := range []string{"no-port.test", "a.test:0", "a.test:99999", "user@a.test:443", "[::1:443", "a..b:443", "::1:443"} {
		conn, err := net.Dial("tcp", e.proxyLn.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 400 {
			t.Errorf("CONNECT %s: %d, want 400", target, resp.StatusCode)
		}
	}
	if len(e.dec.decided) != 0 {
		t.Errorf("malformed targets reached the decider: %v", e.dec.decided)
	}
}

func TestPlainHTTP(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	e.dec.set(fmt.Sprintf("allowed.test:%d", e.httpPort), time.Time{})
	code, body, err := get(c, fmt.Sprintf("http://allowed.test:%d/path", e.httpPort), "Proxy-Authorization", "Basic c2VjcmV0")
	if err != nil || code != 200 || !strings.Contains(body, "/path") {
		t.Fatalf("allowed: %d %q %v", code, body, err)
	}
	e.mu.Lock()
	host, auth := e.lastHost, e.lastAuth
	e.mu.Unlock()
	if host != fmt.Sprintf("allowed.test:%d", e.httpPort) || auth != "" {
		t.Errorf("upstream saw Host %q, Proxy-Authorization %q", host, auth)
	}
	if r := e.dec.last(); r.Via != ViaHTTP || r.Method != "GET" || r.Path != "/path" {
		t.Errorf("decided %+v", r)
	}
	code, body, _ = get(c, fmt.Sprintf("http://other.test:%d/", e.httpPort))
	if code != 403 || !strings.Contains(body, "not allowed") {
		t.Errorf("denied: %d %q", code, body)
	}
	// A Host header naming another host does not redirect the request.
	e.dec.set(fmt.Sprintf("allowed.test:%d", e.httpPort), time.Time{})
	code, _, _ = get(c, fmt.Sprintf("http://allowed.test:%d/", e.httpPort), "Host", "other.test")
	e.mu.Lock()
	host = e.lastHost
	e.mu.Unlock()
	if code != 200 || !strings.HasPrefix(host, "allowed.test") {
		t.Errorf("Host header smuggling: %d, upstream saw %q", code, host)
	}
}

func TestRebindingRefused(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	for _, h := range []string{"rebind.test", "metadata.test"} {
		e.dec.set(h+":443", time.Time{})
		_, _, err := get(c, "https://"+h+"/")
		if err == nil || !strings.Contains(err.Error(), "Forbidden") {
			t.Errorf("%s: %v", h, err)
		}
	}
	if len(e.dec.refused) != 2 || !strings.Contains(e.dec.refused[0], "a private address") || !strings.Contains(e.dec.refused[1], "instance-metadata") {
		t.Errorf("refusals recorded: %q", e.dec.refused)
	}
	// An answer with one refused and one usable address uses the usable
	// one only.
	e.dec.set(fmt.Sprintf("mixed.test:%d", e.tlsPort), time.Time{})
	conn, err := net.Dial("tcp", e.proxyLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "CONNECT mixed.test:%d HTTP/1.1\r\n\r\n", e.tlsPort)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("mixed: %v %v", resp, err)
	}
}

func TestTunnelClosedAtExpiry(t *testing.T) {
	e := newEnv(t)
	exp := time.Now().Add(time.Hour)
	key := fmt.Sprintf("allowed.test:%d", e.tlsPort)
	e.dec.set(key, exp)
	conn, err := net.Dial("tcp", e.proxyLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\n\r\n", key)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("connect: %v %v", resp, err)
	}
	tc := tls.Client(&bufConn{Conn: conn, r: br}, &tls.Config{RootCAs: e.ca.pool, ServerName: "allowed.test"})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if n := len(e.proxy.Open()); n != 1 {
		t.Fatalf("%d open tunnels", n)
	}
	// Before expiry a sweep keeps it; at expiry it is closed.
	e.proxy.Sweep(exp.Add(-time.Second), false)
	if n := len(e.proxy.Open()); n != 1 {
		t.Fatalf("closed before expiry")
	}
	e.proxy.Sweep(exp, false)
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := tc.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Fatalf("read after expiry: %v, want the tunnel closed", err)
	}

	// A tunnel still allowed by another rule survives the sweep.
	e.dec.set(key, time.Time{})
	conn2, _ := net.Dial("tcp", e.proxyLn.Addr().String())
	defer conn2.Close()
	fmt.Fprintf(conn2, "CONNECT %s HTTP/1.1\r\n\r\n", key)
	if resp, err := http.ReadResponse(bufio.NewReader(conn2), nil); err != nil || resp.StatusCode != 200 {
		t.Fatal(resp, err)
	}
	e.proxy.Sweep(time.Now(), true)
	if n := len(e.proxy.Open()); n != 1 {
		t.Fatalf("a still-allowed tunnel was closed (%d open)", n)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// transparentEnv serves the proxy's transparent side, with OriginalDst
// answering from a table keyed by the client's address.
func transparentEnv(t *testing.T, e *env) (dial func(orig string) net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	origs := map[string]netip.AddrPort{}
	old := OriginalDst
	OriginalDst = func(c net.Conn) (netip.AddrPort, error) {
		// The client registers its address right after connecting.
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			mu.Lock()
			o, ok := origs[c.RemoteAddr().String()]
			mu.Unlock()
			if ok {
				return o, nil
			}
		}
		return netip.AddrPort{}, errors.New("no original destination")
	}
	t.Cleanup(func() { OriginalDst = old; ln.Close() })
	go e.proxy.ServeTransparent(ln)
	return func(orig string) net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		origs[c.LocalAddr().String()] = netip.MustParseAddrPort(orig)
		mu.Unlock()
		t.Cleanup(func() { c.Close() })
		return c
	}
}

func TestTransparentTLS(t *testing.T) {
	e := newEnv(t)
	dial := transparentEnv(t, e)
	e.dec.set(fmt.Sprintf("allowed.test:%d", e.tlsPort), time.Time{})
	// The agent dialled some address it was told; the router connects to
	// the name in the ClientHello.
	orig := fmt.Sprintf("198.51.100.10:%d", e.tlsPort)
	tc := tls.Client(dial(orig), &tls.Config{RootCAs: e.ca.pool, ServerName: "allowed.test"})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("allowed SNI: %v", err)
	}
	fmt.Fprintf(tc, "GET /t HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
	b, _ := io.ReadAll(tc)
	if !strings.Contains(string(b), "hello from allowed.test /t") {
		t.Errorf("response %q", b)
	}
	if r := e.dec.last(); r.Via != ViaTransparentTLS || r.Host != "allowed.test" || r.OrigDst.String() != orig {
		t.Errorf("decided %+v", r)
	}
	// A denied SNI ends with an access_denied alert.
	tc = tls.Client(dial(orig), &tls.Config{RootCAs: e.ca.pool, ServerName: "other.test"})
	err := tc.Handshake()
	if err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Errorf("denied SNI: %v", err)
	}
}

func TestTransparentHTTPAndTCP(t *testing.T) {
	e := newEnv(t)
	dial := transparentEnv(t, e)
	e.dec.set(fmt.Sprintf("allowed.test:%d", e.httpPort), time.Time{})
	orig := fmt.Sprintf("198.51.100.10:%d", e.httpPort)

	c := dial(orig)
	fmt.Fprintf(c, "GET /one HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), "/one") {
		t.Fatalf("allowed: %d %q", resp.StatusCode, b)
	}
	// A second request on the same connection naming another host is
	// decided again, and refused.
	fmt.Fprintf(c, "GET /two HTTP/1.1\r\nHost: other.test\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 403 {
		t.Errorf("second request for another host: %d", resp.StatusCode)
	}

	// A protocol with no name is decided by the name the agent resolved
	// to the address it dialled.
	if _, err := e.proxy.Resolver.Resolve(context.Background(), "allowed.test"); err != nil {
		t.Fatal(err)
	}
	c = dial(fmt.Sprintf("127.0.0.1:%d", e.httpPort))
	_ = c // loopback original destinations are refused outright
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("a connection whose original destination is loopback was served")
	}
}

func TestTransparentRawTCPByResolvedName(t *testing.T) {
	e := newEnv(t)
	// The proxy sees loopback as the original destination only if it is
	// loopback; use a resolver whose answer is a TEST-NET address that
	// the test's Dial maps to the HTTP server.
	res := resolve.New(lookupTable(map[string][]string{"ssh.test": {"198.51.100.22"}}))
	e.proxy.Resolver = res
	target := fmt.Sprintf("127.0.0.1:%d", e.httpPort)
	e.proxy.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr != fmt.Sprintf("198.51.100.22:%d", e.httpPort) {
			return nil, fmt.Errorf("unexpected dial %s", addr)
		}
		return (&net.Dialer{}).DialContext(ctx, network, target)
	}
	dial := transparentEnv(t, e)
	if _, err := res.Resolve(context.Background(), "ssh.test"); err != nil {
		t.Fatal(err)
	}
	e.dec.set(fmt.Sprintf("ssh.test:%d", e.httpPort), time.Time{})
	c := dial(fmt.Sprintf("198.51.100.22:%d", e.httpPort))
	// Not TLS and not an HTTP method: a raw protocol.
	fmt.Fprintf(c, "\x00\x01binary\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	if !strings.Contains(string(b), "400 Bad Request") {
		t.Errorf("raw TCP was not relayed to the resolved name's host: %q", b)
	}
	if r := e.dec.last(); r.Via != ViaTransparentTCP || r.Host != "ssh.test" {
		t.Errorf("decided %+v", r)
	}
	// An address nobody resolved is decided as the address, and refused.
	c = dial(fmt.Sprintf("198.51.100.99:%d", e.httpPort))
	fmt.Fprintf(c, "\x00")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("an unresolved address was relayed")
	}
	if r := e.dec.last(); r.Host != "198.51.100.99" {
		t.Errorf("decided %+v", r)
	}
}

// TestTransparentServerSpeaksFirst: a client that waits for the server
// (SSH-like) is decided by the name it resolved and relayed.
func TestTransparentServerSpeaksFirst(t *testing.T) {
	e := newEnv(t)
	banner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer banner.Close()
	go func() {
		for {
			c, err := banner.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("SSH-2.0-test\r\n"))
			c.Close()
		}
	}()
	port := uint16(banner.Addr().(*net.TCPAddr).Port)
	res := resolve.New(lookupTable(map[string][]string{"ssh.test": {"198.51.100.22"}}))
	e.proxy.Resolver = res
	e.proxy.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, banner.Addr().String())
	}
	dial := transparentEnv(t, e)
	res.Resolve(context.Background(), "ssh.test")
	e.dec.set(fmt.Sprintf("ssh.test:%d", port), time.Time{})
	c := dial(fmt.Sprintf("198.51.100.22:%d", port))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "SSH-2.0-test\r\n" {
		t.Fatalf("banner %q %v", line, err)
	}
	if r := e.dec.last(); r.Via != ViaTransparentTCP || r.Host != "ssh.test" {
		t.Errorf("decided %+v", r)
	}
}

func TestMaxTunnels(t *testing.T) {
	e := newEnv(t)
	e.proxy.MaxTunnels = 1
	key := fmt.Sprintf("allowed.test:%d", e.tlsPort)
	e.dec.set(key, time.Time{})
	open := func() int {
		c, err := net.Dial("tcp", e.proxyLn.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\n\r\n", key)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode
	}
	if code := open(); code != 200 {
		t.Fatalf("first tunnel: %d", code)
	}
	waitOpen := time.Now().Add(5 * time.Second)
	for len(e.proxy.Open()) != 1 && time.Now().Before(waitOpen) {
		time.Sleep(5 * time.Millisecond)
	}
	if code := open(); code != 503 {
		t.Errorf("tunnel past the bound: %d, want 503", code)
	}
}
