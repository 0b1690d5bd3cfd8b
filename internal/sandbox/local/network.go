package local

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kars-io/kars/internal/egress"
)

// link is the pod's point-to-point link to the host: a /30 from the
// address pool, the host side of a veth pair, and the host's NAT table.
type link struct {
	Index  int    `json:"index"`
	HostIf string `json:"hostIf"`
	// HostIfIndex is the host interface's index once it exists. Teardown
	// deletes the interface by it, not by name: the pair vanishes with the
	// pod's namespace, and from then on another pod (of any kars process
	// on the host) may hold the name. The kernel allocates indexes
	// cyclically, so an index is not reused for a long time.
	HostIfIndex int        `json:"hostIfIndex,omitempty"`
	HostAddr    netip.Addr `json:"hostAddr"`
	PodAddr     netip.Addr `json:"podAddr"`
	Table       string     `json:"table"`
}

func linkFor(pool netip.Prefix, index int, id string) link {
	base := pool.Masked().Addr().As4()
	n := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	n += uint32(index) * 4
	addr := func(off uint32) netip.Addr {
		v := n + off
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return link{Index: index, HostIf: fmt.Sprintf("karsh%d", index), HostAddr: addr(1), PodAddr: addr(2), Table: "kars-" + id}
}

// poolSize is the number of /30 links the pool holds.
func poolSize(pool netip.Prefix) int { return 1 << (30 - pool.Bits()) }

// hostLinkLock serialises link allocation and creation among all kars
// processes on the host, whatever their state roots: the host's interfaces
// are the record of which /30s are taken.
const hostLinkLock = "/run/kars/local-links.lock"

func lockHostLinks() (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(hostLinkLock), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(hostLinkLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return sync.OnceFunc(func() { f.Close() }), nil
}

// allocateLink picks the lowest /30 of the pool whose interface name is
// free and whose addresses no host interface uses. The caller holds the
// host link lock until the link exists.
func allocateLink(pool netip.Prefix, id string) (link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return link{}, err
	}
	names := map[string]bool{}
	for _, l := range links {
		names[l.Attrs().Name] = true
	}
	inUse, err := hostAddrsInUse()
	if err != nil {
		return link{}, err
	}
	for i := 0; i < poolSize(pool); i++ {
		l := linkFor(pool, i, id)
		if names[l.HostIf] || slices.ContainsFunc(inUse, func(p netip.Prefix) bool {
			return p.Contains(l.HostAddr) || p.Contains(l.PodAddr)
		}) {
			continue
		}
		return l, nil
	}
	return link{}, fmt.Errorf("address pool %s exhausted", pool)
}

// hostAddrsInUse lists every address configured on the host, so that a
// pod link never shadows a network some other tool (or another kars state
// root) already uses.
func hostAddrsInUse() ([]netip.Prefix, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range addrs {
		if p, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			ones, _ := a.Mask.Size()
			out = append(out, netip.PrefixFrom(p, ones).Masked())
		}
	}
	return out, nil
}

// newNetns creates a network namespace and returns a handle to it without
// moving any long-lived thread into it.
func newNetns() (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		f := os.NewFile(uintptr(ns), "netns")
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime discards it.
			f.Close()
			ch <- result{err: err}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{f: f}
	}()
	r := <-ch
	if r.err != nil {
		return nil, fmt.Errorf("network namespace: %w", r.err)
	}
	return r.f, nil
}

// inNetns runs fn on an OS thread that has joined the namespace ns. Sockets
// fn creates belong to ns; processes fn forks start in ns. The thread
// returns to the host namespace afterwards, or is discarded if it cannot.
func inNetns(ns *os.File, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("join pod network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("return to host network namespace: %w", err))
			return // still locked: the thread dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// netnsCookie returns the cookie of the calling thread's network namespace
// (SO_NETNS_COOKIE, Linux 5.14): unlike the namespace's inode number, it
// is never given to another namespace.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("network namespace cookie: %w", err)
	}
	return c, nil
}

// listenLoopback binds a TCP listener on 127.0.0.1:port in the calling
// thread's network namespace, returning it as a file to hand to a child.
func listenLoopback(port uint16) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrInet4{Port: int(port), Addr: [4]byte{127, 0, 0, 1}})
	}
	if err == nil {
		err = unix.Listen(fd, 1024)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen 127.0.0.1:%d: %w", port, err)
	}
	return os.NewFile(uintptr(fd), fmt.Sprintf("listener-%d", port)), nil
}

// setupLink creates the veth pair (pod side "eth0" inside ns), addresses
// and routes, enables forwarding, and installs the host's NAT table and
// the pod's egress guard. It returns the host interface's index as soon
// as the pair exists, also when a later step fails. The caller holds the
// host link lock, so the name still denotes the pair just created.
func setupLink(ns *os.File, l link) (hostIfIndex int, err error) {
	if err := netlink.LinkAdd(&netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: l.HostIf},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(ns.Fd())),
	}); err != nil {
		return 0, fmt.Errorf("create veth %s: %w", l.HostIf, err)
	}
	host, err := netlink.LinkByName(l.HostIf)
	if err != nil {
		return 0, err
	}
	return host.Attrs().Index, configureLink(ns, l, host)
}

// configureLink is the rest of setupLink, once the pair exists.
func configureLink(ns *os.File, l link, host netlink.Link) error {
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: ipnet(l.HostAddr, 30)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", l.HostAddr, l.HostIf, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(netns.NsHandle(int(ns.Fd())))
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("pod loopback: %w", err)
	}
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipnet(l.PodAddr, 30)}); err != nil {
		return fmt.Errorf("pod address %s: %w", l.PodAddr, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return err
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(l.HostAddr.AsSlice())}); err != nil {
		return fmt.Errorf("pod default route via %s: %w", l.HostAddr, err)
	}
	// The router's upstream traffic is routed by the host; enabling
	// forwarding is host-global and is left on at teardown, since other
	// pods and tools may rely on it.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0); err != nil {
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	if err := installHostTable(l); err != nil {
		return err
	}
	rules, err := egress.Rules(egress.DefaultPolicy())
	if err != nil {
		return err
	}
	return egress.Apply(int(ns.Fd()), rules)
}

func ipnet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, 32)}
}

// installHostTable adds the pod's own host table: masquerade the pod's
// address on the way out and let forwarded traffic through for it.
func installHostTable(l link) error {
	c, _ := nftables.New()
	t := &nftables.Table{Name: l.Table, Family: nftables.TableFamilyIPv4}
	if err := egress.ReplaceTable(c, t); err != nil {
		return fmt.Errorf("host table ip %s: %w", l.Table, err)
	}
	accept := nftables.ChainPolicyAccept
	nat := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	ifname := func(key expr.MetaKey, op expr.CmpOp) []expr.Any {
		b := make([]byte, unix.IFNAMSIZ)
		copy(b, l.HostIf)
		return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: b}}
	}
	saddr := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: l.PodAddr.AsSlice()},
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: concat(saddr, ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq), []expr.Any{&expr.Masq{}})})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: concat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq), []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}})})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: concat(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq), []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	})})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("host table ip %s: %w", l.Table, err)
	}
	return nil
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// teardownLink deletes the host side of the veth (which takes the pod side
// with it) and the host table. Missing pieces are not errors: teardown
// runs after crashes, when some never existed or already vanished. A pair
// whose index was never recorded lived only in a namespace the pod held
// and has vanished with it.
func teardownLink(l link) error {
	var errs []error
	if l.HostIfIndex != 0 {
		if h, err := netlink.LinkByIndex(l.HostIfIndex); err == nil && h.Attrs().Name == l.HostIf {
			// The link also disappears on its own once the pod's namespace
			// is destroyed; losing that race is not an error.
			if err := netlink.LinkDel(h); err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete %s: %w", l.HostIf, err))
			}
		}
	}
	c, _ := nftables.New()
	if tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4); err == nil {
		for _, t := range tables {
			if t.Name == l.Table {
				c.DelTable(t)
				if err := c.Flush(); err != nil {
					errs = append(errs, fmt.Errorf("delete table ip %s: %w", l.Table, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}
