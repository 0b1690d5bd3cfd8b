// Package resolve is the router's name resolution on the agent's behalf:
// one cache shared by the DNS stub (what the agent is told) and the
// forward proxy (what the router connects to), so both see the same
// addresses, with every answer split into addresses the agent may be sent
// to and addresses in refused ranges (dest.Refused) — the DNS rebinding
// defence. It also remembers which names led to which addresses, so that a
// transparently redirected connection that carries no name (no TLS SNI, no
// HTTP Host) can be decided by the name the agent looked up.
//
// Names are always resolved as fully qualified (a trailing dot), so the
// resolver's search domains never turn "api.github.com" into
// "api.github.com.cluster.local".
package resolve

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/kars-io/kars/internal/egress/dest"
)

// Defaults of a Resolver.
const (
	DefaultTTL         = 30 * time.Second
	DefaultNegativeTTL = 5 * time.Second
	maxEntries         = 10000
)

// Refusal is an address an answer held that the agent may not be sent to.
type Refusal struct {
	Addr   netip.Addr `json:"addr"`
	Reason string     `json:"reason"`
}

// Result is a resolved name.
type Result struct {
	// Allowed are the usable addresses, in the resolver's order.
	Allowed []netip.Addr
	// Refused are the addresses dropped, with why.
	Refused []Refusal
}

// Err returns an error saying why no address is usable, or nil.
func (r Result) Err(host string) error {
	if len(r.Allowed) > 0 {
		return nil
	}
	if len(r.Refused) == 0 {
		return fmt.Errorf("%s has no IPv4 address", host)
	}
	var b strings.Builder
	for i, f := range r.Refused {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s: %s", f.Addr, f.Reason)
	}
	return &RefusedError{Host: host, Detail: b.String()}
}

// RefusedError says a name resolved only to refused addresses.
type RefusedError struct{ Host, Detail string }

func (e *RefusedError) Error() string {
	return e.Host + " resolves only to addresses the router never connects to for the agent (" + e.Detail + ")"
}

// Lookup resolves a fully qualified name to IPv4 addresses.
type Lookup func(ctx context.Context, fqdn string) ([]netip.Addr, error)

// Resolver caches lookups. The zero value is not usable; use New.
type Resolver struct {
	lookup      Lookup
	ttl, negTTL time.Duration
	now         func() time.Time
	refused     func(netip.Addr) string

	mu      sync.Mutex
	cache   map[string]*entry
	reverse map[netip.Addr]map[string]time.Time
}

type entry struct {
	done chan struct{} // closed when the lookup finished
	res  Result
	err  error
	exp  time.Time
}

// New returns a resolver over lookup (nil: the system resolver via Go's
// own DNS client).
func New(lookup Lookup) *Resolver {
	if lookup == nil {
		lookup = SystemLookup(nil)
	}
	return &Resolver{lookup: lookup, ttl: DefaultTTL, negTTL: DefaultNegativeTTL, now: time.Now, refused: dest.Refused,
		cache: map[string]*entry{}, reverse: map[netip.Addr]map[string]time.Time{}}
}

// WithRefused replaces the refused-range check (dest.Refused). Only tests
// use it, to reach servers on loopback; the router never does.
func (r *Resolver) WithRefused(f func(netip.Addr) string) *Resolver {
	r.refused = f
	return r
}

// SystemLookup resolves with Go's DNS client against servers
// ("ip:port"), or the ones /etc/resolv.conf names when servers is empty.
func SystemLookup(servers []string) Lookup {
	r := &net.Resolver{PreferGo: true}
	if len(servers) > 0 {
		var next int
		var mu sync.Mutex
		d := &net.Dialer{Timeout: 5 * time.Second}
		r.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			mu.Lock()
			s := servers[next%len(servers)]
			next++
			mu.Unlock()
			return d.DialContext(ctx, network, s)
		}
	}
	return func(ctx context.Context, fqdn string) ([]netip.Addr, error) {
		return r.LookupNetIP(ctx, "ip4", fqdn)
	}
}

// Resolve returns host's addresses (host canonical; an IP literal resolves
// to itself), from the cache when fresh. Concurrent callers for one name
// share one lookup.
func (r *Resolver) Resolve(ctx context.Context, host string) (Result, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return split([]netip.Addr{a}, r.refused), nil
	}
	now := r.now()
	r.mu.Lock()
	e, ok := r.cache[host]
	if ok && e.exp.IsZero() {
		r.mu.Unlock()
		select { // a lookup in flight
		case <-e.done:
			return e.res, e.err
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
	}
	if ok && now.Before(e.exp) {
		r.mu.Unlock()
		return e.res, e.err
	}
	e = &entry{done: make(chan struct{})}
	r.evictLocked(now)
	r.cache[host] = e
	r.mu.Unlock()

	addrs, err := r.lookup(context.WithoutCancel(ctx), host+".")
	res := split(addrs, r.refused)
	ttl := r.ttl
	if err != nil {
		ttl = r.negTTL
		err = fmt.Errorf("resolve %s: %w", host, err)
	}
	r.mu.Lock()
	e.res, e.err, e.exp = res, err, r.now().Add(ttl)
	for _, a := range res.Allowed {
		m := r.reverse[a]
		if m == nil {
			m = map[string]time.Time{}
			r.reverse[a] = m
		}
		m[host] = e.exp
	}
	r.mu.Unlock()
	close(e.done)
	return res, err
}

// NamesFor returns the names whose fresh answers held addr, for deciding a
// connection that names no host.
func (r *Resolver) NamesFor(addr netip.Addr) []string {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for name, exp := range r.reverse[addr.Unmap()] {
		if now.Before(exp) {
			out = append(out, name)
		}
	}
	return out
}

// evictLocked bounds the cache: expired entries go first, and if that is
// not enough everything finished goes.
func (r *Resolver) evictLocked(now time.Time) {
	if len(r.cache) < maxEntries {
		return
	}
	for k, e := range r.cache {
		if !e.exp.IsZero() && !now.Before(e.exp) {
			delete(r.cache, k)
		}
	}
	if len(r.cache) >= maxEntries {
		for k, e := range r.cache {
			if !e.exp.IsZero() {
				delete(r.cache, k)
			}
		}
	}
	for a, m := range r.reverse {
		for n, exp := range m {
			if !now.Before(exp) {
				delete(m, n)
			}
		}
		if len(m) == 0 {
			delete(r.reverse, a)
		}
	}
}

func split(addrs []netip.Addr, refused func(netip.Addr) string) Result {
	var res Result
	for _, a := range addrs {
		a = a.Unmap()
		if why := refused(a); why != "" {
			res.Refused = append(res.Refused, Refusal{Addr: a, Reason: why})
			continue
		}
		res.Allowed = append(res.Allowed, a)
	}
	return res
}
