package governance

import (
	"fmt"
	"strings"
)

// Action globs: '*' matches any run of bytes (colons and dots included) and
// '?' matches exactly one byte. Everything else matches itself. So
// "egress:*.github.com:443" matches "egress:api.github.com:443", and
// "tool:*" matches every tool. There is no escaping because actions never
// contain '*' or '?'.

type globKind uint8

const (
	globExact  globKind = iota // no wildcard at all
	globPrefix                 // literal followed by one trailing '*'
	globAny                    // "*": matches everything
	globGeneral
)

// glob is a compiled action pattern.
type glob struct {
	kind    globKind
	pattern string
	// prefix is the literal text before the first wildcard; every match
	// starts with it, so it doubles as a cheap prefilter.
	prefix string
	// suffix is the literal text after the last wildcard of a general
	// pattern, and minLen the fewest bytes a match can have; both reject
	// most non-matching actions before globMatch runs.
	suffix string
	minLen int
	// ns is the namespace the pattern is confined to, or nsInvalid when a
	// wildcard appears before the namespace's colon.
	ns Namespace
}

// compileGlob validates p and classifies it. Patterns must be printable
// ASCII, at most MaxActionLen bytes, and name a known namespace unless a
// wildcard comes first: a rule for "tools:*" could never match anything, so
// it is almost certainly a typo and is rejected rather than ignored.
func compileGlob(p string) (glob, error) {
	if p == "" {
		return glob{}, fmt.Errorf("empty action pattern")
	}
	if len(p) > MaxActionLen {
		return glob{}, fmt.Errorf("action pattern longer than %d bytes", MaxActionLen)
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c < 0x20 || c > 0x7e {
			return glob{}, fmt.Errorf("action pattern %q: byte %#x at offset %d is not printable ASCII", p, c, i)
		}
	}
	g := glob{pattern: p}
	meta := strings.IndexAny(p, "*?")
	if meta < 0 {
		g.kind, g.prefix = globExact, p
	} else {
		g.prefix = p[:meta]
		switch {
		case p == "*" || strings.Trim(p, "*") == "":
			g.kind = globAny
		case meta == len(p)-1 && p[meta] == '*':
			g.kind = globPrefix
		default:
			g.kind = globGeneral
			g.suffix = p[strings.LastIndexAny(p, "*?")+1:]
			g.minLen = len(p) - strings.Count(p, "*")
		}
	}
	if word, _, ok := strings.Cut(g.prefix, ":"); ok {
		g.ns = namespaceOf(word)
		if g.ns == nsInvalid {
			return glob{}, fmt.Errorf("action pattern %q: unknown namespace %q (want inference, tool, mcp, shell, egress, a2a, mesh, memory or spawn)", p, word)
		}
	} else if g.kind == globExact {
		return glob{}, fmt.Errorf("action pattern %q has no namespace (want <namespace>:<name>, for example tool:%s)", p, p)
	} else if !prefixOfSomeNamespace(g.prefix) {
		return glob{}, fmt.Errorf("action pattern %q: %q does not start any known namespace", p, g.prefix)
	}
	return g, nil
}

func prefixOfSomeNamespace(s string) bool {
	for _, n := range namespaceNames[1:] {
		if strings.HasPrefix(n, s) {
			return true
		}
	}
	return false
}

// match reports whether action matches the compiled pattern.
func (g *glob) match(action string) bool {
	switch g.kind {
	case globExact:
		return action == g.pattern
	case globPrefix:
		return strings.HasPrefix(action, g.prefix)
	case globAny:
		return true
	}
	return len(action) >= g.minLen && strings.HasPrefix(action, g.prefix) && strings.HasSuffix(action, g.suffix) &&
		globMatch(g.pattern[len(g.prefix):], action[len(g.prefix):])
}

// globMatch matches s against pattern p with '*' and '?'. It backtracks only
// to the most recent '*', which is enough for this syntax and bounds the work
// by len(p)*len(s) without recursion or allocation.
func globMatch(p, s string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case pi < len(p) && (p[pi] == '?' || p[pi] == s[si]):
			pi++
			si++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
