// Package jcs is the RFC 8785 JSON Canonicalization Scheme: the bytes the
// A2A card signatures and the AgentMesh frame signatures are computed over.
// It is pure: bytes or decoded values in, canonical bytes out.
package jcs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/kars-io/kars/internal/strictjson"
)

// Canonicalize returns the RFC 8785 (JSON Canonicalization Scheme) form of
// the JSON text b: object members sorted by the UTF-16 code units of their
// names (§3.2.3), no insignificant whitespace, strings escaped as
// ECMAScript's JSON.stringify does (§3.2.2.2) and numbers in ECMAScript's
// Number-to-String form (§3.2.2.3). b must be strict JSON
// (strictjson.Validate): a document with duplicate member names has no
// canonical form, and one the signer and the verifier read differently is
// exactly what a signature must not cover.
func Canonicalize(b []byte) ([]byte, error) {
	v, err := DecodeStrict(b)
	if err != nil {
		return nil, err
	}
	return Value(v, 0)
}

// DecodeStrict parses strict JSON (strictjson.Validate) keeping numbers as
// their literal text (json.Number), ready for Value.
func DecodeStrict(b []byte) (any, error) {
	if err := strictjson.Validate(b); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// ErrTooDeep is returned by Value for a value nested deeper than its
// limit.
var ErrTooDeep = errors.New("jcs: value nested too deeply")

// Value serialises a decoded JSON value (encoding/json's any, numbers as
// json.Number or float64) canonically. maxDepth > 0 refuses values with
// arrays or objects nested deeper than that (0: no limit).
func Value(v any, maxDepth int) ([]byte, error) {
	var buf bytes.Buffer
	if err := writeCanonical(&buf, v, 0, maxDepth); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeCanonical(buf *bytes.Buffer, v any, depth, maxDepth int) error {
	if maxDepth > 0 && depth > maxDepth {
		return ErrTooDeep
	}
	switch x := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		buf.WriteString(strconv.FormatBool(x))
	case json.Number:
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil {
			return fmt.Errorf("jcs: number %s: %w", x, err)
		}
		s, err := formatNumber(f)
		if err != nil {
			return err
		}
		buf.WriteString(s)
	case float64:
		s, err := formatNumber(x)
		if err != nil {
			return err
		}
		buf.WriteString(s)
	case string:
		writeString(buf, x)
	case []any:
		buf.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeCanonical(buf, e, depth+1, maxDepth); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, compareUTF16)
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeString(buf, k)
			buf.WriteByte(':')
			if err := writeCanonical(buf, x[k], depth+1, maxDepth); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	default:
		return fmt.Errorf("jcs: unsupported value of type %T", v)
	}
	return nil
}

// compareUTF16 orders strings by their UTF-16 code units (RFC 8785
// §3.2.3), which differs from byte order for characters above U+FFFF
// against those in U+E000..U+FFFF.
func compareUTF16(a, b string) int {
	return slices.Compare(utf16.Encode([]rune(a)), utf16.Encode([]rune(b)))
}

// writeString escapes s as ECMAScript's JSON.stringify (ES2019 and later
// "well-formed" variant): the two-character escapes for \b \t \n \f \r " \,
// \u00xx (lowercase hex) for the other controls, everything else as is.
func writeString(buf *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	buf.WriteByte('"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			_, n := utf8.DecodeRuneInString(s[i:])
			buf.WriteString(s[i : i+n])
			i += n
			continue
		}
		switch c {
		case '"':
			buf.WriteString(`\"`)
		case '\\':
			buf.WriteString(`\\`)
		case '\b':
			buf.WriteString(`\b`)
		case '\f':
			buf.WriteString(`\f`)
		case '\n':
			buf.WriteString(`\n`)
		case '\r':
			buf.WriteString(`\r`)
		case '\t':
			buf.WriteString(`\t`)
		default:
			if c < 0x20 {
				buf.WriteString(`\u00`)
				buf.WriteByte(hex[c>>4])
				buf.WriteByte(hex[c&0xf])
			} else {
				buf.WriteByte(c)
			}
		}
		i++
	}
	buf.WriteByte('"')
}

// errNonFinite: NaN and the infinities have no JSON form (RFC 8785 §3.2.2.3).
var errNonFinite = errors.New("jcs: NaN and Infinity are not JSON numbers")

// formatNumber renders f as ECMAScript's Number::toString (ECMA-262
// §6.1.6.1.20) does: the shortest digits that round-trip, in plain notation
// for exponents from -6 to 20 and scientific notation otherwise.
func formatNumber(f float64) (string, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "", errNonFinite
	}
	if f == 0 {
		return "0", nil // -0 too
	}
	sign := ""
	if f < 0 {
		sign, f = "-", -f
	}
	// Go's shortest round-trip digits, as d.ddde±x.
	e := strconv.FormatFloat(f, 'e', -1, 64)
	mant, exp, _ := strings.Cut(e, "e")
	digits := strings.Replace(mant, ".", "", 1)
	x, err := strconv.Atoi(exp)
	if err != nil {
		return "", fmt.Errorf("jcs: formatting %v: %w", f, err)
	}
	k, n := len(digits), x+1 // value = 0.digits × 10^n
	var out string
	switch {
	case k <= n && n <= 21:
		out = digits + strings.Repeat("0", n-k)
	case 0 < n && n <= 21:
		out = digits[:n] + "." + digits[n:]
	case -6 < n && n <= 0:
		out = "0." + strings.Repeat("0", -n) + digits
	default:
		es := "+"
		if n-1 < 0 {
			es = "-"
		}
		ev := strconv.Itoa(abs(n - 1))
		if k == 1 {
			out = digits + "e" + es + ev
		} else {
			out = digits[:1] + "." + digits[1:] + "e" + es + ev
		}
	}
	return sign + out, nil
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}
