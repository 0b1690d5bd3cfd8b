package egress

import (
	"net/netip"
	"strconv"
)

// Outcome is what the guard does with a new connection or datagram.
type Outcome struct {
	// Verdict is "redirected" (to the router), "accepted" or "refused".
	Verdict string
	// To is where a redirected attempt goes (127.0.0.1:port).
	To netip.AddrPort
	// Rule is the comment of the deciding rule.
	Rule string
}

// Classify evaluates rules — the values Apply installs — for a new
// attempt of uid to dst over proto, as the kernel does: the NAT chain
// first, then the filter chain on the rewritten destination. It lets
// `kars trace` say what the kernel did with an attempt it observed. (The
// output hook keeps the pre-NAT device, so rules naming an output
// interface match only destinations reached over it in the first place.)
func Classify(rules []Rule, uid uint32, proto Proto, dst netip.AddrPort) Outcome {
	a, port := dst.Addr().Unmap(), dst.Port()
	origLoopback := a.IsLoopback()
	var out Outcome
	for _, r := range rules {
		if r.Chain != ChainNAT || !r.matches(uid, proto, a, port, origLoopback) {
			continue
		}
		out = Outcome{Verdict: "redirected", To: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), r.RedirectPort), Rule: r.Comment}
		a, port = out.To.Addr(), out.To.Port()
		break
	}
	for _, r := range rules {
		if r.Chain != ChainOutput || !r.matches(uid, proto, a, port, origLoopback) {
			continue
		}
		if r.Verdict == Accept {
			if out.Verdict == "" {
				out = Outcome{Verdict: "accepted", Rule: r.Comment}
			}
			return out
		}
		return Outcome{Verdict: "refused", Rule: r.Comment}
	}
	if out.Verdict == "" {
		out = Outcome{Verdict: "accepted", Rule: "no rule (not the agent's UID)"}
	}
	return out
}

func (r Rule) matches(uid uint32, proto Proto, a netip.Addr, port uint16, overLoopback bool) bool {
	if r.UID != uid || r.Established {
		return false
	}
	switch r.Family {
	case IPv4:
		if !a.Is4() {
			return false
		}
	case IPv6:
		if !a.Is6() {
			return false
		}
	}
	if r.Proto != AnyProto && r.Proto != proto {
		return false
	}
	if r.OutIface == "lo" && !overLoopback {
		return false
	}
	if r.Daddr.IsValid() && r.Daddr != a {
		return false
	}
	for _, p := range r.NotDaddr {
		if p.Contains(a) {
			return false
		}
	}
	return r.Dport == 0 || r.Dport == port
}

// String renders an outcome for people.
func (o Outcome) String() string {
	switch o.Verdict {
	case "redirected":
		return "redirected to the router (127.0.0.1:" + strconv.Itoa(int(o.To.Port())) + ", " + o.Rule + ")"
	case "refused":
		return "refused by the egress guard (" + o.Rule + ")"
	}
	return "accepted (" + o.Rule + ")"
}
