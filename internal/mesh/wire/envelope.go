package wire

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// scanEnvelope is ParseRouting's decoder: one pass over the frame that
// validates the JSON syntax (RFC 8259) of the whole object and extracts
// the top-level routing members, without building values for the rest.
// encoding/json spends most of a relay's per-frame CPU walking the
// ciphertext string through its state machine; this loop does not.
// FuzzParse holds it to encoding/json: same verdict, same fields.
//
// It reports errNeedSlowPath for inputs it does not decode itself
// (escaped characters inside a routing member), which ParseRouting then
// hands to encoding/json.
func scanEnvelope(b []byte) (Routing, error) {
	s := scanner{b: b}
	var r Routing
	s.ws()
	if !s.eat('{') {
		return r, errSyntax
	}
	s.ws()
	if s.eat('}') {
		return r, s.end()
	}
	for {
		s.ws()
		key, plain, err := s.str()
		if err != nil {
			return r, err
		}
		s.ws()
		if !s.eat(':') {
			return r, errSyntax
		}
		s.ws()
		if !plain || foldsToMember(key) {
			// An escaped key, or one that matches a routing member only
			// case-insensitively (encoding/json folds keys, Unicode
			// folds included), is encoding/json's to decide.
			return r, errNeedSlowPath
		}
		switch key {
		case "type", "from", "to", "id":
			if s.peek() != '"' {
				if err := s.value(0); err != nil {
					return r, err
				}
				return r, errNeedSlowPath // a type error encoding/json reports
			}
			v, plain, err := s.str()
			if err != nil {
				return r, err
			}
			if !plain || !utf8.ValidString(v) {
				// encoding/json unescapes, and replaces invalid UTF-8.
				return r, errNeedSlowPath
			}
			switch key {
			case "type":
				r.Type = v
			case "from":
				r.From = v
			case "to":
				r.To = v
			case "id":
				r.ID = v
			}
		case "v":
			start := s.i
			if err := s.value(0); err != nil {
				return r, err
			}
			n, err := strconv.Atoi(string(b[start:s.i]))
			if err != nil {
				return r, errNeedSlowPath // null, floats, huge numbers, wrong types
			}
			r.V = n
		case "receipts":
			start := s.i
			if err := s.value(0); err != nil {
				return r, err
			}
			switch string(b[start:s.i]) {
			case "true":
				r.Receipts = true
			case "false":
				r.Receipts = false
			default:
				return r, errNeedSlowPath
			}
		default:
			if err := s.value(0); err != nil {
				return r, err
			}
		}
		s.ws()
		if s.eat(',') {
			continue
		}
		if s.eat('}') {
			return r, s.end()
		}
		return r, errSyntax
	}
}

var members = [...]string{"v", "type", "from", "to", "id", "receipts"}

// foldsToMember reports a key that is not a routing member but equals
// one under case folding.
func foldsToMember(key string) bool {
	for _, m := range members {
		if key != m && strings.EqualFold(key, m) {
			return true
		}
	}
	return false
}

var (
	errSyntax       = errors.New("invalid JSON")
	errNeedSlowPath = errors.New("needs encoding/json")
)

type scanner struct {
	b []byte
	i int
}

func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scanner) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) end() error {
	s.ws()
	if s.i != len(s.b) {
		return errSyntax
	}
	return nil
}

// str reads a string; plain is false when it held escapes (its text is
// then not returned).
func (s *scanner) str() (text string, plain bool, err error) {
	if !s.eat('"') {
		return "", false, errSyntax
	}
	start := s.i
	plain = true
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			if plain {
				return string(s.b[start : s.i-1]), true, nil
			}
			return "", false, nil
		case c == '\\':
			plain = false
			s.i++
			if s.i >= len(s.b) {
				return "", false, errSyntax
			}
			switch s.b[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i++
			case 'u':
				if s.i+5 > len(s.b) {
					return "", false, errSyntax
				}
				for _, h := range s.b[s.i+1 : s.i+5] {
					if !isHex(h) {
						return "", false, errSyntax
					}
				}
				s.i += 5
			default:
				return "", false, errSyntax
			}
		case c < 0x20:
			return "", false, errSyntax
		default:
			s.i++
		}
	}
	return "", false, errSyntax
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// value skips one JSON value, checking its syntax.
func (s *scanner) value(depth int) error {
	if depth > 10000 {
		return errSyntax // encoding/json's own nesting limit
	}
	switch c := s.peek(); {
	case c == '"':
		_, _, err := s.str()
		return err
	case c == '{':
		s.i++
		s.ws()
		if s.eat('}') {
			return nil
		}
		for {
			s.ws()
			if _, _, err := s.str(); err != nil {
				return err
			}
			s.ws()
			if !s.eat(':') {
				return errSyntax
			}
			s.ws()
			if err := s.value(depth + 1); err != nil {
				return err
			}
			s.ws()
			if s.eat(',') {
				continue
			}
			if s.eat('}') {
				return nil
			}
			return errSyntax
		}
	case c == '[':
		s.i++
		s.ws()
		if s.eat(']') {
			return nil
		}
		for {
			s.ws()
			if err := s.value(depth + 1); err != nil {
				return err
			}
			s.ws()
			if s.eat(',') {
				continue
			}
			if s.eat(']') {
				return nil
			}
			return errSyntax
		}
	case c == 't':
		return s.lit("true")
	case c == 'f':
		return s.lit("false")
	case c == 'n':
		return s.lit("null")
	case c == '-' || '0' <= c && c <= '9':
		return s.number()
	}
	return errSyntax
}

func (s *scanner) lit(w string) error {
	if len(s.b)-s.i < len(w) || string(s.b[s.i:s.i+len(w)]) != w {
		return errSyntax
	}
	s.i += len(w)
	return nil
}

// number checks RFC 8259 §6: -? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?
func (s *scanner) number() error {
	s.eat('-')
	digits := func() int {
		n := 0
		for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
			s.i++
			n++
		}
		return n
	}
	switch {
	case s.eat('0'):
	case digits() == 0:
		return errSyntax
	}
	if s.eat('.') && digits() == 0 {
		return errSyntax
	}
	if s.eat('e') || s.eat('E') {
		if !s.eat('+') {
			s.eat('-')
		}
		if digits() == 0 {
			return errSyntax
		}
	}
	return nil
}
