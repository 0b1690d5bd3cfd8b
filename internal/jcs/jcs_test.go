package jcs

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"os"
	"strings"
	"testing"
)

// TestFormatNumberMatchesECMAScript checks every vector Node.js produced
// (testdata/es6numbers.txt: edge cases of RFC 8785 Appendix B plus random
// bit patterns).
func TestFormatNumberMatchesECMAScript(t *testing.T) {
	f, err := os.Open("testdata/es6numbers.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		bits, want, _ := strings.Cut(line, " ")
		b, err := hex.DecodeString(bits)
		if err != nil {
			t.Fatal(err)
		}
		v := math.Float64frombits(binary.BigEndian.Uint64(b))
		got, err := formatNumber(v)
		if err != nil || got != want {
			t.Errorf("%s (%v): got %q, %v; want %q", bits, v, got, err, want)
		}
		n++
	}
	if n < 100 {
		t.Fatalf("only %d vectors", n)
	}
}

func TestCanonicalizeRFC8785Examples(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		// §3.2.2.3 and §3.2.4.
		{`{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001]}`,
			`{"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27]}`},
		{`{"string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/"}`, `{"string":"€$\u000f\nA'B\"\\\\\"/"}`},
		{`{"literals": [null, true, false]}`, `{"literals":[null,true,false]}`},
		// §3.2.3: sorting by UTF-16 code units, not code points.
		{`{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}`,
			"{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"\u00f6\":\"Latin Small Letter O With Diaeresis\",\"\u20ac\":\"Euro Sign\",\"\U0001F600\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}"},
		{` [ 1 , { "b" : [ ] , "a" : { } } ] `, `[1,{"a":{},"b":[]}]`},
	} {
		got, err := Canonicalize([]byte(tc.in))
		if err != nil || string(got) != tc.want {
			t.Errorf("Canonicalize(%s)\n got %s (%v)\nwant %s", tc.in, got, err, tc.want)
		}
	}
}

func TestCanonicalizeRefusesAmbiguousJSON(t *testing.T) {
	for _, in := range []string{`{"a":1,"a":2}`, `{"a":1,}`, `{"a":"\ud800"}`, `[NaN]`, `{"a":1e999}`} {
		if _, err := Canonicalize([]byte(in)); err == nil {
			t.Errorf("Canonicalize(%s) succeeded", in)
		}
	}
}

// Value's depth limit: nesting at the limit passes, one more is refused.
func TestValueDepthLimit(t *testing.T) {
	var v any = "x"
	for range 3 {
		v = []any{v}
	}
	if _, err := Value(v, 3); err != nil {
		t.Fatalf("depth 3 under a limit of 3: %v", err)
	}
	if _, err := Value([]any{v}, 3); !errors.Is(err, ErrTooDeep) {
		t.Fatalf("depth 4 under a limit of 3: %v", err)
	}
}
