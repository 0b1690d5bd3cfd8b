package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/egress/resolve"
)

// bareRelay is the baseline: the least a CONNECT proxy can do — read the
// request head, dial, answer 200, copy both ways — with no decision,
// resolution or bookkeeping.
func bareRelay(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			br := bufio.NewReader(c)
			req, err := http.ReadRequest(br)
			if err != nil {
				c.Close()
				return
			}
			up, err := net.Dial("tcp", req.Host)
			if err != nil {
				c.Close()
				return
			}
			c.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
			go func() { io.Copy(up, br); up.(*net.TCPConn).CloseWrite() }()
			io.Copy(c, up)
			c.Close()
			up.Close()
		}()
	}
}

type allowAll struct{}

func (allowAll) Decide(context.Context, Request) Verdict  { return Verdict{Allow: true, Rule: "bench"} }
func (allowAll) Still(Request, time.Time) Verdict         { return Verdict{Allow: true} }
func (allowAll) Refused(context.Context, Request, string) {}

// BenchmarkTunnelThroughput downloads 32 MiB over HTTPS through a CONNECT
// tunnel, through the bare relay (the baseline) and through the kars
// proxy, in the same run. The goal: kars/bare ≥ 0.8.
func BenchmarkTunnelThroughput(b *testing.B) {
	ca := newCA(b)
	payload := make([]byte, 32<<20)
	up, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{ca.leaf(b, "bench.test")}})
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(payload) })}
	go srv.Serve(up)
	defer srv.Close()
	port := up.Addr().(*net.TCPAddr).Port

	bare, _ := net.Listen("tcp", "127.0.0.1:0")
	go bareRelay(bare)
	defer bare.Close()

	p := &Proxy{Decider: allowAll{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Resolver: resolve.New(func(context.Context, string) ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}).WithRefused(func(netip.Addr) string { return "" })}
	pl, _ := net.Listen("tcp", "127.0.0.1:0")
	psrv := &http.Server{Handler: p}
	go psrv.Serve(pl)
	defer psrv.Close()

	fetch := func(b *testing.B, proxyAddr, target string) time.Duration {
		t0 := time.Now()
		conn, err := net.Dial("tcp", proxyAddr)
		if err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("CONNECT: %v %v", resp, err)
		}
		tc := tls.Client(&bufConn{Conn: conn, r: br}, &tls.Config{RootCAs: ca.pool, ServerName: "bench.test"})
		fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
		r2, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, r2.Body)
		if n != int64(len(payload)) {
			b.Fatalf("read %d bytes", n)
		}
		tc.Close()
		return time.Since(t0)
	}
	// Interleaved, so that load from elsewhere on the machine hits both
	// alike; each iteration moves the payload once through each.
	var bareT, karsT time.Duration
	b.SetBytes(int64(2 * len(payload)))
	for b.Loop() {
		bareT += fetch(b, bare.Addr().String(), fmt.Sprintf("127.0.0.1:%d", port))
		karsT += fetch(b, pl.Addr().String(), fmt.Sprintf("bench.test:%d", port))
	}
	mb := float64(b.N) * float64(len(payload)) / (1 << 20)
	b.ReportMetric(mb/bareT.Seconds(), "bare-MiB/s")
	b.ReportMetric(mb/karsT.Seconds(), "kars-MiB/s")
	b.ReportMetric(bareT.Seconds()/karsT.Seconds(), "kars/bare")
}
