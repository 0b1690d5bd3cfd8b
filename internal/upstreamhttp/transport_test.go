package upstreamhttp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countConns counts the connections a test server accepts.
func countConns(srv *httptest.Server) *atomic.Int64 {
	var n atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			n.Add(1)
		}
	}
	return &n
}

func post(t *testing.T, tr http.RoundTripper, url, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// echo answers with the request body, whole (Content-Length) or, for
// /chunked, in pieces.
func echo(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	if r.URL.Path == "/chunked" {
		for _, c := range bytes.SplitAfter(b, []byte(" ")) {
			w.Write(c)
			w.(http.Flusher).Flush()
		}
		return
	}
	w.Write(b)
}

func TestHTTP1ReusesConnections(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(echo))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	tr := &Transport{}
	for i, path := range []string{"/", "/chunked", "/", "/chunked"} {
		want := fmt.Sprintf("call %d with some words", i)
		resp, got := post(t, tr, srv.URL+path, want)
		if got != want || resp.StatusCode != 200 || resp.ProtoMajor != 1 {
			t.Fatalf("%s: %d %s %q", path, resp.StatusCode, resp.Proto, got)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("4 sequential calls used %d connections, want 1", n)
	}
}

// TestHTTP1NoGoroutinePerConnection holds 50 responses open at once and
// counts goroutines: the transport adds none of its own (net/http's adds
// two per connection).
func TestHTTP1NoGoroutinePerConnection(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("first "))
		w.(http.Flusher).Flush()
		<-release
		w.Write([]byte("last"))
	}))
	defer srv.Close()
	for _, tc := range []struct {
		name string
		tr   http.RoundTripper
		max  int
	}{{"upstreamhttp", &Transport{}, 0}, {"net/http", &http.Transport{MaxIdleConnsPerHost: 100}, -1}} {
		base := runtime.NumGoroutine()
		var bodies []io.ReadCloser
		for range 50 {
			req, _ := http.NewRequest("GET", srv.URL, nil)
			resp, err := tc.tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 6)
			if _, err := io.ReadFull(resp.Body, buf); err != nil {
				t.Fatal(err)
			}
			bodies = append(bodies, resp.Body)
		}
		// The server's goroutines (two per connection: the handler and
		// its background reader) are the same for both transports. A
		// dialing goroutine may still be on its way out.
		added := runtime.NumGoroutine() - base - 2*50
		for deadline := time.Now().Add(time.Second); added > tc.max && tc.max >= 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
			added = runtime.NumGoroutine() - base - 2*50
		}
		t.Logf("%s: %d goroutines of its own for 50 open responses", tc.name, added)
		if tc.max >= 0 && added > tc.max {
			t.Errorf("%s added %d goroutines for 50 open responses", tc.name, added)
		}
		if tc.max < 0 && added < 50 {
			t.Errorf("the baseline added only %d goroutines: the test does not measure what it claims", added)
		}
		close(release)
		for _, b := range bodies {
			io.Copy(io.Discard, b)
			b.Close()
		}
		release = make(chan struct{})
	}
	close(release)
}

// TestHTTP1IdleConnectionClosedByServer: a pooled connection the server
// closed is noticed and the request goes out on a new one.
func TestHTTP1IdleConnectionClosedByServer(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(echo))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	tr := &Transport{}
	post(t, tr, srv.URL, "one")
	srv.CloseClientConnections()
	time.Sleep(20 * time.Millisecond) // let the FIN arrive
	if _, got := post(t, tr, srv.URL, "two"); got != "two" {
		t.Fatalf("second call: %q", got)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

// TestHTTP1StaleConnectionRetried: a pooled connection that fails before
// any of the request is written (the server closed it between the
// liveness peek and the write) is not the caller's problem: the request
// goes out again on a new connection.
func TestHTTP1StaleConnectionRetried(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(echo))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	tr := &Transport{}
	stale, other := net.Pipe()
	other.Close()
	stale.Close() // writes fail at once, with nothing written
	tr.putIdle(&conn{nc: stale, key: connKey("http", srv.Listener.Addr().String())})
	if _, got := post(t, tr, srv.URL, "after a stale connection"); got != "after a stale connection" {
		t.Fatalf("%q", got)
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
}

// TestHTTP1BodyClosedEarly: a body closed before its end closes its
// connection (the rest may be a long stream), and reads after Close fail.
func TestHTTP1BodyClosedEarly(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := range 10000 {
			fmt.Fprintf(w, "line %d\n", i)
		}
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	tr := &Transport{}
	for range 3 {
		req, _ := http.NewRequest("GET", srv.URL, nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		line := make([]byte, 7)
		if _, err := io.ReadFull(resp.Body, line); err != nil || string(line) != "line 0\n" {
			t.Fatalf("%q %v", line, err)
		}
		resp.Body.Close() // before the end: the connection cannot be reused
		if _, err := resp.Body.Read(make([]byte, 1)); err == nil {
			t.Fatal("read after Close succeeded")
		}
	}
	if n := conns.Load(); n != 3 {
		t.Fatalf("%d connections for 3 calls abandoned mid-body, want 3", n)
	}
}

func TestHTTP1CancelMidStream(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("data: 1\n\n"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()
	tr := &Transport{}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 9)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := resp.Body.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("read after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelling the request did not end the read")
	}
	resp.Body.Close()
}

func TestHTTP1ResponseHeaderTimeout(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	tr := &Transport{ResponseHeaderTimeout: 50 * time.Millisecond}
	req, _ := http.NewRequest("GET", srv.URL, nil)
	if _, err := tr.RoundTrip(req); !errors.Is(err, errHeaderTimeout) {
		t.Fatalf("want a header timeout, got %v", err)
	}
}

func TestHTTP1InterimResponses(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Write([]byte("final"))
	}))
	defer srv.Close()
	resp, got := post(t, &Transport{}, srv.URL, "")
	if resp.StatusCode != 200 || got != "final" {
		t.Fatalf("%d %q", resp.StatusCode, got)
	}
}

// tlsServer starts an HTTPS test server offering HTTP/2 or not, and a
// Transport that trusts it.
func tlsServer(t *testing.T, h2 bool, h http.Handler) (*httptest.Server, *Transport, *atomic.Int64) {
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = h2
	conns := countConns(srv)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	cfg := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	cfg.NextProtos = nil
	return srv, &Transport{TLSClientConfig: cfg}, conns
}

// TestHTTP2BurstDialsOnce starts 100 calls at once against an HTTPS server
// that speaks HTTP/2: they share one connection (net/http's Transport
// dials one per call that finds no connection ready).
func TestHTTP2BurstDialsOnce(t *testing.T) {
	srv, tr, conns := tlsServer(t, true, http.HandlerFunc(echo))
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", srv.URL, strings.NewReader(fmt.Sprint(i)))
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != 2 || string(b) != fmt.Sprint(i) {
				t.Errorf("%s %q", resp.Proto, b)
			}
		})
	}
	wg.Wait()
	if n := conns.Load(); n != 1 {
		t.Fatalf("100 concurrent calls opened %d connections, want 1", n)
	}
}

// TestHTTPSFallsBackToHTTP1 talks to an HTTPS server without HTTP/2.
func TestHTTPSFallsBackToHTTP1(t *testing.T) {
	srv, tr, conns := tlsServer(t, false, http.HandlerFunc(echo))
	for i := range 3 {
		resp, got := post(t, tr, srv.URL+"/chunked", fmt.Sprintf("call %d over TLS", i))
		if resp.ProtoMajor != 1 || got != fmt.Sprintf("call %d over TLS", i) {
			t.Fatalf("%s %q", resp.Proto, got)
		}
	}
	// The connection that found out the server's protocol serves the
	// first call; all three share it.
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
}

func TestHTTP2ResponseHeaderTimeout(t *testing.T) {
	srv, tr, _ := tlsServer(t, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	}))
	tr.ResponseHeaderTimeout = 50 * time.Millisecond
	req, _ := http.NewRequest("GET", srv.URL, nil)
	if _, err := tr.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "timeout awaiting response headers") {
		t.Fatalf("want a header timeout, got %v", err)
	}
}

func TestRejectsOtherSchemes(t *testing.T) {
	req, _ := http.NewRequest("GET", "ftp://example.com/x", nil)
	if _, err := (&Transport{}).RoundTrip(req); err == nil {
		t.Fatal("ftp URL accepted")
	}
}

// FuzzResponse serves arbitrary bytes as an upstream's answer: the
// transport must return an error or a body that reads to an end, never
// panic or hang, and never pool a connection with bytes left on it.
func FuzzResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"))
	f.Add([]byte("HTTP/1.0 200 OK\r\n\r\nuntil close"))
	f.Add([]byte("HTTP/1.1 101 Switching Protocols\r\n\r\n"))
	f.Add([]byte("garbage"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	answers := make(chan []byte, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			answer := <-answers
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				c.Write(answer)
			}()
		}
	}()
	f.Fuzz(func(t *testing.T, answer []byte) {
		tr := &Transport{ResponseHeaderTimeout: 2 * time.Second}
		defer tr.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		answers <- answer
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+ln.Addr().String()+"/", strings.NewReader("{}"))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		tr.mu.Lock()
		defer tr.mu.Unlock()
		for _, cs := range tr.idle {
			for _, c := range cs {
				if c.br != nil {
					t.Fatal("an idle connection kept its read buffer")
				}
			}
		}
	})
}
