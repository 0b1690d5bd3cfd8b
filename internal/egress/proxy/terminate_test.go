package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/egress/credbind"
)

// testBroker terminates allowed.test with a certificate from the test CA
// (standing in for the sandbox CA) and places one credential in the
// Authorization header there.
type testBroker struct {
	cert     tls.Certificate
	set      *credbind.Set
	mu       sync.Mutex
	findings []string
}

func (b *testBroker) Certificate(host string, port uint16) (*tls.Certificate, error) {
	if b.set.Terminates(host, port) {
		return &b.cert, nil
	}
	return nil, nil
}

func (b *testBroker) Inspect(_ context.Context, _ Request, r credbind.Request) credbind.Result {
	res := b.set.Inspect(r)
	if res.Finding != nil {
		b.mu.Lock()
		b.findings = append(b.findings, res.Finding.Where)
		b.mu.Unlock()
	}
	return res
}

func (b *testBroker) BodyFinding(context.Context, Request, credbind.Request) {
	b.mu.Lock()
	b.findings = append(b.findings, "body")
	b.mu.Unlock()
}

const termSecret = "secret-value-0123456789"

func withBroker(t *testing.T, e *env) (*testBroker, string) {
	t.Helper()
	ph := credbind.Placeholder("ns", "sb", "key")
	set, err := credbind.Compile([]credbind.Binding{{Name: "key", Placeholder: ph,
		Endpoints: []credbind.Endpoint{{Scheme: "https", Host: "allowed.test", Port: e.tlsPort, PathPrefix: "/"}},
		Placement: credbind.Placement{In: credbind.InHeader, Name: "Authorization", ValuePrefix: "Bearer "},
		Value:     func() ([]byte, error) { return []byte(termSecret), nil }}})
	if err != nil {
		t.Fatal(err)
	}
	b := &testBroker{cert: e.ca.leaf(t, "allowed.test"), set: set}
	e.proxy.Broker = b
	e.proxy.UpstreamRoots = e.ca.pool
	return b, ph
}

func TestTerminatedConnect(t *testing.T) {
	e := newEnv(t)
	b, ph := withBroker(t, e)
	e.dec.set(fmt.Sprintf("allowed.test:%d", e.tlsPort), time.Time{})
	code, body, err := get(e.client(), fmt.Sprintf("https://allowed.test:%d/x", e.tlsPort), "Authorization", "Bearer "+ph)
	if err != nil || code != 200 || !strings.Contains(body, "hello from allowed.test") {
		t.Fatalf("terminated request: %d %q %v", code, body, err)
	}
	// The same placeholder in another header is refused.
	code, body, _ = get(e.client(), fmt.Sprintf("https://allowed.test:%d/x", e.tlsPort), "X-Other", ph)
	if code != 403 || !strings.Contains(body, "places it in header Authorization") {
		t.Errorf("misplaced: %d %q", code, body)
	}
	if len(b.findings) != 1 {
		t.Errorf("findings %v", b.findings)
	}
	// A refused destination is refused before any handshake.
	e.dec.set(fmt.Sprintf("allowed.test:%d", e.tlsPort), time.Now().Add(-time.Second))
	if _, _, err := get(e.client(), fmt.Sprintf("https://allowed.test:%d/x", e.tlsPort)); err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Errorf("a refused terminated destination: %v", err)
	}
}

func TestTerminatedTransparent(t *testing.T) {
	e := newEnv(t)
	_, ph := withBroker(t, e)
	dial := transparentEnv(t, e)
	e.dec.set(fmt.Sprintf("allowed.test:%d", e.tlsPort), time.Time{})
	orig := fmt.Sprintf("198.51.100.10:%d", e.tlsPort)
	tc := tls.Client(dial(orig), &tls.Config{RootCAs: e.ca.pool, ServerName: "allowed.test"})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	fmt.Fprintf(tc, "GET /t HTTP/1.1\r\nHost: allowed.test:%d\r\nAuthorization: Bearer %s\r\n\r\n", e.tlsPort, ph)
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), "hello from allowed.test") {
		t.Fatalf("transparent terminated: %d %q", resp.StatusCode, b)
	}
	// Another virtual host inside the terminated connection: 421.
	fmt.Fprintf(tc, "GET /t HTTP/1.1\r\nHost: other.test:%d\r\nConnection: close\r\n\r\n", e.tlsPort)
	resp, err = http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil || resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("fronted Host: %v %v", resp, err)
	}
}
