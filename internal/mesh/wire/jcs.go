package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
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
		if f == math.Trunc(f) && math.Abs(f) < 1e21 {
			b.WriteString(strconv.FormatFloat(f, 'f', -1, 64))
		} else {
			b.WriteString(strconv.FormatFloat(f, 'g', -1, 64))
		}
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
