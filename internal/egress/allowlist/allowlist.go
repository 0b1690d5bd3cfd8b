// Package allowlist holds egress allow rules — exact hosts and "*."
// wildcards, each with the ports it allows — compiled for matching without
// allocation, and the allowlist document kars publishes as a signed OCI
// artifact (media type DocumentMediaType).
//
// Matching: "api.github.com" matches only itself; "*.github.com" matches
// every name below github.com at any depth ("a.github.com",
// "a.b.github.com") but not github.com itself. A rule with no ports allows
// DefaultPort; AnyPort allows every port. Hosts are compared in the
// canonical form of internal/egress/dest.
//
// The package is pure: no I/O.
package allowlist

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kars-io/kars/internal/egress/dest"
)

// DefaultPort is what an entry without ports allows: HTTPS.
const DefaultPort = 443

// AnyPort in an entry's ports allows every port.
const AnyPort = 0

// Entry is one allow rule as written: a host or "*." wildcard and its
// ports.
type Entry struct {
	Host string `json:"host"`
	// Ports allowed; empty means DefaultPort, AnyPort means all.
	Ports []uint16 `json:"ports,omitempty"`
}

// ParseEntry reads "host", "host:port", "host:*", "*.suffix[:port]" and
// "[v6]:port", returning the entry in canonical form.
func ParseEntry(s string) (Entry, error) {
	host, portStr := s, ""
	if strings.HasPrefix(s, "[") {
		if i := strings.LastIndex(s, "]:"); i > 0 {
			host, portStr = s[:i+1], s[i+2:]
		}
	} else if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host, portStr = s[:i], s[i+1:]
	}
	e := Entry{Host: host}
	switch portStr {
	case "":
		if strings.HasSuffix(s, ":") {
			return Entry{}, fmt.Errorf("allowlist entry %q: empty port", s)
		}
	case "*":
		e.Ports = []uint16{AnyPort}
	default:
		p, err := parsePort(portStr)
		if err != nil {
			return Entry{}, fmt.Errorf("allowlist entry %q: %w", s, err)
		}
		e.Ports = []uint16{p}
	}
	return e.Canonical()
}

func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || s[0] == '0' {
		return 0, fmt.Errorf("port %q: want a number from 1 to 65535 without leading zeros", s)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q: want a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

// Canonical validates e and returns it with its host canonical and its
// ports sorted and without duplicates (empty stays empty: DefaultPort).
func (e Entry) Canonical() (Entry, error) {
	host, wild := e.Host, false
	if rest, ok := strings.CutPrefix(host, "*."); ok {
		host, wild = rest, true
	}
	h, isIP, err := dest.Host(host)
	if err != nil {
		return Entry{}, fmt.Errorf("allowlist host %q: %w", e.Host, err)
	}
	if wild && isIP {
		return Entry{}, fmt.Errorf("allowlist host %q: a wildcard needs a DNS name, not an address", e.Host)
	}
	if wild && !strings.Contains(h, ".") {
		// "*.com" would allow a whole top-level domain.
		return Entry{}, fmt.Errorf("allowlist host %q: a wildcard needs at least two labels after \"*.\"", e.Host)
	}
	out := Entry{Host: h}
	if wild {
		out.Host = "*." + h
	}
	if len(e.Ports) > 0 {
		ports := slices.Clone(e.Ports)
		slices.Sort(ports)
		ports = slices.Compact(ports)
		if ports[0] == AnyPort {
			ports = []uint16{AnyPort}
		}
		out.Ports = ports
	}
	return out, nil
}

// String renders e as ParseEntry reads it when it has at most one port;
// more ports are listed after the host as "host:{80,443}".
func (e Entry) String() string {
	host := e.Host
	if strings.IndexByte(host, ':') >= 0 {
		host = "[" + host + "]" // an IPv6 address
	}
	switch len(e.Ports) {
	case 0:
		return host
	case 1:
		return joinHostPort(e.Host, e.Ports[0])
	}
	var b strings.Builder
	b.WriteString(host)
	b.WriteString(":{")
	for i, p := range e.Ports {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(int(p)))
	}
	b.WriteString("}")
	return b.String()
}

func joinHostPort(host string, port uint16) string {
	if strings.IndexByte(host, ':') >= 0 {
		host = "[" + host + "]"
	}
	if port == AnyPort {
		return host + ":*"
	}
	return host + ":" + strconv.Itoa(int(port))
}

// Allows reports whether e's ports include port.
func (e Entry) allowsPort(port uint16) bool {
	if len(e.Ports) == 0 {
		return port == DefaultPort
	}
	for _, p := range e.Ports {
		if p == AnyPort || p == port {
			return true
		}
	}
	return false
}

// Rule is an entry with where it comes from, as compiled into a List.
type Rule struct {
	Entry
	// Name identifies the rule in decisions and audit entries, for
	// example "allowlist sha256:ab12… api.github.com:443".
	Name string
	// Expires, when set, is when the rule stops matching (an approval's
	// expiry); the zero time never expires.
	Expires time.Time
}

// List is a compiled set of rules. The zero value matches nothing. A List
// is immutable once built and safe for concurrent use.
type List struct {
	exact map[string][]Rule
	// wild is keyed by the suffix after "*.".
	wild map[string][]Rule
	n    int
}

// Compile builds a List. Rules must be canonical (Entry.Canonical).
func Compile(rules []Rule) *List {
	l := &List{exact: map[string][]Rule{}, wild: map[string][]Rule{}, n: len(rules)}
	for _, r := range rules {
		if suffix, ok := strings.CutPrefix(r.Host, "*."); ok {
			l.wild[suffix] = append(l.wild[suffix], r)
		} else {
			l.exact[r.Host] = append(l.exact[r.Host], r)
		}
	}
	return l
}

// Len is the number of rules.
func (l *List) Len() int {
	if l == nil {
		return 0
	}
	return l.n
}

// Match returns the first rule, exact names before wildcards and nearer
// wildcards before farther ones, that allows host (canonical) on port at
// now. It does not allocate.
func (l *List) Match(host string, port uint16, now time.Time) (*Rule, bool) {
	if l == nil || l.n == 0 {
		return nil, false
	}
	if r := first(l.exact[host], port, now); r != nil {
		return r, true
	}
	for p, ok := dest.Parent(host); ok; p, ok = dest.Parent(p) {
		if r := first(l.wild[p], port, now); r != nil {
			return r, true
		}
	}
	return nil, false
}

// MatchHost is Match on any port: whether some rule names host at all
// (the DNS stub answers names a connection could be allowed to).
func (l *List) MatchHost(host string, now time.Time) (*Rule, bool) {
	if l == nil || l.n == 0 {
		return nil, false
	}
	if r := firstAnyPort(l.exact[host], now); r != nil {
		return r, true
	}
	for p, ok := dest.Parent(host); ok; p, ok = dest.Parent(p) {
		if r := firstAnyPort(l.wild[p], now); r != nil {
			return r, true
		}
	}
	return nil, false
}

func first(rs []Rule, port uint16, now time.Time) *Rule {
	for i := range rs {
		r := &rs[i]
		if r.allowsPort(port) && (r.Expires.IsZero() || now.Before(r.Expires)) {
			return r
		}
	}
	return nil
}

func firstAnyPort(rs []Rule, now time.Time) *Rule {
	for i := range rs {
		r := &rs[i]
		if r.Expires.IsZero() || now.Before(r.Expires) {
			return r
		}
	}
	return nil
}

// Rules returns every rule, exact before wildcard, each group sorted by
// host, for listings.
func (l *List) Rules() []Rule {
	if l == nil {
		return nil
	}
	var out []Rule
	for _, m := range []map[string][]Rule{l.exact, l.wild} {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			out = append(out, m[k]...)
		}
	}
	return out
}
