package mcpgateway

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig"
)

// FuzzGatewayMessage posts arbitrary bodies and headers to a gateway in
// front of a real MCP server. Whatever the agent sends, the server never
// runs a tool outside the allowlist (get-env) or one the policy denies
// (pay), never runs a call that was not audited as allowed first, and the
// gateway never panics.
func FuzzGatewayMessage(f *testing.F) {
	meta := `"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}`
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"},` + meta + `}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get-env",` + meta + `}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pay","arguments":{"amount":1},` + meta + `}}`,
		`{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{` + meta + `}}`,
		`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"f","version":"1"}}}`,
		`[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get-env"}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"pay"}}]`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"get-env",` + meta + `}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ech\u006f","arguments":{"message":"x"},` + meta + `}}`,
	} {
		f.Add(s, "2026-07-28")
		f.Add(s, "")
	}
	up := startUpstream(f, true, nil)
	rec := newRecorder(f, allowEcho, governance.Rule{Name: "no-pay", Effect: governance.EffectDeny, Actions: []string{"mcp:everything.pay"}})
	pool := NewPool(nil, nil)
	f.Cleanup(pool.Close)
	g := New([]routerconfig.MCPServer{{Name: "everything", URL: up.url, Tools: []string{"echo", "pay"}}}, pool, rec, nil)
	f.Fuzz(func(t *testing.T, body, version string) {
		req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:8443/mcp/everything", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if version != "" {
			req.Header.Set("MCP-Protocol-Version", version)
		}
		g.ServeHTTP(httptest.NewRecorder(), req)
		allowed := 0
		for _, e := range rec.entries() {
			if e.Decision == "allow" {
				if e.Action != "mcp:everything.echo" {
					t.Fatalf("allowed %q", e.Action)
				}
				allowed++
			}
		}
		for _, name := range up.ranTools() {
			if name != "echo" {
				t.Fatalf("the server ran %q from %q", name, body)
			}
		}
		if ran := len(up.ranTools()); ran > allowed {
			t.Fatalf("the server ran %d calls, %d were audited as allowed", ran, allowed)
		}
	})
}

// FuzzReadArguments checks the arguments reader against encoding/json: what
// it accepts is a JSON object (or null) that encoding/json reads to the
// same value, and a body with a repeated name at the top level is never
// accepted.
func FuzzReadArguments(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `null`, `[]`, `{"a":1,"a":2}`, `{"a":{"b":1,"b":2}}`, `"x"`, `{"a":"\ud800"}`, `{"a":1e999}`, ``} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		args, payload, err := ReadArguments(raw)
		if len(raw) > 0 && len(payload) != 64 {
			t.Fatalf("payload hash %q", payload)
		}
		if err != nil {
			return
		}
		if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
			if args != nil {
				t.Fatalf("args %v from %q", args, raw)
			}
			return
		}
		var want map[string]any
		if json.Unmarshal(raw, &want) != nil {
			t.Fatalf("accepted %q, which encoding/json does not read as an object", raw)
		}
		a, _ := json.Marshal(args)
		w, _ := json.Marshal(want)
		if !bytes.Equal(a, w) {
			t.Fatalf("read %s, encoding/json reads %s", a, w)
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.Token()
		seen := map[string]bool{}
		for dec.More() {
			k, _ := dec.Token()
			if seen[k.(string)] {
				t.Fatalf("accepted a repeated name %q in %q", k, raw)
			}
			seen[k.(string)] = true
			var skip json.RawMessage
			dec.Decode(&skip)
		}
	})
}

// FuzzResourceMetadataURL reads WWW-Authenticate headers from MCP servers:
// it never panics and returns "" or an absolute URL with a host.
func FuzzResourceMetadataURL(f *testing.F) {
	for _, s := range []string{`Bearer resource_metadata="https://a.example/.well-known/oauth-protected-resource"`,
		`Basic realm="x", Bearer error="invalid_token", resource_metadata="http://127.0.0.1:9/m"`, `Bearer resource_metadata="\"`, `,,,`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		u := ResourceMetadataURL([]string{h})
		if u == "" {
			return
		}
		p, err := url.Parse(u)
		if err != nil || !p.IsAbs() || p.Host == "" {
			t.Fatalf("%q from %q", u, h)
		}
	})
}
