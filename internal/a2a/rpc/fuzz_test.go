package rpc

import (
	"encoding/json"
	"testing"
)

// FuzzParseEnvelope: never panics; an accepted envelope is a JSON object
// whose method Lookup can judge, whose id is a JSON string or number, and
// whose params is an object.
func FuzzParseEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"role":"ROLE_USER","parts":[{"text":"hi"}]}}}`,
		`{"jsonrpc":"2.0","id":"x","method":"message/send","params":{}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tasks/get","method":"GetTask"}`,
		`[{"jsonrpc":"2.0"}]`, `{"jsonrpc":"2.0","id":-1.5e3,"method":"GetTask"}`, `{}`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := ParseEnvelope(b)
		if err != nil {
			return
		}
		var v any
		if json.Unmarshal(env.ID, &v) != nil {
			t.Fatalf("id %q is not JSON", env.ID)
		}
		switch v.(type) {
		case string, float64:
		default:
			t.Fatalf("id %q is neither string nor number", env.ID)
		}
		if env.Params != nil {
			var m map[string]any
			if json.Unmarshal(env.Params, &m) != nil {
				t.Fatalf("params %q is not an object", env.Params)
			}
		}
		Lookup(V10, env.Method)
		Lookup(V03, env.Method)
	})
}
