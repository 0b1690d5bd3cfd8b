package credbind

import (
	"errors"
	"strings"
)

// Errors of CanonicalPath: each names a way a path could mean one thing
// to the router and another to the server behind it.
var (
	ErrPathNotAbsolute = errors.New("the path does not start with '/'")
	ErrPathByte        = errors.New("the path holds a space, a control byte, a non-ASCII byte, '\\', '#' or '?'")
	ErrPathEscape      = errors.New("the path percent-encodes '/', '\\', '.', ';', '%' or a control byte, or holds a malformed escape")
	ErrPathDotSegment  = errors.New("the path has a '.' or '..' segment (also with ';' parameters, such as \"..;x\")")
	ErrPathEmptySeg    = errors.New("the path has an empty segment (\"//\")")
	ErrPathTooLong     = errors.New("the path is longer than 8192 bytes")
)

// CanonicalPath returns p — the path of a request target in origin form,
// without its query — in the form credentials are matched on: escapes of
// unreserved characters (RFC 3986 §2.3) decoded, other escapes in upper
// case (§6.2.2.1). It refuses, rather than resolves, everything servers
// disagree on (RFC 3986 §5.2.4 dot segments; ';' path parameters that some
// servers strip before resolving them, so that "/a/..;/b" is "/b" there;
// encoded separators; backslashes, which some servers take for '/'; empty
// segments, which some collapse): a refused path never gets a credential.
func CanonicalPath(p string) (string, error) {
	if len(p) > 8192 {
		return "", ErrPathTooLong
	}
	if p == "" || p[0] != '/' {
		return "", ErrPathNotAbsolute
	}
	var b *strings.Builder
	segStart := 0 // index in p of the current segment's first byte
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c < 0x21 || c > 0x7e || c == '\\' || c == '#' || c == '?':
			return "", ErrPathByte
		case c == '%':
			if i+2 >= len(p) || unhex(p[i+1]) < 0 || unhex(p[i+2]) < 0 {
				return "", ErrPathEscape
			}
			d := byte(unhex(p[i+1])<<4 | unhex(p[i+2]))
			if d < 0x20 || d == 0x7f || d == '/' || d == '\\' || d == '.' || d == ';' || d == '%' {
				return "", ErrPathEscape
			}
			if b == nil {
				b = &strings.Builder{}
				b.Grow(len(p))
				b.WriteString(p[:i])
			}
			if isUnreserved(d) {
				b.WriteByte(d)
			} else {
				b.WriteByte('%')
				b.WriteByte(upperHex(p[i+1]))
				b.WriteByte(upperHex(p[i+2]))
			}
			i += 2
			continue
		case c == '/':
			if i > 0 {
				if err := checkSegment(p[segStart:i]); err != nil {
					return "", err
				}
			}
			segStart = i + 1
		}
		if b != nil {
			b.WriteByte(c)
		}
	}
	if segStart < len(p) {
		if err := checkSegment(p[segStart:]); err != nil {
			return "", err
		}
	}
	if b == nil {
		return p, nil
	}
	return b.String(), nil
}

// checkSegment refuses empty segments and dot segments, also with ';'
// parameters (escapes of '.' and ';' are refused before this).
func checkSegment(seg string) error {
	if seg == "" {
		return ErrPathEmptySeg
	}
	if i := strings.IndexByte(seg, ';'); i >= 0 {
		seg = seg[:i]
	}
	if seg == "." || seg == ".." {
		return ErrPathDotSegment
	}
	return nil
}

func isUnreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '~'
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

func upperHex(c byte) byte {
	if c >= 'a' && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

// underPrefix reports whether canonical path p is at or below prefix: the
// same path, or prefix followed by a new segment (a prefix ending in '/'
// is a directory already).
func underPrefix(p, prefix string) bool {
	if !strings.HasPrefix(p, prefix) {
		return false
	}
	return len(p) == len(prefix) || prefix[len(prefix)-1] == '/' || p[len(prefix)] == '/'
}
