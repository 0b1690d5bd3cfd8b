// Package egress builds and applies the egress guard: nftables owner-match
// rules that confine the agent's UID to the router on loopback. The guard is
// the safety net under the router — if the agent bypasses the router's
// HTTP(S) proxy settings, the kernel still refuses the packets.
//
// The rule set is a pure function of a Policy (Rules), so that it can be
// table-tested and printed; Apply installs it with github.com/google/nftables
// into one kars-owned table, replacing any previous version atomically. The
// same code serves the Kubernetes init container (cmd/kars-egress-guard,
// running in the pod's network namespace) and the local substrate.
//
// This package must not import Kubernetes packages.
package egress

import (
	"fmt"
	"net/netip"
	"strings"
)

// Defaults of the sandbox contract (DESIGN.md: agent UID 1000, router on
// 127.0.0.1:8443; the router's transparent proxy and DNS stub on
// 127.0.0.1:15001 and :15053, docs/egress.md).
const (
	DefaultAgentUID        = 1000
	DefaultRouterPort      = 8443
	DefaultTransparentPort = 15001
	DefaultDNSPort         = 15053
)

// loopback is where the agent's connections are never redirected: the
// router itself (8443) is there, and other loopback ports stay refused.
var loopback = netip.MustParsePrefix("127.0.0.0/8")

// MetadataAddr is the cloud instance-metadata endpoint (Azure IMDS, AWS,
// GCP). Reaching it would hand the agent the node's identity, so it is
// blocked by an explicit rule ahead of everything else.
var MetadataAddr = netip.MustParseAddr("169.254.169.254")

// Policy says what the agent may reach. The zero value is not useful; start
// from DefaultPolicy.
type Policy struct {
	// AgentUID is the UID whose sockets are confined.
	AgentUID uint32
	// RouterPort is the TCP port of the router on 127.0.0.1.
	RouterPort uint16
	// DNS lists resolvers the agent may query directly on port 53 (UDP
	// and TCP). It predates the router's DNS stub and cannot be combined
	// with DNSPort: with the stub, no agent packet reaches a resolver.
	DNS []netip.Addr
	// TransparentPort, when set, redirects every IPv4 TCP connection of
	// the agent — except to loopback and to the metadata address, which
	// stay refused — to the router's transparent proxy on
	// 127.0.0.1:TransparentPort, so that clients ignoring proxy variables
	// are governed too.
	TransparentPort uint16
	// DNSPort, when set, redirects the agent's DNS (UDP and TCP port 53,
	// to any IPv4 address) to the router's DNS stub on 127.0.0.1:DNSPort.
	DNSPort uint16
	// Inbound, when set, adds an input chain that closes the pod to
	// connections from outside it: only loopback, replies, ICMP and the
	// InboundPorts (the router's admin and A2A ports on a cluster) are
	// accepted. The agent's own ports are reached through the router.
	Inbound      bool
	InboundPorts []uint16
}

// DefaultPolicy returns the sandbox contract's policy: the router's agent
// port, transparent proxy and DNS stub, no inbound port (the local
// substrate reaches the pod from inside its namespace).
func DefaultPolicy() Policy {
	return Policy{AgentUID: DefaultAgentUID, RouterPort: DefaultRouterPort,
		TransparentPort: DefaultTransparentPort, DNSPort: DefaultDNSPort, Inbound: true}
}

// Family restricts a rule to one IP version.
type Family uint8

// IP versions a rule can be restricted to.
const (
	AnyFamily Family = iota
	IPv4
	IPv6
)

// Proto restricts a rule to one transport protocol.
type Proto uint8

// Transport protocols a rule can be restricted to.
const (
	AnyProto Proto = iota
	TCP
	UDP
	ICMP
	ICMPv6
)

// Verdict is what happens to a matching packet.
type Verdict uint8

// Verdicts. Rejections are loud on purpose: a TCP reset or an ICMP
// "administratively prohibited" makes a blocked connection fail at once
// with a clear error instead of hanging until a timeout.
const (
	Accept Verdict = iota
	RejectReset
	RejectAdminProhibited
	// Redirect sends a new connection to RedirectPort on loopback (NAT
	// chain only); the router reads the original destination.
	Redirect
)

// Chain is the hook a rule sits in.
type Chain uint8

// The guard's chains.
const (
	// ChainOutput filters the agent's outgoing packets (after NAT).
	ChainOutput Chain = iota
	// ChainNAT redirects the agent's new connections to the router.
	ChainNAT
	// ChainInput filters packets arriving in the pod; UID is ignored.
	ChainInput
)

// Rule is one packet filter rule for sockets owned by UID (output and NAT
// chains). Unset fields match anything.
type Rule struct {
	Chain Chain
	UID   uint32
	// Established matches packets of connections conntrack already saw
	// in both directions (and related ICMP), e.g. the agent's replies on a
	// port it listens on.
	Established bool
	Family      Family
	Proto       Proto
	OutIface    string
	InIface     string
	Daddr       netip.Addr
	// NotDaddr excludes destinations (IPv4 prefixes) from the rule.
	NotDaddr []netip.Prefix
	Dport    uint16
	Verdict  Verdict
	// RedirectPort is the local port of a Redirect verdict.
	RedirectPort uint16
	// Comment is stored with the rule so `nft list ruleset` explains it.
	Comment string
}

// Rules returns the guard's rules in evaluation order.
func Rules(p Policy) ([]Rule, error) {
	if p.RouterPort == 0 {
		return nil, fmt.Errorf("egress: router port must be set")
	}
	if len(p.DNS) > 0 && p.DNSPort != 0 {
		return nil, fmt.Errorf("egress: direct DNS resolvers and the router's DNS stub exclude each other: with the stub no agent packet may reach a resolver")
	}
	uid := p.AgentUID
	var nat []Rule
	if p.DNSPort != 0 {
		for _, proto := range []Proto{UDP, TCP} {
			nat = append(nat, Rule{Chain: ChainNAT, UID: uid, Family: IPv4, Proto: proto, Dport: 53, Verdict: Redirect, RedirectPort: p.DNSPort, Comment: "DNS goes to the router's stub"})
		}
	}
	if p.TransparentPort != 0 {
		nat = append(nat, Rule{Chain: ChainNAT, UID: uid, Family: IPv4, Proto: TCP, NotDaddr: []netip.Prefix{loopback, netip.PrefixFrom(MetadataAddr, 32)},
			Verdict: Redirect, RedirectPort: p.TransparentPort, Comment: "every other connection goes to the router's transparent proxy"})
	}
	rs := []Rule{
		{UID: uid, Family: IPv4, Proto: TCP, Daddr: MetadataAddr, Verdict: RejectReset, Comment: "no instance metadata"},
		{UID: uid, Family: IPv4, Daddr: MetadataAddr, Verdict: RejectAdminProhibited, Comment: "no instance metadata"},
		{UID: uid, Established: true, Verdict: Accept, Comment: "replies on accepted and allowed connections"},
		{UID: uid, Family: IPv4, Proto: TCP, OutIface: "lo", Daddr: netip.MustParseAddr("127.0.0.1"), Dport: p.RouterPort, Verdict: Accept, Comment: "the router"},
	}
	// No oifname match on the redirected ports: the output hook keeps the
	// device of the route the packet had before the NAT chain rewrote its
	// destination (eth0 for a connection to the outside). 127.0.0.1 is
	// only ever reached over lo.
	if p.TransparentPort != 0 {
		rs = append(rs, Rule{UID: uid, Family: IPv4, Proto: TCP, Daddr: netip.MustParseAddr("127.0.0.1"), Dport: p.TransparentPort, Verdict: Accept, Comment: "redirected to the router's transparent proxy"})
	}
	if p.DNSPort != 0 {
		for _, proto := range []Proto{UDP, TCP} {
			rs = append(rs, Rule{UID: uid, Family: IPv4, Proto: proto, Daddr: netip.MustParseAddr("127.0.0.1"), Dport: p.DNSPort, Verdict: Accept, Comment: "redirected to the router's DNS stub"})
		}
	}
	for _, d := range p.DNS {
		if !d.IsValid() {
			return nil, fmt.Errorf("egress: invalid DNS address")
		}
		d = d.Unmap()
		fam := IPv4
		if d.Is6() {
			fam = IPv6
		}
		for _, proto := range []Proto{UDP, TCP} {
			rs = append(rs, Rule{UID: uid, Family: fam, Proto: proto, Daddr: d, Dport: 53, Verdict: Accept, Comment: "cluster DNS"})
		}
	}
	rs = append(rs,
		Rule{UID: uid, Family: IPv6, Proto: TCP, Verdict: RejectReset, Comment: "no IPv6"},
		Rule{UID: uid, Family: IPv6, Verdict: RejectAdminProhibited, Comment: "no IPv6"},
		Rule{UID: uid, Proto: TCP, Verdict: RejectReset, Comment: "everything else"},
		Rule{UID: uid, Verdict: RejectAdminProhibited, Comment: "everything else"},
	)
	if p.Inbound {
		rs = append(rs,
			Rule{Chain: ChainInput, InIface: "lo", Verdict: Accept, Comment: "inside the pod"},
			Rule{Chain: ChainInput, Established: true, Verdict: Accept, Comment: "replies"},
			Rule{Chain: ChainInput, Proto: ICMP, Verdict: Accept, Comment: "ICMP and neighbour discovery"},
			Rule{Chain: ChainInput, Proto: ICMPv6, Verdict: Accept, Comment: "ICMP and neighbour discovery"},
		)
		for _, port := range p.InboundPorts {
			rs = append(rs, Rule{Chain: ChainInput, Proto: TCP, Dport: port, Verdict: Accept, Comment: "router port open to the cluster"})
		}
		rs = append(rs,
			Rule{Chain: ChainInput, Proto: TCP, Verdict: RejectReset, Comment: "nothing else reaches the pod"},
			Rule{Chain: ChainInput, Verdict: RejectAdminProhibited, Comment: "nothing else reaches the pod"},
		)
	}
	return append(nat, rs...), nil
}

// String renders r in nft syntax, for logs, `kars-egress-guard --print`
// and tests.
func (r Rule) String() string {
	var b strings.Builder
	if r.Chain != ChainInput {
		fmt.Fprintf(&b, "meta skuid %d", r.UID)
	}
	if r.Established {
		b.WriteString(" ct state established,related")
	}
	if r.InIface != "" {
		fmt.Fprintf(&b, " iifname %q", r.InIface)
	}
	if r.OutIface != "" {
		fmt.Fprintf(&b, " oifname %q", r.OutIface)
	}
	switch {
	case r.Daddr.IsValid() && r.Family == IPv6:
		fmt.Fprintf(&b, " ip6 daddr %s", r.Daddr)
	case r.Daddr.IsValid():
		fmt.Fprintf(&b, " ip daddr %s", r.Daddr)
	case r.Family == IPv4 && len(r.NotDaddr) == 0:
		b.WriteString(" meta nfproto ipv4")
	case r.Family == IPv6:
		b.WriteString(" meta nfproto ipv6")
	}
	for _, p := range r.NotDaddr {
		if p.IsSingleIP() {
			fmt.Fprintf(&b, " ip daddr != %s", p.Addr())
		} else {
			fmt.Fprintf(&b, " ip daddr != %s", p)
		}
	}
	proto := map[Proto]string{TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMPv6: "ipv6-icmp"}[r.Proto]
	switch {
	case r.Dport != 0:
		fmt.Fprintf(&b, " %s dport %d", proto, r.Dport)
	case proto != "":
		fmt.Fprintf(&b, " meta l4proto %s", proto)
	}
	switch r.Verdict {
	case Accept:
		b.WriteString(" accept")
	case RejectReset:
		b.WriteString(" reject with tcp reset")
	case RejectAdminProhibited:
		b.WriteString(" reject with icmpx admin-prohibited")
	case Redirect:
		fmt.Fprintf(&b, " redirect to :%d", r.RedirectPort)
	}
	if r.Comment != "" {
		fmt.Fprintf(&b, " comment %q", r.Comment)
	}
	return strings.TrimPrefix(b.String(), " ")
}
