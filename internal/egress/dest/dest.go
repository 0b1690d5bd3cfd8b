// Package dest gives egress destinations one spelling and says which
// addresses the agent may never be sent to.
//
// Every egress decision — the forward proxy's, the DNS stub's, the
// allowlist's and the blocklist's — keys on a host name, so the name must
// have exactly one form: Host lowercases it, drops one trailing dot and
// refuses anything a client could read two ways (non-ASCII, empty labels, a
// numeric top-level label that some resolvers take for an IP address).
// Refused lists the address ranges the router never connects to and never
// hands out in a DNS answer on the agent's behalf (loopback, private,
// link-local, CGNAT, instance metadata, ...): a name that policy allows
// must not be a way into the cluster or the node (DNS rebinding).
//
// The package is pure: no I/O, no network.
package dest

import (
	"errors"
	"net/netip"
)

// MaxHostLen bounds a host name (RFC 1035 §2.3.4, without the trailing dot).
const MaxHostLen = 253

// Errors of Host. They are values so that refusing a bad name allocates
// nothing.
var (
	ErrEmpty     = errors.New("empty host name")
	ErrTooLong   = errors.New("host name longer than 253 bytes")
	ErrLabel     = errors.New("host name has an empty label or one longer than 63 bytes")
	ErrByte      = errors.New("host name may contain only ASCII letters, digits, '-' and '_' (use punycode for international names)")
	ErrHyphen    = errors.New("a host name label may not start or end with '-'")
	ErrNumericTL = errors.New("host name ends in a numeric label but is not an IPv4 address")
)

// Host returns the canonical form of a host name or IP literal: ASCII
// lowercase, without a trailing dot, IPv6 without brackets, IPv4-mapped
// IPv6 as IPv4. isIP reports an IP literal. A string that is neither a
// valid name nor an address is an error. Host does not allocate when s is
// already canonical.
func Host(s string) (host string, isIP bool, err error) {
	if len(s) >= 2 && s[0] == '[' && s[len(s)-1] == ']' {
		a, err := netip.ParseAddr(s[1 : len(s)-1])
		if err != nil || !a.Is6() || a.Zone() != "" {
			return "", false, ErrByte
		}
		return canonicalAddr(a), true, nil
	}
	if len(s) > 0 && s[len(s)-1] == '.' {
		s = s[:len(s)-1]
	}
	if s == "" {
		return "", false, ErrEmpty
	}
	if len(s) > MaxHostLen {
		return "", false, ErrTooLong
	}
	// ParseAddr only for what could be an address: its error allocates.
	if looksLikeAddr(s) {
		if a, err := netip.ParseAddr(s); err == nil {
			if a.Zone() != "" {
				return "", false, ErrByte
			}
			c := canonicalAddr(a)
			if c == s {
				return s, true, nil
			}
			return c, true, nil
		}
	}
	upper := false
	labelStart, lastLabelNumeric := 0, true
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			n := i - labelStart
			if n == 0 || n > 63 {
				return "", false, ErrLabel
			}
			if s[labelStart] == '-' || s[i-1] == '-' {
				return "", false, ErrHyphen
			}
			if i < len(s) {
				labelStart, lastLabelNumeric = i+1, true
			}
			continue
		}
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c == '-', c == '_':
			lastLabelNumeric = false
		case c >= 'A' && c <= 'Z':
			upper, lastLabelNumeric = true, false
		case c >= '0' && c <= '9':
		default:
			return "", false, ErrByte
		}
	}
	if lastLabelNumeric {
		// "1.2.3", "0x7f.1" or "2130706433": inet_aton reads these as
		// addresses; no real top-level domain is numeric.
		return "", false, ErrNumericTL
	}
	if !upper {
		return s, false, nil
	}
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b), false, nil
}

// looksLikeAddr reports whether s could be an IP literal: it has a colon
// (IPv6) or only digits and dots (IPv4).
func looksLikeAddr(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == ':' {
			return true
		}
		if c != '.' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func canonicalAddr(a netip.Addr) string { return a.Unmap().String() }

// Parent returns host without its first label ("a.b.c" → "b.c"), and false
// when host has a single label.
func Parent(host string) (string, bool) {
	for i := 0; i < len(host); i++ {
		if host[i] == '.' {
			return host[i+1:], true
		}
	}
	return "", false
}

// refused are the ranges an agent's traffic may never be sent to, with why.
// The order puts the most specific first so that the reason names the
// metadata endpoint rather than "link-local".
var refused = []struct {
	p      netip.Prefix
	reason string
}{
	{netip.MustParsePrefix("169.254.169.254/32"), "the cloud instance-metadata endpoint"},
	{netip.MustParsePrefix("fd00:ec2::254/128"), "the cloud instance-metadata endpoint"},
	{netip.MustParsePrefix("100.100.100.200/32"), "the cloud instance-metadata endpoint"},
	{netip.MustParsePrefix("0.0.0.0/8"), "the unspecified network"},
	{netip.MustParsePrefix("10.0.0.0/8"), "a private address"},
	{netip.MustParsePrefix("100.64.0.0/10"), "a carrier-grade NAT (CGNAT) address"},
	{netip.MustParsePrefix("127.0.0.0/8"), "a loopback address"},
	{netip.MustParsePrefix("169.254.0.0/16"), "a link-local address"},
	{netip.MustParsePrefix("172.16.0.0/12"), "a private address"},
	{netip.MustParsePrefix("192.0.0.0/24"), "an IETF protocol assignment"},
	{netip.MustParsePrefix("192.168.0.0/16"), "a private address"},
	{netip.MustParsePrefix("224.0.0.0/4"), "a multicast address"},
	{netip.MustParsePrefix("240.0.0.0/4"), "a reserved address"},
	{netip.MustParsePrefix("::/128"), "the unspecified address"},
	{netip.MustParsePrefix("::1/128"), "a loopback address"},
	{netip.MustParsePrefix("fc00::/7"), "a private (unique local) address"},
	{netip.MustParsePrefix("fe80::/10"), "a link-local address"},
	{netip.MustParsePrefix("ff00::/8"), "a multicast address"},
	{netip.MustParsePrefix("64:ff9b::/96"), "a NAT64 address (it embeds an IPv4 address)"},
	{netip.MustParsePrefix("2002::/16"), "a 6to4 address (it embeds an IPv4 address)"},
}

// Refused reports why the router must not connect to a on the agent's
// behalf, or "" when it may. IPv4-mapped IPv6 addresses are judged as the
// IPv4 address they carry.
func Refused(a netip.Addr) string {
	if !a.IsValid() {
		return "an invalid address"
	}
	a = a.Unmap()
	for _, r := range refused {
		if r.p.Contains(a) {
			return r.reason
		}
	}
	return ""
}
