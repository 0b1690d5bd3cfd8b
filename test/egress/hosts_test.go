package egress

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/dns/dnsmessage"
)

// The test hosts live in a network namespace the test creates, on
// TEST-NET-2 addresses (RFC 5737) that the router's refused ranges do not
// cover, routed from the host namespace through a veth pair. Nothing
// leaves the machine.
const (
	hostsGW    = "203.0.113.1"
	allowedIP  = "203.0.113.10"
	blockedIP  = "203.0.113.11"
	unlistedIP = "203.0.113.12"
	dnsIP      = "203.0.113.53"
)

// names the test DNS server answers; anything else is NXDOMAIN.
var testNames = map[string]string{
	"allowed.kars.test":  allowedIP,
	"blocked.kars.test":  blockedIP,
	"unlisted.kars.test": unlistedIP,
	"meta.kars.test":     "169.254.169.254",
	"private.kars.test":  "10.99.0.10",
}

// testHosts is the namespace with its servers.
type testHosts struct {
	ca      *x509.Certificate
	caPEM   []byte
	mu      sync.Mutex
	queries []string // names the DNS server was asked
	hits    map[string]int
}

func (h *testHosts) asked(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, q := range h.queries {
		if q == name {
			return true
		}
	}
	return false
}

// startHosts creates the namespace, its link to the host namespace, and
// HTTPS (443, 8443), HTTP (80) and DNS (53) servers in it.
func startHosts(t *testing.T) *testHosts {
	t.Helper()
	h := &testHosts{hits: map[string]int{}}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kars egress test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(2 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	h.ca, _ = x509.ParseCertificate(caDER)
	h.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var names []string
	for n := range testNames {
		names = append(names, n)
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "allowed.kars.test"}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(2 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, h.ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}

	ns, err := newNamespace()
	if err != nil {
		t.Skipf("cannot create a network namespace: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	hostIf := fmt.Sprintf("kegh%d", time.Now().UnixNano()%100000)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}); err != nil {
		t.Fatal(err)
	}
	hl, err := netlink.LinkByName(hostIf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(hl) })
	a, _ := netlink.ParseAddr(hostsGW + "/24")
	if err := netlink.AddrAdd(hl, a); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		t.Fatal(err)
	}
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	eth, _ := nh.LinkByName("eth0")
	lo, _ := nh.LinkByName("lo")
	for _, ip := range []string{allowedIP, blockedIP, unlistedIP, dnsIP} {
		a, _ := netlink.ParseAddr(ip + "/24")
		if err := nh.AddrAdd(eth, a); err != nil {
			t.Fatal(err)
		}
	}
	nh.LinkSetUp(lo)
	if err := nh.LinkSetUp(eth); err != nil {
		t.Fatal(err)
	}
	// Replies to the pods (NATed to the gateway address) go back the same way.
	if err := nh.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP(hostsGW)}); err != nil {
		t.Fatal(err)
	}

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.hits[r.Host]++
		h.mu.Unlock()
		fmt.Fprintf(w, "hello from %s via %s\n", strings.Split(r.Host, ":")[0], r.Context().Value(http.LocalAddrContextKey))
	})
	err = inNamespace(ns, func() error {
		for _, ip := range []string{allowedIP, blockedIP, unlistedIP} {
			for _, port := range []int{443, 8443} {
				l, err := tls.Listen("tcp", fmt.Sprintf("%s:%d", ip, port), &tls.Config{Certificates: []tls.Certificate{cert}})
				if err != nil {
					return err
				}
				serve(t, l, handler)
			}
			l, err := net.Listen("tcp", ip+":80")
			if err != nil {
				return err
			}
			serve(t, l, handler)
		}
		pc, err := net.ListenPacket("udp", dnsIP+":53")
		if err != nil {
			return err
		}
		t.Cleanup(func() { pc.Close() })
		go h.serveDNS(pc)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func serve(t *testing.T, l net.Listener, h http.Handler) {
	// Refused clients abort their handshakes: not worth a log line.
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// serveDNS is an authoritative server for testNames.
func (h *testHosts) serveDNS(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		var m dnsmessage.Message
		if m.Unpack(buf[:n]) != nil || len(m.Questions) != 1 {
			continue
		}
		q := m.Questions[0]
		name := strings.TrimSuffix(strings.ToLower(q.Name.String()), ".")
		h.mu.Lock()
		h.queries = append(h.queries, name)
		h.mu.Unlock()
		resp := dnsmessage.Message{Header: dnsmessage.Header{ID: m.ID, Response: true, Authoritative: true}, Questions: m.Questions}
		ip, ok := testNames[name]
		switch {
		case !ok:
			resp.RCode = dnsmessage.RCodeNameError
		case q.Type == dnsmessage.TypeA:
			resp.Answers = []dnsmessage.Resource{{Header: dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
				Body: &dnsmessage.AResource{A: netip.MustParseAddr(ip).As4()}}}
		}
		out, err := resp.Pack()
		if err == nil {
			pc.WriteTo(out, from)
		}
	}
}

// newNamespace creates a network namespace without moving any thread of
// this process into it for longer than the call.
func newNamespace() (netns.NsHandle, error) {
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		ns, err := netns.New()
		ch <- result{ns, err}
	}()
	r := <-ch
	return r.ns, r.err
}

// inNamespace runs fn on a thread inside ns; sockets fn creates stay there.
func inNamespace(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}
