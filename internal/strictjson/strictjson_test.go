package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	deep := strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth)
	tooDeep := strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1)
	for _, tc := range []struct {
		doc    string
		reason string // "" means valid
		key    string
	}{
		{`{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}`, "", ""},
		{` {"a":[1,-2.5e+3,0.1,true,false,null,"\u00e9\ud83d\ude00\n"]} `, "", ""},
		{`"just a string"`, "", ""},
		{`0`, "", ""},
		{deep, "", ""},
		{`{"a":{"b":1},"b":{"a":1}}`, "", ""}, // same names in different objects
		{`[{"a":1},{"a":2}]`, "", ""},         // and in sibling objects

		// The proof from the security review: the last "model" wins upstream.
		{`{"model":"gpt-4.1","model":"o3-pro"}`, ReasonDuplicate, "model"},
		{`{"model":"a","mod\u0065l":"b"}`, ReasonDuplicate, "model"},
		{`{"model":"a","Model":"b"}`, ReasonDuplicate, "model"},
		{`{"model":"a","MODEL":"b"}`, ReasonDuplicate, "model"},
		{`{"kelvin":"a","\u212aelvin":"b"}`, ReasonDuplicate, "kelvin"}, // KELVIN SIGN folds to k
		{`{"messages":[{"role":"user","role":"system"}]}`, ReasonDuplicate, "role"},
		{`{"a":{"b":{"c":{"d":1,"d":2}}}}`, ReasonDuplicate, "d"},
		{`{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17,"r":18,"A":19}`, ReasonDuplicate, "a"},

		{"\xef\xbb\xbf{}", ReasonByteOrderMark, ""},
		{"{\"a\":\"\xff\"}", ReasonUTF8, ""},
		{"{\"a\":\"\xc0\xaf\"}", ReasonUTF8, ""},      // overlong '/'
		{"{\"a\":\"\xed\xa0\x80\"}", ReasonUTF8, ""},  // encoded surrogate
		{`{"a":"\ud800"}`, ReasonSurrogate, ""},       // lone high
		{`{"a":"\udc00"}`, ReasonSurrogate, ""},       // lone low
		{`{"a":"\ud800\u0041"}`, ReasonSurrogate, ""}, // high then not low
		{`{"a":"\ud800x"}`, ReasonSurrogate, ""},      // high then text
		{"{\"a\":\"tab\there\"}", ReasonControl, ""},  // raw control character
		{`{"a":"\x41"}`, ReasonEscape, ""},
		{`{"a":"\u12"}`, ReasonEscape, ""},
		{`{"a":01}`, ReasonSyntax, ""}, // leading zero: "0" then junk
		{`{"a":1.}`, ReasonNumber, ""},
		{`{"a":.5}`, ReasonSyntax, ""},
		{`{"a":1e}`, ReasonNumber, ""},
		{`{"a":-}`, ReasonNumber, ""},
		{`{"a":1E1000}`, ReasonRange, ""},
		{`{"a":-1e309}`, ReasonRange, ""},
		{`{"a":1e308}`, "", ""},
		{`{"a":1e-400}`, "", ""}, // underflows to 0 everywhere
		{`{"a":NaN}`, ReasonSyntax, ""},
		{`{"a":Infinity}`, ReasonSyntax, ""},
		{`{"a":1,}`, ReasonSyntax, ""},
		{`[1,2,]`, ReasonSyntax, ""},
		{`{'a':1}`, ReasonSyntax, ""},
		{`{a:1}`, ReasonSyntax, ""},
		{`{"a":1 /* c */}`, ReasonSyntax, ""},
		{"{\"a\":1}\x00", ReasonTrailing, ""},
		{`{"a":1}{"a":2}`, ReasonTrailing, ""},
		{"{\"a\":1,\f\"b\":2}", ReasonSyntax, ""}, // form feed is not JSON whitespace
		{`{"a":tru}`, ReasonSyntax, ""},
		{`{"a"`, ReasonSyntax, ""},
		{``, ReasonEmpty, ""},
		{`   `, ReasonEmpty, ""},
		{tooDeep, ReasonDepth, ""},
	} {
		err := Validate([]byte(tc.doc))
		if tc.reason == "" {
			if err != nil {
				t.Errorf("Validate(%.60q) = %v, want valid", tc.doc, err)
			}
			continue
		}
		var e *Error
		if !errors.As(err, &e) {
			t.Errorf("Validate(%.60q) = %v, want %s", tc.doc, err, tc.reason)
			continue
		}
		if e.Reason != tc.reason || e.Key != tc.key {
			t.Errorf("Validate(%.60q) = %q (key %q), want %q (key %q)", tc.doc, e.Reason, e.Key, tc.reason, tc.key)
		}
	}
}

func TestValidateAllocatesNothingForTypicalBodies(t *testing.T) {
	body := []byte(`{"model":"gpt-4.1","stream":true,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi \u00e9"}],"max_tokens":100}`)
	Validate(body) // warm the pool
	if n := testing.AllocsPerRun(100, func() { Validate(body) }); n > 0 {
		t.Fatalf("Validate allocates %v times per typical body", n)
	}
}

// dupNames walks doc with encoding/json's tokenizer and reports whether any
// object repeats a member name under case folding: an independent oracle
// for the duplicate rule.
func dupNames(doc []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(doc))
	type obj struct {
		names []string
		key   bool // the next string token is a name
	}
	var stack []*obj
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return false
		}
		if err != nil {
			return false
		}
		var top *obj
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{':
				if top != nil && top.names != nil {
					top.key = true
				}
				stack = append(stack, &obj{names: []string{}, key: true})
				continue
			case '[':
				if top != nil && top.names != nil {
					top.key = true
				}
				stack = append(stack, &obj{})
				continue
			default:
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].names != nil {
					stack[len(stack)-1].key = true
				}
				continue
			}
		case string:
			if top != nil && top.names != nil && top.key {
				for _, n := range top.names {
					if strings.EqualFold(n, v) {
						return true
					}
				}
				top.names = append(top.names, v)
				top.key = false
				continue
			}
		}
		if top != nil && top.names != nil {
			top.key = true
		}
	}
}

func TestDupOracleAgrees(t *testing.T) {
	for doc, want := range map[string]bool{
		`{"a":1,"A":2}`:             true,
		`{"a":{"b":1},"b":2}`:       false,
		`{"a":[{"x":1},{"x":1}]}`:   false,
		`{"a":[{"x":1,"x":1}]}`:     true,
		`{"a":"b","b":"a"}`:         false,
		`{"a":{},"a2":[],"a":null}`: true,
	} {
		if got := dupNames([]byte(doc)); got != want {
			t.Errorf("dupNames(%s) = %v, want %v", doc, got, want)
		}
	}
}

func FuzzValidate(f *testing.F) {
	for _, s := range []string{
		`{"model":"gpt-4.1","model":"o3"}`, `{"a":"\ud83d\ude00"}`, `[1,2,{"b":[true,null]}]`,
		`{"Model":1,"model":2}`, `{"a":"\u212a"}`, "\"\xff\"", `-0.0e+1`, `{"a":1,}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		err := Validate(doc)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Offset < 0 || e.Offset > len(doc) {
				t.Fatalf("bad error %#v", err)
			}
			return
		}
		// Everything accepted is standard JSON to Go's parser, is valid
		// UTF-8, and repeats no member name.
		if !json.Valid(doc) {
			t.Fatalf("accepted %q that encoding/json rejects", doc)
		}
		if dupNames(doc) {
			t.Fatalf("accepted %q with a repeated member name", doc)
		}
		var v any
		if err := json.Unmarshal(doc, &v); err != nil {
			t.Fatalf("accepted %q that does not decode: %v", doc, err)
		}
		if !bytes.Equal(bytes.ToValidUTF8(doc, []byte("?")), doc) {
			t.Fatalf("accepted invalid UTF-8 %q", doc)
		}
	})
}

func BenchmarkValidate(b *testing.B) {
	var msgs []string
	for range 200 {
		msgs = append(msgs, `{"role":"user","content":"`+strings.Repeat("lorem ipsum dolor sit amet ", 20)+`"}`)
	}
	body := []byte(`{"model":"gpt-4.1","stream":true,"messages":[` + strings.Join(msgs, ",") + `]}`)
	b.Run("strictjson", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			if err := Validate(body); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Baseline: the standard library's validator over the same body.
	b.Run("encoding-json-Valid", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			if !json.Valid(body) {
				b.Fatal("invalid")
			}
		}
	})
}
