package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
)

// SigningBytes returns the RFC 8785 (JCS) canonical form of a JSON
// object with its "signature" member removed.
func SigningBytes(raw []byte) ([]byte, error) {
	_, msg, err := split(raw, false)
	return msg, err
}

func splitSignature(raw []byte) (string, []byte, error) {
	return split(raw, true)
}

func split(raw []byte, needSig bool) (string, []byte, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return "", nil, bad("%v", err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return "", nil, bad("signed frame is not a JSON object")
	}
	sig, _ := obj["signature"].(string)
	if needSig && sig == "" {
		return "", nil, ErrSignature
	}
	delete(obj, "signature")
	var b bytes.Buffer
	if err := canon(&b, obj, 0); err != nil {
		return "", nil, err
	}
	return sig, b.Bytes(), nil
}

func canon(b *bytes.Buffer, v any, depth int) error {
	if depth > 32 {
		return bad("JSON nested deeper than 32 levels")
	}
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case string:
		canonString(b, x)
	case json.Number:
		// RFC 8785 §3.2.2.3: numbers as ECMAScript's Number.toString.
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil || math.IsInf(f, 0) {
			return bad("number %s is not an IEEE 754 double", x)
		}
		b.WriteString(es6Number(f))
	case []any:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := canon(b, e, depth+1); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		// §3.2.3: sort by UTF-16 code units.
		slices.SortFunc(keys, func(a, c string) int { return slices.Compare(utf16.Encode([]rune(a)), utf16.Encode([]rune(c))) })
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			canonString(b, k)
			b.WriteByte(':')
			if err := canon(b, x[k], depth+1); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	default:
		return fmt.Errorf("wire: unexpected JSON value %T", v)
	}
	return nil
}

// canonString escapes as RFC 8785 §3.2.2.2: only '"', '\\' and control
// characters, with the short forms JSON has for some of them.
func canonString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			if r < 0x20 {
				fmt.Fprintf(b, `\u%04x`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}

// es6Number formats f as ECMAScript's Number::toString (ECMA-262
// §6.1.6.1.20), which RFC 8785 adopts: shortest round-trip digits, plain
// notation for decimal exponents in (-7, 21], exponent notation outside.
func es6Number(f float64) string {
	if f == 0 {
		return "0"
	}
	sign := ""
	if f < 0 {
		sign, f = "-", -f
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // d.ddde±XX
	mant, expText, _ := strings.Cut(e, "e")
	digits := strings.Replace(mant, ".", "", 1)
	exp, _ := strconv.Atoi(expText)
	n := exp + 1 // f = 0.digits × 10^n
	k := len(digits)
	switch {
	case k <= n && n <= 21:
		return sign + digits + strings.Repeat("0", n-k)
	case 0 < n && n <= 21:
		return sign + digits[:n] + "." + digits[n:]
	case -6 < n && n <= 0:
		return sign + "0." + strings.Repeat("0", -n) + digits
	}
	out := digits[:1]
	if k > 1 {
		out += "." + digits[1:]
	}
	if n-1 >= 0 {
		return sign + out + "e+" + strconv.Itoa(n-1)
	}
	return sign + out + "e" + strconv.Itoa(n-1)
}
