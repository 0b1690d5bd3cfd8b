// Package blocklist holds the domains an agent may never reach, at the
// scale public threat lists come in (a million names and more), and keeps
// it current from its sources.
//
// A Set stores only a 64-bit hash of each domain, in an open-addressing
// table kept at most half full: 16 MiB for a million domains, a lookup of a
// name and each of its parents in a few cache misses, no allocation. An
// entry blocks the domain and everything below it ("example.com" blocks
// "a.example.com"). The hash is keyed by a per-Set random seed
// (hash/maphash), so nobody can craft a name that collides with a listed
// one; an accidental collision needs two of 2^64 values to meet (about one
// in 10^13 lookups against a million entries) and can only block, never
// allow.
//
// Parse reads the list formats in use: one domain per line, hosts files
// ("0.0.0.0 ads.example.com"), and Adblock-style "||example.com^" lines;
// comments (#, !) and blank lines are skipped, lines that name no valid
// domain are counted and skipped. Loader fetches a list from its sources
// (file, mounted ConfigMap, HTTPS URL, OCI artifact), refreshes it on an
// interval and keeps the last good list when a refresh fails, on disk too.
package blocklist

import (
	"hash/maphash"
	"math/bits"

	"github.com/kars-io/kars/internal/egress/dest"
)

// Set is an immutable set of blocked domains. The zero value and nil are
// empty sets. Safe for concurrent use.
type Set struct {
	seed  maphash.Seed
	slots []uint64 // 0 marks an empty slot
	mask  uint64
	n     int
}

// Len is the number of distinct domains in the set.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return s.n
}

// Bytes is the memory the table holds.
func (s *Set) Bytes() int {
	if s == nil {
		return 0
	}
	return len(s.slots) * 8
}

// Contains reports whether host (canonical, see dest.Host) or one of its
// parent domains is in the set, and which one. It does not allocate.
func (s *Set) Contains(host string) (matched string, ok bool) {
	if s == nil || s.n == 0 {
		return "", false
	}
	for p, more := host, true; more; p, more = dest.Parent(p) {
		if s.has(p) {
			return p, true
		}
	}
	return "", false
}

func (s *Set) has(name string) bool {
	h := hashOf(s.seed, name)
	for i := h & s.mask; ; i = (i + 1) & s.mask {
		switch s.slots[i] {
		case h:
			return true
		case 0:
			return false
		}
	}
}

func hashOf(seed maphash.Seed, name string) uint64 {
	h := maphash.String(seed, name)
	if h == 0 {
		h = 1 // 0 marks an empty slot
	}
	return h
}

// Builder collects domains for a Set. The zero value is not usable; use
// NewBuilder.
type Builder struct {
	seed   maphash.Seed
	hashes []uint64
}

// NewBuilder returns an empty builder with a fresh random seed.
func NewBuilder() *Builder { return &Builder{seed: maphash.MakeSeed()} }

// Add adds a canonical domain. Duplicates are dropped by Build.
func (b *Builder) Add(domain string) { b.hashes = append(b.hashes, hashOf(b.seed, domain)) }

// Len is the number of domains added so far, duplicates included.
func (b *Builder) Len() int { return len(b.hashes) }

// Build returns the set and leaves the builder empty.
func (b *Builder) Build() *Set {
	n := len(b.hashes)
	size := uint64(1)
	if n > 0 {
		// At most half full: linear probing stays short.
		size = 1 << bits.Len64(uint64(2*n-1))
	}
	s := &Set{seed: b.seed, slots: make([]uint64, size), mask: size - 1}
	for _, h := range b.hashes {
		for i := h & s.mask; ; i = (i + 1) & s.mask {
			if s.slots[i] == h {
				break
			}
			if s.slots[i] == 0 {
				s.slots[i] = h
				s.n++
				break
			}
		}
	}
	b.hashes = nil
	return s
}
