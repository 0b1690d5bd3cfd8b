package router

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidwall/gjson"
)

// chatBody is a valid chat request of about n bytes.
func chatBody(n int) string {
	pad := max(0, n-80)
	return `{"model":"gpt-4.1","messages":[{"role":"user","content":"` + strings.Repeat("a", pad) + `"}]}`
}

// A body whose declared length is over the limit is refused from its
// headers, before the client has sent any of it.
func TestOversizedBodyRefusedBeforeReading(t *testing.T) {
	h := newHarness(t, nil)
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.agent.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", MaxRequestBytes+1)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || gjson.GetBytes(b, "error.code").Str != "kars_body_too_large" {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	if h.fake.Requests.Load() != 0 {
		t.Fatal("forwarded")
	}
}

// slowUpload starts a request that declares n bytes and sends all but the
// last; finish sends it and returns the status.
type slowUpload struct {
	conn net.Conn
	rest string
}

func startSlowUpload(t *testing.T, url, body string) *slowUpload {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(body))
	io.WriteString(conn, body[:len(body)-1])
	return &slowUpload{conn: conn, rest: body[len(body)-1:]}
}

func (u *slowUpload) finish(t *testing.T) int {
	t.Helper()
	io.WriteString(u.conn, u.rest)
	u.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(u.conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// The buffer budget is shared by all calls: once the bodies being received
// hold it, the next call is refused at once with 503 and Retry-After; the
// bytes come back when those calls finish.
func TestBufferBudgetRefusesWhenSpent(t *testing.T) {
	const body = 2 << 20
	h := newHarness(t, nil, func(o *Options) { o.BufferBytes = 9 << 20 }) // two bodies (2 copies each) fit, a third does not
	big := chatBody(body)
	a := startSlowUpload(t, h.agent.URL, big)
	b := startSlowUpload(t, h.agent.URL, big)
	waitFor(t, func() bool { return h.router.buffers.inUse() >= 2*bodyCopies*int64(len(big)) })
	resp, err := http.Post(h.agent.URL+"/v1/chat/completions", "application/json", strings.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || gjson.GetBytes(raw, "error.code").Str != "kars_router_busy" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third body: %d %s", resp.StatusCode, raw)
	}
	if a.finish(t) != http.StatusOK || b.finish(t) != http.StatusOK {
		t.Fatal("the admitted calls failed")
	}
	h.quiesce()
	if n := h.router.buffers.inUse(); n != 0 {
		t.Fatalf("%d bytes still held after every call finished", n)
	}
	resp, err = http.Post(h.agent.URL+"/v1/chat/completions", "application/json", strings.NewReader(big))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after release: %v %v", resp.Status, err)
	}
	resp.Body.Close()
}

// Calls in flight are capped; the next is refused with 503.
func TestMaxInflight(t *testing.T) {
	h := newHarness(t, nil, func(o *Options) { o.MaxInflight = 2 })
	a := startSlowUpload(t, h.agent.URL, chatBody(100))
	b := startSlowUpload(t, h.agent.URL, chatBody(100))
	waitFor(t, func() bool { return h.router.InFlight() == 2 })
	status, code, raw := h.rawPost("/v1/chat/completions", chatBody(100))
	if status != http.StatusServiceUnavailable || code != "kars_router_busy" {
		t.Fatalf("%d %s", status, raw)
	}
	if st, _ := h.decide(`{"action":"tool:x"}`); st != http.StatusServiceUnavailable {
		t.Fatalf("decide at the bound: %d", st)
	}
	if a.finish(t) != http.StatusOK || b.finish(t) != http.StatusOK {
		t.Fatal("admitted calls failed")
	}
}

// The review's attack: many concurrent big bodies. With a 64 MiB buffer
// budget the router's heap stays near it however many arrive, and every
// call gets an answer (200, or 503 to retry).
func TestManyBigBodiesStayBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("moves ~640 MiB through the router")
	}
	const budget = 64 << 20
	h := newHarness(t, nil, func(o *Options) { o.BufferBytes = budget })
	big := chatBody(16 << 20)
	// Collect eagerly so that the heap in use tracks what is live.
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	go func() {
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
		}
	}()
	var wg sync.WaitGroup
	var ok, busy atomic.Int64
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Post(h.agent.URL+"/v1/chat/completions", "application/json", strings.NewReader(big))
			if err != nil {
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusOK:
				ok.Add(1)
			case http.StatusServiceUnavailable:
				busy.Add(1)
			default:
				t.Errorf("status %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	close(stop)
	if ok.Load() == 0 || ok.Load()+busy.Load() != 20 {
		t.Fatalf("ok %d busy %d of 20", ok.Load(), busy.Load())
	}
	// The fake upstream in this process also holds each forwarded body
	// (its read, its record of it, its parse: 64 MiB allowed per call),
	// for at most as many calls as the budget admits at once; the
	// strings.Reader bodies cost the clients nothing. Allow that and 64
	// MiB of slack. Without the bound (commit 35a7728) the heap grew by
	// 841 MiB here with all 20 admitted.
	const admittedAtOnce = budget / (bodyCopies * 16 << 20)
	grown := int64(peak.Load()) - int64(base.HeapInuse)
	limit := int64(budget) + admittedAtOnce*64<<20 + 64<<20
	t.Logf("heap grew by %d MiB at peak (ok %d, busy %d); bound %d MiB", grown>>20, ok.Load(), busy.Load(), limit>>20)
	if grown > limit {
		t.Fatalf("heap grew by %d MiB, over %d MiB", grown>>20, limit>>20)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}
