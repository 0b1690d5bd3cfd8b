package jcs

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzCanonicalize: never panics; accepted input canonicalises to JSON
// that means the same (equal after decoding) and is a fixed point.
func FuzzCanonicalize(f *testing.F) {
	for _, s := range []string{
		`{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001]}`,
		`{"b":1,"a":[true,null,"\u20ac\ud83d\ude00"],"\u00e9":{}}`, `-0`, `"\u001f"`, `[1e-7,123456789012345678901234567890]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Canonicalize(b)
		if err != nil {
			return
		}
		var x, y any
		if err := json.Unmarshal(b, &x); err != nil {
			t.Fatalf("accepted %q that encoding/json refuses: %v", b, err)
		}
		if err := json.Unmarshal(c, &y); err != nil {
			t.Fatalf("canonical form %q is not JSON: %v", c, err)
		}
		if !reflect.DeepEqual(x, y) {
			t.Fatalf("canonical form changed the value:\n%q\n%q", b, c)
		}
		again, err := Canonicalize(c)
		if err != nil || !bytes.Equal(again, c) {
			t.Fatalf("not a fixed point: %q -> %q (%v)", c, again, err)
		}
	})
}
