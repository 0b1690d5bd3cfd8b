package router

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/inference/fakeprovider"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
)

// rawStream sends a streaming chat request on a raw connection with the
// given protocol version and returns the parsed response, its whole body,
// and whether the router closed the connection after it.
func rawStream(t *testing.T, addr, proto, content string) (*http.Response, string, bool) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"` + content + `"}]}`
	req := "POST /v1/chat/completions " + proto + "\r\nHost: router\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-agent\r\n"
	if proto == "HTTP/1.0" {
		req += "Connection: keep-alive\r\n"
	}
	req += "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the stream: %v", err)
	}
	_, err = br.ReadByte()
	return resp, string(b), err == io.EOF
}

// TestStreamOnTakenOverConnection: a stream is answered on the agent's
// connection taken over from net/http, as a well-formed HTTP/1.1 chunked
// response that ends with the terminal event and closes the connection;
// an HTTP/1.0 agent gets the body delimited by the close.
func TestStreamOnTakenOverConnection(t *testing.T) {
	h := newHarness(t, nil)
	addr := strings.TrimPrefix(h.agent.URL, "http://")
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		resp, body, closed := rawStream(t, addr, proto, "hello")
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") || !resp.Close {
			t.Fatalf("%s: %d %v", proto, resp.StatusCode, resp.Header)
		}
		chunked := len(resp.TransferEncoding) == 1 && resp.TransferEncoding[0] == "chunked"
		if chunked != (proto == "HTTP/1.1") {
			t.Fatalf("%s: transfer encoding %v", proto, resp.TransferEncoding)
		}
		if !strings.HasSuffix(body, "data: [DONE]\n\n") || !strings.Contains(body, "chat.completion.chunk") {
			t.Fatalf("%s: body %q", proto, body)
		}
		if !closed {
			t.Fatalf("%s: the connection stayed open after the stream", proto)
		}
		h.assertNoLeaks(resp.Header, body)
	}
	// The entry's payload hash is the request body's, although the body
	// is let go of when the stream starts.
	sum := sha256.Sum256([]byte(`{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"hello"}]}`))
	if recs := h.auditRecords(); len(recs) != 2 || recs[1].Attrs["stream"] != "true" || recs[1].PayloadSHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("audit: %+v", recs)
	}
}

// TestShutdownWaitsForStreams stops the router while a slow stream is
// running: Shutdown does not track connections taken over from net/http,
// so Serve waits for the call itself; the stream completes and is on
// record in a log that verifies.
func TestShutdownWaitsForStreams(t *testing.T) {
	fake := fakeprovider.New()
	fake.Start()
	t.Cleanup(fake.Close)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	os.WriteFile(keyFile, []byte(fake.APIKey), 0o600)
	c := routerconfigtest.Offline(t, dir)
	c.Models.Primary = routerconfig.Target{Provider: routerconfig.ProviderAzureOpenAI, Model: "gpt-4.1",
		Deployment: "gpt-41", Endpoint: fake.URL(), Auth: &routerconfig.Auth{Mode: routerconfig.AuthAPIKey, KeyFile: keyFile}}
	a, stop := serving(t, ServeOptions{ConfigPath: routerconfigtest.Write(t, dir, c)})
	type result struct {
		body   string
		closed bool
	}
	got := make(chan result, 1)
	go func() {
		_, body, closed := rawStream(t, a["agent"], "HTTP/1.1", "slowly #fake:slow=100ms")
		got <- result{body, closed}
	}()
	time.Sleep(150 * time.Millisecond) // the stream is under way
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if !strings.HasSuffix(r.body, "data: [DONE]\n\n") || !r.closed {
		t.Fatalf("stream cut by shutdown; it ends %q", r.body[max(0, len(r.body)-200):])
	}
	rep, err := audit.Verify(c.Audit.Dir, audit.VerifyOptions{})
	if err != nil || !rep.OK() || rep.Entries != 2 {
		t.Fatalf("audit after shutdown: %+v %v (want the open entry and the stream)", rep, err)
	}
}

// goroutineStacks returns every goroutine's stack.
func goroutineStacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

// TestStreamOutlivesItsHandler: once a stream starts on a taken-over
// connection it is relayed on a goroutine of its own and the handler
// returns, giving back its deep stack; the streams still complete, and each
// is counted in flight, on record and settled until it ends.
func TestStreamOutlivesItsHandler(t *testing.T) {
	h := newHarness(t, nil)
	addr := strings.TrimPrefix(h.agent.URL, "http://")
	const n = 4
	bodies := make(chan string, n)
	for range n {
		go func() {
			_, body, _ := rawStream(t, addr, "HTTP/1.1", "slowly #fake:slow=250ms")
			bodies <- body
		}()
	}
	var stacks string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		stacks = goroutineStacks()
		relayed := strings.Count(stacks, ".(*detachedStream).run(")
		if relayed == n && !strings.Contains(stacks, ".(*Router).serveInference(") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d streams relayed apart from their handlers, none inside one; got %d relayed:\n%s", n, relayed, stacks)
		}
	}
	if got := h.router.InFlight(); got != n {
		t.Fatalf("in flight while the streams run: %d, want %d", got, n)
	}
	for range n {
		if b := <-bodies; !strings.HasSuffix(b, "data: [DONE]\n\n") {
			t.Fatalf("stream cut: it ends %q", b[max(0, len(b)-200):])
		}
	}
	recs := h.auditRecords() // waits for nothing in flight
	if len(recs) != n {
		t.Fatalf("audit: %d entries, want %d", len(recs), n)
	}
	for _, r := range recs {
		if r.Attrs["stream"] != "true" || r.Attrs["status"] != "200" || r.Attrs["completion_tokens"] == "0" {
			t.Fatalf("stream entry %+v", r.Attrs)
		}
	}
	if st := h.ledgerState(); st.DayReserved != 0 || st.DayUsed == 0 {
		t.Fatalf("budget after the streams: %+v (want nothing reserved, the usage charged)", st)
	}
}

// TestDetachedStreamNoticesTheAgentLeave: an agent that closes its
// connection mid-stream ends the relay at the next event, not at the end
// of the stream; the call is recorded as 499 and stops counting in flight.
func TestDetachedStreamNoticesTheAgentLeave(t *testing.T) {
	h := newHarness(t, nil)
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.agent.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	body := `{"model":"gpt-4.1","stream":true,"max_tokens":40,"messages":[{"role":"user","content":"long #fake:slow=200ms"}]}`
	io.WriteString(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\nContent-Length: "+
		strconv.Itoa(len(body))+"\r\n\r\n"+body)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	first := make([]byte, 64)
	if _, err := io.ReadAtLeast(resp.Body, first, 1); err != nil {
		t.Fatal(err)
	}
	left := time.Now()
	conn.Close()
	h.quiesce()
	// The whole stream takes ~8 s (40 chunks 200 ms apart); its end is
	// noticed at the next write or two.
	if took := time.Since(left); took > 3*time.Second {
		t.Fatalf("the relay ran on for %v after the agent left", took)
	}
	recs := h.auditRecords()
	if len(recs) != 1 || recs[0].Attrs["status"] != "499" {
		t.Fatalf("audit: %+v", recs)
	}
	if st := h.ledgerState(); st.DayReserved != 0 {
		t.Fatalf("budget still reserves %d after the agent left", st.DayReserved)
	}
}
