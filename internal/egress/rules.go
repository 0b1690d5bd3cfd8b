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
// 127.0.0.1:8443).
const (
	DefaultAgentUID   = 1000
	DefaultRouterPort = 8443
)

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
	// DNS lists resolvers the agent may query on port 53 (UDP and TCP). In
	// Kubernetes this is the cluster DNS service IP; locally it is empty
	// because the agent resolves nothing itself.
	DNS []netip.Addr
}

// DefaultPolicy returns the sandbox contract's policy with no DNS.
func DefaultPolicy() Policy {
	return Policy{AgentUID: DefaultAgentUID, RouterPort: DefaultRouterPort}
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
)

// Rule is one packet filter rule for sockets owned by UID. Unset fields
// match anything.
type Rule struct {
	UID uint32
	// Established matches packets of connections conntrack already saw
	// in both directions (and related ICMP), e.g. the agent's replies on a
	// port it listens on.
	Established bool
	Family      Family
	Proto       Proto
	OutIface    string
	Daddr       netip.Addr
	Dport       uint16
	Verdict     Verdict
	// Comment is stored with the rule so `nft list ruleset` explains it.
	Comment string
}

// Rules returns the guard's rules in evaluation order.
func Rules(p Policy) ([]Rule, error) {
	if p.RouterPort == 0 {
		return nil, fmt.Errorf("egress: router port must be set")
	}
	uid := p.AgentUID
	rs := []Rule{
		{UID: uid, Family: IPv4, Proto: TCP, Daddr: MetadataAddr, Verdict: RejectReset, Comment: "no instance metadata"},
		{UID: uid, Family: IPv4, Daddr: MetadataAddr, Verdict: RejectAdminProhibited, Comment: "no instance metadata"},
		{UID: uid, Established: true, Verdict: Accept, Comment: "replies on accepted and allowed connections"},
		{UID: uid, Family: IPv4, Proto: TCP, OutIface: "lo", Daddr: netip.MustParseAddr("127.0.0.1"), Dport: p.RouterPort, Verdict: Accept, Comment: "the router"},
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
	return append(rs,
		Rule{UID: uid, Family: IPv6, Proto: TCP, Verdict: RejectReset, Comment: "no IPv6"},
		Rule{UID: uid, Family: IPv6, Verdict: RejectAdminProhibited, Comment: "no IPv6"},
		Rule{UID: uid, Proto: TCP, Verdict: RejectReset, Comment: "everything else"},
		Rule{UID: uid, Verdict: RejectAdminProhibited, Comment: "everything else"},
	), nil
}

// String renders r in nft syntax, for logs, `kars-egress-guard --print`
// and tests.
func (r Rule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "meta skuid %d", r.UID)
	if r.Established {
		b.WriteString(" ct state established,related")
	}
	if r.OutIface != "" {
		fmt.Fprintf(&b, " oifname %q", r.OutIface)
	}
	switch {
	case r.Daddr.IsValid() && r.Family == IPv6:
		fmt.Fprintf(&b, " ip6 daddr %s", r.Daddr)
	case r.Daddr.IsValid():
		fmt.Fprintf(&b, " ip daddr %s", r.Daddr)
	case r.Family == IPv4:
		b.WriteString(" meta nfproto ipv4")
	case r.Family == IPv6:
		b.WriteString(" meta nfproto ipv6")
	}
	proto := map[Proto]string{TCP: "tcp", UDP: "udp"}[r.Proto]
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
	}
	if r.Comment != "" {
		fmt.Fprintf(&b, " comment %q", r.Comment)
	}
	return b.String()
}
