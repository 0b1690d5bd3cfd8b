package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/kars-io/kars/internal/egress/resolve"
)

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

// newServer serves the stub on loopback UDP and TCP with a fixed policy:
// names under allowed.test are allowed.
func newServer(t *testing.T) (*Server, string, *[]Query) {
	t.Helper()
	var mu sync.Mutex
	var seen []Query
	s := &Server{
		Decide: func(name string) Decision {
			if name == "allowed.test" || strings.HasSuffix(name, ".allowed.test") {
				return Decision{Allow: true, Rule: "allowlist *.allowed.test", Reason: "the allowlist allows it"}
			}
			return Decision{Rule: "default-deny", Reason: "no allowlist entry allows this host"}
		},
		Resolver: resolve.New(lookupTable(map[string][]string{
			"allowed.test":        {"198.51.100.10", "198.51.100.11"},
			"rebind.allowed.test": {"10.1.2.3"},
			"meta.allowed.test":   {"169.254.169.254"},
			"mixed.allowed.test":  {"127.0.0.1", "198.51.100.12"},
			"unlisted.test":       {"198.51.100.13"},
			"many.allowed.test":   manyAddrs(40),
		})),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Observe: func(q Query) {
			mu.Lock()
			seen = append(seen, q)
			mu.Unlock()
		},
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go s.ServeUDP(pc)
	go s.ServeTCP(ln)
	t.Cleanup(func() { pc.Close(); ln.Close() })
	return s, addr, &seen
}

func manyAddrs(n int) []string {
	var out []string
	for i := range n {
		out = append(out, netip.AddrFrom4([4]byte{198, 51, 100, byte(100 + i)}).String())
	}
	return out
}

// goResolver is a real client: Go's DNS resolver pointed at the stub.
func goResolver(addr, network string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
}

func TestRealClient(t *testing.T) {
	_, addr, _ := newServer(t)
	for _, network := range []string{"udp", "tcp"} {
		r := goResolver(addr, network)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := r.LookupNetIP(ctx, "ip4", "allowed.test")
		if err != nil || len(got) != 2 || got[0].String() != "198.51.100.10" {
			t.Errorf("%s allowed: %v %v", network, got, err)
		}
		// The agent's Go resolver asks for A and AAAA; AAAA is empty.
		got, err = r.LookupNetIP(ctx, "ip", "allowed.test")
		if err != nil || len(got) != 2 {
			t.Errorf("%s allowed (ip): %v %v", network, got, err)
		}
		for _, name := range []string{"unlisted.test", "nonexistent.allowed.test"} {
			_, err = r.LookupNetIP(ctx, "ip4", name)
			var de *net.DNSError
			if !errors.As(err, &de) || !de.IsNotFound {
				t.Errorf("%s %s: %v, want not found", network, name, err)
			}
		}
		for _, name := range []string{"rebind.allowed.test", "meta.allowed.test"} {
			if got, err := r.LookupNetIP(ctx, "ip4", name); err == nil {
				t.Errorf("%s %s resolved to %v", network, name, got)
			}
		}
		got, err = r.LookupNetIP(ctx, "ip4", "mixed.allowed.test")
		if err != nil || len(got) != 1 || got[0].String() != "198.51.100.12" {
			t.Errorf("%s mixed: %v %v (the loopback answer must be dropped)", network, got, err)
		}
	}
}

// query sends one raw query over UDP and returns the parsed response.
func query(t *testing.T, addr string, name string, typ dnsmessage.Type, edns bool) (dnsmessage.Header, []dnsmessage.Resource, []dnsmessage.Resource) {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 4242, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET})
	if edns {
		b.StartAdditionals()
		var rh dnsmessage.ResourceHeader
		rh.SetEDNS0(1232, dnsmessage.RCodeSuccess, false)
		b.OPTResource(rh, dnsmessage.OPTResource{})
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(msg)
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var m dnsmessage.Message
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatal(err)
	}
	if m.ID != 4242 || !m.Response {
		t.Fatalf("header %+v", m.Header)
	}
	return m.Header, m.Answers, m.Additionals
}

func TestRCodesAndEDE(t *testing.T) {
	_, addr, seen := newServer(t)
	h, _, add := query(t, addr, "unlisted.test.", dnsmessage.TypeA, true)
	if h.RCode != dnsmessage.RCodeNameError {
		t.Errorf("unlisted: %v", h.RCode)
	}
	if len(add) != 1 {
		t.Fatalf("no OPT in the answer to an EDNS query: %v", add)
	}
	opt := add[0].Body.(*dnsmessage.OPTResource)
	if len(opt.Options) != 1 || opt.Options[0].Code != 15 || binary.BigEndian.Uint16(opt.Options[0].Data) != edeBlocked ||
		!strings.Contains(string(opt.Options[0].Data[2:]), "default-deny") {
		t.Errorf("EDE: %+v", opt.Options)
	}
	h, _, add = query(t, addr, "unlisted.test.", dnsmessage.TypeA, false)
	if h.RCode != dnsmessage.RCodeNameError || len(add) != 0 {
		t.Errorf("without EDNS: %v %v", h.RCode, add)
	}
	h, _, _ = query(t, addr, "rebind.allowed.test.", dnsmessage.TypeA, true)
	if h.RCode != dnsmessage.RCodeRefused {
		t.Errorf("rebinding: %v", h.RCode)
	}
	for _, typ := range []dnsmessage.Type{dnsmessage.TypeAAAA, dnsmessage.TypeTXT, dnsmessage.TypeMX, 65} {
		h, ans, _ := query(t, addr, "allowed.test.", typ, false)
		if h.RCode != dnsmessage.RCodeSuccess || len(ans) != 0 {
			t.Errorf("type %v: %v %v", typ, h.RCode, ans)
		}
	}
	h, ans, _ := query(t, addr, "many.allowed.test.", dnsmessage.TypeA, false)
	if h.RCode != dnsmessage.RCodeSuccess || len(ans) != maxAnswers || ans[0].Header.TTL != 30 {
		t.Errorf("many: %v %d answers", h.RCode, len(ans))
	}
	if len(*seen) < 3 || (*seen)[0].Name != "unlisted.test" || (*seen)[0].RCode != "RCodeNameError" {
		t.Errorf("observed %+v", *seen)
	}
}

func TestMalformed(t *testing.T) {
	s, _, _ := newServer(t)
	ctx := context.Background()
	if s.Answer(ctx, []byte{1, 2, 3}, 512) != nil {
		t.Error("a message shorter than a header got an answer")
	}
	// Two questions: FORMERR.
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7})
	b.StartQuestions()
	q := dnsmessage.Question{Name: dnsmessage.MustNewName("allowed.test."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}
	b.Question(q)
	b.Question(q)
	msg, _ := b.Finish()
	var m dnsmessage.Message
	if err := m.Unpack(s.Answer(ctx, msg, 512)); err != nil || m.RCode != dnsmessage.RCodeFormatError {
		t.Errorf("two questions: %v %v", m.RCode, err)
	}
	// A response is not answered.
	b = dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, Response: true})
	msg, _ = b.Finish()
	if s.Answer(ctx, msg, 512) != nil {
		t.Error("a response got an answer")
	}
	// Class CHAOS: not implemented.
	b = dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName("version.bind."), Type: dnsmessage.TypeTXT, Class: dnsmessage.ClassCHAOS})
	msg, _ = b.Finish()
	if err := m.Unpack(s.Answer(ctx, msg, 512)); err != nil || m.RCode != dnsmessage.RCodeNotImplemented {
		t.Errorf("CHAOS: %v %v", m.RCode, err)
	}
}

func FuzzAnswer(f *testing.F) {
	for _, name := range []string{"allowed.test.", "unlisted.test.", "rebind.allowed.test.", "a\\000b.test."} {
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 1, RecursionDesired: true})
		b.StartQuestions()
		n, err := dnsmessage.NewName(name)
		if err != nil {
			continue
		}
		b.Question(dnsmessage.Question{Name: n, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
		b.StartAdditionals()
		var rh dnsmessage.ResourceHeader
		rh.SetEDNS0(4096, dnsmessage.RCodeSuccess, true)
		b.OPTResource(rh, dnsmessage.OPTResource{})
		msg, _ := b.Finish()
		f.Add(msg)
	}
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1})
	s := &Server{
		Decide: func(name string) Decision {
			return Decision{Allow: strings.HasSuffix(name, "allowed.test"), Rule: "r", Reason: "why"}
		},
		Resolver: resolve.New(lookupTable(map[string][]string{"allowed.test": {"198.51.100.10"}, "rebind.allowed.test": {"10.0.0.1"}})),
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		resp := s.Answer(context.Background(), msg, 512)
		if resp == nil {
			return
		}
		if len(resp) > 512 {
			t.Fatalf("UDP answer of %d bytes", len(resp))
		}
		var m dnsmessage.Message
		if err := m.Unpack(resp); err != nil {
			t.Fatalf("our answer does not parse: %v", err)
		}
		if !m.Response || m.ID != binary.BigEndian.Uint16(msg) {
			t.Fatalf("header %+v", m.Header)
		}
		for _, a := range m.Answers {
			if ar, ok := a.Body.(*dnsmessage.AResource); ok {
				if ip := netip.AddrFrom4(ar.A); ip.IsPrivate() || ip.IsLoopback() {
					t.Fatalf("answered a refused address %s", ip)
				}
			}
		}
	})
}
