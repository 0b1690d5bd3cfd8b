package egress

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// testNetns creates a fresh network namespace with lo up and a dummy
// link carrying a "host" address and the metadata address, and
// returns a handle to it. It skips when the kernel features are missing.
func testNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("egress guard tests need root (CAP_NET_ADMIN, CAP_SETUID); CI runs as root")
	}
	ch := make(chan netns.NsHandle, 1)
	errc := make(chan error, 1)
	go func() {
		// The thread that created the namespace is never unlocked: it dies
		// with the goroutine instead of carrying the namespace elsewhere.
		runtime.LockOSThread()
		ns, err := netns.New()
		if err != nil {
			errc <- err
			return
		}
		ch <- ns
	}()
	var ns netns.NsHandle
	select {
	case err := <-errc:
		t.Skipf("cannot create a network namespace: %v", err)
	case ns = <-ch:
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, _ := h.LinkByName("lo")
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	// A veth pair stands in for the pod's link to the host (this kernel
	// has no dummy driver); both ends stay in the namespace.
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "host0"}, PeerName: "host1"}); err != nil {
		t.Fatal(err)
	}
	d, _ := h.LinkByName("host0")
	peer, _ := h.LinkByName("host1")
	if err := h.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"10.250.0.1/24", "169.254.169.254/32"} {
		addr, _ := netlink.ParseAddr(a)
		if err := h.AddrAdd(d, addr); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.LinkSetUp(d); err != nil {
		t.Fatal(err)
	}
	return ns
}

// inNetnsAs runs fn on a thread that has joined ns and switched its own
// (thread-local) effective UID to uid. The thread is discarded afterwards.
func inNetnsAs(ns netns.NsHandle, uid int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		if uid != 0 {
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
				errc <- e
				return
			}
		}
		errc <- fn()
	}()
	return <-errc
}

// listen starts TCP listeners and a UDP echo responder as root in ns.
func listen(t *testing.T, ns netns.NsHandle, tcp []string, udp []string) {
	t.Helper()
	err := inNetnsAs(ns, 0, func() error {
		for _, a := range tcp {
			l, err := net.Listen("tcp", a)
			if err != nil {
				return fmt.Errorf("listen %s: %w", a, err)
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Write([]byte("ok"))
					c.Close()
				}
			}()
		}
		for _, a := range udp {
			pc, err := net.ListenPacket("udp", a)
			if err != nil {
				return err
			}
			t.Cleanup(func() { pc.Close() })
			go func() {
				buf := make([]byte, 512)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					pc.WriteTo(buf[:n], from)
				}
			}()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func reach(ns netns.NsHandle, uid int, network, addr string) error {
	return inNetnsAs(ns, uid, func() error {
		c, err := net.DialTimeout(network, addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		if network == "udp" {
			if _, err := c.Write([]byte("q")); err != nil {
				return err
			}
		}
		buf := make([]byte, 2)
		if _, err := c.Read(buf); err != nil {
			return err
		}
		return nil
	})
}

func TestApplyConfinesAgentUID(t *testing.T) {
	ns := testNetns(t)
	listen(t, ns,
		[]string{"127.0.0.1:8443", "127.0.0.1:9000", "[::1]:8443", "10.250.0.1:80", "169.254.169.254:80", "10.250.0.1:53"},
		[]string{"10.250.0.1:53", "10.250.0.1:5353"})

	targets := []struct {
		network, addr string
		agent         bool // reachable for UID 1000 under the policy with DNS 10.250.0.1
	}{
		{"tcp", "127.0.0.1:8443", true},
		{"tcp", "127.0.0.1:9000", false},
		{"tcp", "[::1]:8443", false},
		{"tcp", "10.250.0.1:80", false},
		{"tcp", "169.254.169.254:80", false},
		{"udp", "10.250.0.1:53", true},
		{"tcp", "10.250.0.1:53", true},
		{"udp", "10.250.0.1:5353", false},
	}
	// Before the guard, everything is reachable for everyone: the probes
	// themselves work, so a failure later is the guard's doing.
	for _, tg := range targets {
		if err := reach(ns, 1000, tg.network, tg.addr); err != nil {
			t.Fatalf("without guard, uid 1000 %s %s: %v", tg.network, tg.addr, err)
		}
	}
	rules, err := Rules(Policy{AgentUID: 1000, RouterPort: 8443, DNS: []netip.Addr{netip.MustParseAddr("10.250.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	// Twice: re-running the guard must replace, not duplicate.
	for range 2 {
		if err := Apply(int(ns), rules); err != nil {
			t.Fatal(err)
		}
	}
	for _, tg := range targets {
		err := reach(ns, 1000, tg.network, tg.addr)
		if tg.agent && err != nil {
			t.Errorf("uid 1000 %s %s: want reachable, got %v", tg.network, tg.addr, err)
		}
		if !tg.agent {
			if err == nil {
				t.Errorf("uid 1000 %s %s: want blocked, got through", tg.network, tg.addr)
			} else if tg.network == "tcp" && !errors.Is(err, unix.ECONNREFUSED) && !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EPERM) {
				t.Errorf("uid 1000 %s %s: want a fast refusal, got %v", tg.network, tg.addr, err)
			}
		}
		// Other UIDs (the router is 1001) are not confined.
		if err := reach(ns, 1001, tg.network, tg.addr); err != nil {
			t.Errorf("uid 1001 %s %s: %v", tg.network, tg.addr, err)
		}
	}
	if n := countRules(t, ns); n != len(rules) {
		t.Errorf("table has %d rules after two applies, want %d", n, len(rules))
	}
	if err := Remove(int(ns)); err != nil {
		t.Fatal(err)
	}
	if err := Remove(int(ns)); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if err := reach(ns, 1000, "tcp", "127.0.0.1:9000"); err != nil {
		t.Errorf("after Remove, uid 1000 still blocked: %v", err)
	}
}

func countRules(t *testing.T, ns netns.NsHandle) int {
	t.Helper()
	c := conn(int(ns))
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, tb := range tables {
		if tb.Name != TableName {
			continue
		}
		chains, err := c.ListChains()
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range chains {
			if ch.Table.Name == TableName {
				rs, err := c.GetRules(tb, ch)
				if err != nil {
					t.Fatal(err)
				}
				n += len(rs)
			}
		}
	}
	if strings.Contains(TableName, " ") {
		t.Fatal("table name must be a single word")
	}
	return n
}

// TestApplyRedirectsToTheRouter: under the contract policy the agent's TCP
// to any address but loopback and metadata, and its DNS to any resolver,
// arrive at the router's ports on loopback, with the original destination
// readable from conntrack (SO_ORIGINAL_DST); other UIDs are not redirected.
func TestApplyRedirectsToTheRouter(t *testing.T) {
	ns := testNetns(t)
	got := make(chan string, 8)
	err := inNetnsAs(ns, 0, func() error {
		l, err := net.Listen("tcp4", "127.0.0.1:15001")
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				got <- "tcp " + originalDst(t, c)
				c.Write([]byte("ok"))
				c.Close()
			}
		}()
		pc, err := net.ListenPacket("udp4", "127.0.0.1:15053")
		if err != nil {
			return err
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 512)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				got <- "udp " + string(buf[:n])
				pc.WriteTo([]byte("ok"), from)
			}
		}()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	listen(t, ns, []string{"10.250.0.1:443", "169.254.169.254:80", "127.0.0.1:9000"}, []string{"10.250.0.1:53"})
	rules, err := Rules(DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(int(ns), rules); err != nil {
		t.Fatal(err)
	}
	// TCP to an outside address lands at the transparent port.
	if err := reach(ns, 1000, "tcp", "10.250.0.1:443"); err != nil {
		t.Fatalf("uid 1000 tcp 10.250.0.1:443: %v", err)
	}
	if g := <-got; g != "tcp 10.250.0.1:443" {
		t.Errorf("transparent listener saw %q", g)
	}
	// DNS to any resolver lands at the stub.
	err = inNetnsAs(ns, 1000, func() error {
		c, err := net.Dial("udp4", "10.250.0.1:53")
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write([]byte("query"))
		buf := make([]byte, 8)
		n, err := c.Read(buf)
		if err == nil && string(buf[:n]) != "ok" {
			err = fmt.Errorf("reply %q", buf[:n])
		}
		return err
	})
	if err != nil {
		t.Fatalf("uid 1000 DNS: %v", err)
	}
	if g := <-got; g != "udp query" {
		t.Errorf("DNS stub saw %q", g)
	}
	// Metadata and other loopback ports stay refused, not redirected.
	for _, a := range []string{"169.254.169.254:80", "127.0.0.1:9000"} {
		if err := reach(ns, 1000, "tcp", a); err == nil {
			t.Errorf("uid 1000 reached %s", a)
		}
	}
	// The router's UID is not redirected: it reaches the real servers.
	if err := reach(ns, 1001, "tcp", "10.250.0.1:443"); err != nil {
		t.Errorf("uid 1001: %v", err)
	}
	select {
	case g := <-got:
		t.Errorf("uid 1001's connection was redirected: %s", g)
	default:
	}
}

func originalDst(t *testing.T, c net.Conn) string {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err.Error()
	}
	var out string
	raw.Control(func(fd uintptr) {
		mreq, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, 80) // SO_ORIGINAL_DST
		if err != nil {
			out = err.Error()
			return
		}
		port := int(mreq.Multiaddr[2])<<8 | int(mreq.Multiaddr[3])
		out = fmt.Sprintf("%d.%d.%d.%d:%d", mreq.Multiaddr[4], mreq.Multiaddr[5], mreq.Multiaddr[6], mreq.Multiaddr[7], port)
	})
	return out
}
