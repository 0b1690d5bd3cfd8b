// Package strictjson checks that a JSON document means the same thing to
// every parser that might read it.
//
// The router decides on a request body and then forwards those bytes to a
// provider whose JSON parser it does not control. RFC 8259 leaves several
// things to the parser — which of two equal member names wins (§4), what an
// unpaired surrogate escape or invalid UTF-8 becomes (§8.2) — and lenient
// parsers accept more (comments, trailing commas, NaN, single quotes). Any
// of these lets one body be read two ways: the router sees one "model", the
// provider another. Validate accepts only documents without such ambiguity:
// strict RFC 8259 grammar, valid UTF-8, paired surrogates, no member name
// repeated in an object — compared after unescaping and without regard to
// case, because some parsers (Go's encoding/json, .NET with case-insensitive
// binding) match member names that way — and a bounded nesting depth.
//
// The package is pure: no I/O, no imports beyond the standard library.
package strictjson

import (
	"bytes"
	"fmt"
	"strconv"
	"sync"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxDepth bounds the nesting of arrays and objects. Deep nesting is never
// needed by an inference request and exhausts recursive parsers' stacks.
const MaxDepth = 128

// Error says why a document was refused and where.
type Error struct {
	// Offset is the byte offset of the problem.
	Offset int
	// Reason is a short constant description.
	Reason string
	// Key is the repeated member name, for duplicate-key errors.
	Key string
}

// Error implements error.
func (e *Error) Error() string {
	if e.Key != "" {
		return fmt.Sprintf("%s %q at byte %d", e.Reason, e.Key, e.Offset)
	}
	return fmt.Sprintf("%s at byte %d", e.Reason, e.Offset)
}

// Reasons, constant so that they can be compared and never allocate.
const (
	ReasonSyntax        = "invalid JSON"
	ReasonUTF8          = "invalid UTF-8"
	ReasonSurrogate     = "unpaired UTF-16 surrogate escape"
	ReasonControl       = "unescaped control character in string"
	ReasonEscape        = "invalid escape in string"
	ReasonNumber        = "invalid number"
	ReasonRange         = "number out of range"
	ReasonDepth         = "nesting deeper than 128 levels"
	ReasonDuplicate     = "duplicate member name"
	ReasonTrailing      = "trailing data after the JSON value"
	ReasonEmpty         = "empty document"
	ReasonByteOrderMark = "byte order mark before the JSON value"
)

// frame is one open object: the names seen so far. Names are kept folded
// (see fold) so that comparison is exact.
type frame struct {
	names [][]byte
	set   map[string]struct{}
}

// linearNames is the number of names compared one by one before an object
// switches to a map.
const linearNames = 16

func (f *frame) add(name []byte) bool {
	if f.set != nil {
		if _, dup := f.set[string(name)]; dup {
			return false
		}
		f.set[string(name)] = struct{}{}
		return true
	}
	for _, n := range f.names {
		if bytes.Equal(n, name) {
			return false
		}
	}
	f.names = append(f.names, name)
	if len(f.names) > linearNames {
		f.set = make(map[string]struct{}, 2*linearNames)
		for _, n := range f.names {
			f.set[string(n)] = struct{}{}
		}
	}
	return true
}

// reset forgets the frame's names; clearing the whole backing array keeps
// a pooled scanner from holding on to a previous document.
func (f *frame) reset() {
	clear(f.names[:cap(f.names)])
	f.names = f.names[:0]
	f.set = nil
}

// scanner holds the state of one Validate call; pooled so that checking a
// body allocates nothing in the common case.
type scanner struct {
	b      []byte
	i      int
	frames []frame
	depth  int
	// arena holds names that had to be unescaped or folded; names are
	// slices of it or of b, valid until Validate returns.
	arena []byte
}

var scanners = sync.Pool{New: func() any { return &scanner{} }}

// Validate reports whether b is one strict, unambiguous JSON value. It
// returns nil or an *Error.
func Validate(b []byte) error {
	s := scanners.Get().(*scanner)
	s.b, s.i, s.depth = b, 0, 0
	err := s.document()
	for i := range s.frames {
		s.frames[i].reset()
	}
	s.b, s.arena = nil, s.arena[:0]
	scanners.Put(s)
	return err
}

func (s *scanner) fail(reason string) error { return &Error{Offset: s.i, Reason: reason} }

func (s *scanner) document() error {
	if len(s.b) >= 3 && s.b[0] == 0xEF && s.b[1] == 0xBB && s.b[2] == 0xBF {
		return s.fail(ReasonByteOrderMark)
	}
	s.space()
	if s.i == len(s.b) {
		return s.fail(ReasonEmpty)
	}
	if err := s.value(); err != nil {
		return err
	}
	s.space()
	if s.i != len(s.b) {
		return s.fail(ReasonTrailing)
	}
	return nil
}

// space skips the four whitespace bytes RFC 8259 §2 allows, and no others.
func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) value() error {
	if s.i >= len(s.b) {
		return s.fail(ReasonSyntax)
	}
	switch c := s.b[s.i]; {
	case c == '{':
		return s.object()
	case c == '[':
		return s.array()
	case c == '"':
		_, err := s.str(false)
		return err
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	}
	return s.fail(ReasonSyntax)
}

func (s *scanner) literal(lit string) error {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return s.fail(ReasonSyntax)
	}
	s.i += len(lit)
	return nil
}

func (s *scanner) enter() error {
	s.depth++
	if s.depth > MaxDepth {
		return s.fail(ReasonDepth)
	}
	return nil
}

func (s *scanner) object() error {
	if err := s.enter(); err != nil {
		return err
	}
	s.i++ // '{'
	// Frames are reused across objects at the same depth; the slice of
	// frames only grows to the document's object depth.
	idx := s.depth - 1
	for len(s.frames) <= idx {
		s.frames = append(s.frames, frame{})
	}
	s.frames[idx].reset()
	s.space()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		s.depth--
		return nil
	}
	for {
		if s.i >= len(s.b) || s.b[s.i] != '"' {
			return s.fail(ReasonSyntax)
		}
		at := s.i
		name, err := s.str(true)
		if err != nil {
			return err
		}
		if !s.frames[idx].add(name) {
			return &Error{Offset: at, Reason: ReasonDuplicate, Key: string(name)}
		}
		s.space()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return s.fail(ReasonSyntax)
		}
		s.i++
		s.space()
		if err := s.value(); err != nil {
			return err
		}
		s.space()
		if s.i >= len(s.b) {
			return s.fail(ReasonSyntax)
		}
		switch s.b[s.i] {
		case ',':
			s.i++
			s.space()
		case '}':
			s.i++
			s.frames[idx].reset()
			s.depth--
			return nil
		default:
			return s.fail(ReasonSyntax)
		}
	}
}

func (s *scanner) array() error {
	if err := s.enter(); err != nil {
		return err
	}
	s.i++ // '['
	s.space()
	if s.i < len(s.b) && s.b[s.i] == ']' {
		s.i++
		s.depth--
		return nil
	}
	for {
		if err := s.value(); err != nil {
			return err
		}
		s.space()
		if s.i >= len(s.b) {
			return s.fail(ReasonSyntax)
		}
		switch s.b[s.i] {
		case ',':
			s.i++
			s.space()
		case ']':
			s.i++
			s.depth--
			return nil
		default:
			return s.fail(ReasonSyntax)
		}
	}
}

// number checks RFC 8259 §6: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() error {
	b, i := s.b, s.i
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		s.i = i
		return s.fail(ReasonNumber)
	}
	if i < len(b) && b[i] == '.' {
		i++
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == start {
			s.i = i
			return s.fail(ReasonNumber)
		}
	}
	exp := false
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		exp = true
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == start {
			s.i = i
			return s.fail(ReasonNumber)
		}
	}
	// A number beyond float64's range is infinity to some parsers (Python,
	// JavaScript) and an error to others (Go): refuse it. Only a number
	// with an exponent or hundreds of digits can get there.
	if exp || i-s.i > 300 {
		if _, err := strconv.ParseFloat(string(b[s.i:i]), 64); err != nil {
			return s.fail(ReasonRange)
		}
	}
	s.i = i
	return nil
}

// str checks a string starting at the opening quote. When name is true it
// returns the member name folded for comparison; otherwise nil.
func (s *scanner) str(name bool) ([]byte, error) {
	b := s.b
	s.i++ // opening quote
	start := s.i
	escaped, ascii := false, true
	for {
		if s.i >= len(b) {
			return nil, s.fail(ReasonSyntax)
		}
		c := b[s.i]
		switch {
		case c == '"':
			raw := b[start:s.i]
			s.i++
			if !name {
				return nil, nil
			}
			return s.foldName(raw, escaped, ascii), nil
		case c == '\\':
			escaped = true
			if err := s.escape(); err != nil {
				return nil, err
			}
		case c < 0x20:
			return nil, s.fail(ReasonControl)
		case c < utf8.RuneSelf:
			s.i++
		default:
			ascii = false
			r, size := utf8.DecodeRune(b[s.i:])
			if r == utf8.RuneError && size <= 1 {
				return nil, s.fail(ReasonUTF8)
			}
			s.i += size
		}
	}
}

// escape checks one escape sequence at s.i (the backslash), including the
// pairing of UTF-16 surrogates (RFC 8259 §7).
func (s *scanner) escape() error {
	b := s.b
	if s.i+1 >= len(b) {
		return s.fail(ReasonEscape)
	}
	switch b[s.i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		s.i += 2
		return nil
	case 'u':
	default:
		return s.fail(ReasonEscape)
	}
	r, ok := hex4(b, s.i+2)
	if !ok {
		return s.fail(ReasonEscape)
	}
	switch {
	case r >= 0xDC00 && r <= 0xDFFF:
		return s.fail(ReasonSurrogate)
	case r >= 0xD800 && r <= 0xDBFF:
		if s.i+12 > len(b) || b[s.i+6] != '\\' || b[s.i+7] != 'u' {
			return s.fail(ReasonSurrogate)
		}
		lo, ok := hex4(b, s.i+8)
		if !ok {
			return s.fail(ReasonEscape)
		}
		if lo < 0xDC00 || lo > 0xDFFF {
			return s.fail(ReasonSurrogate)
		}
		s.i += 12
		return nil
	}
	s.i += 6
	return nil
}

func hex4(b []byte, at int) (rune, bool) {
	if at+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[at : at+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return r, true
}

// foldName returns a member name unescaped and case-folded, so that names
// a case-insensitive parser would confuse compare equal. The raw bytes are
// known to be valid by now.
func (s *scanner) foldName(raw []byte, escaped, ascii bool) []byte {
	if !escaped && ascii {
		lower := true
		for _, c := range raw {
			if c >= 'A' && c <= 'Z' {
				lower = false
				break
			}
		}
		if lower {
			// The common case: a plain lowercase ASCII name is its own
			// folded form.
			return raw
		}
	}
	start := len(s.arena)
	buf := s.arena
	for i := 0; i < len(raw); {
		var r rune
		if raw[i] == '\\' {
			switch raw[i+1] {
			case 'u':
				r, _ = hex4(raw, i+2)
				i += 6
				if utf16.IsSurrogate(r) {
					lo, _ := hex4(raw, i+2)
					r = utf16.DecodeRune(r, lo)
					i += 6
				}
			case 'b':
				r, i = '\b', i+2
			case 'f':
				r, i = '\f', i+2
			case 'n':
				r, i = '\n', i+2
			case 'r':
				r, i = '\r', i+2
			case 't':
				r, i = '\t', i+2
			default: // '"', '\\', '/'
				r, i = rune(raw[i+1]), i+2
			}
		} else {
			var size int
			r, size = utf8.DecodeRune(raw[i:])
			i += size
		}
		buf = utf8.AppendRune(buf, foldRune(r))
	}
	s.arena = buf
	return buf[start:len(buf):len(buf)]
}

// foldRune maps r to one representative of its simple case-folding orbit,
// so that two runes strings.EqualFold calls equal map to the same rune: the
// orbit's lowercase ASCII letter when it has one (so plain lowercase names
// need no work), else its smallest rune.
func foldRune(r rune) rune {
	if r < utf8.RuneSelf {
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}
	min := r
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		if f >= 'a' && f <= 'z' {
			return f
		}
		if f < min {
			min = f
		}
	}
	return min
}
