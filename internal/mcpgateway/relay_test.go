package mcpgateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig"
)

// The relay answers tools/call exactly as the SDK path does: for every
// protocol revision the agent may speak, stateful and stateless servers,
// allowed, refused, unknown and failing calls give the same result or
// error, the same audit entries and the same runs on the server. The
// relay must actually have answered (counted), on both sides.
func TestRelayMatchesTheSDKPath(t *testing.T) {
	type answer struct {
		Result string
		Err    string
	}
	calls := []struct {
		name string
		args any
	}{
		{"echo", map[string]any{"message": "hello"}},
		{"pay", map[string]any{"amount": 50}},
		{"get-env", nil},
		{"nope", map[string]any{}},
		{"echo", map[string]any{"message": 7}}, // the server's own schema error
		{"echo", nil},
	}
	run := func(t *testing.T, stateless, relay bool, version string) ([]answer, []audited, []string, *Gateway) {
		up := startUpstream(t, stateless, nil)
		rec := newRecorder(t, allowEcho,
			governance.Rule{Name: "no-pay", Effect: governance.EffectDeny, Actions: []string{"mcp:everything.pay"}})
		pool := NewPool(nil, nil)
		t.Cleanup(pool.Close)
		g := New([]routerconfig.MCPServer{{Name: "everything", URL: up.url, Tools: []string{"echo", "pay", "nope"}}}, pool, rec, nil)
		g.servers["everything"].noRelay = !relay
		hs := httptest.NewServer(g)
		t.Cleanup(hs.Close)
		cs := connect(t, hs.URL+"/mcp/everything", version)
		var out []answer
		for _, c := range calls {
			p := &mcp.CallToolParams{Name: c.name}
			if c.args != nil {
				p.Arguments = c.args
			}
			res, err := cs.CallTool(context.Background(), p)
			a := answer{}
			if err != nil {
				a.Err = err.Error()
			} else {
				b, _ := json.Marshal(res)
				a.Result = string(b)
			}
			out = append(out, a)
		}
		return out, rec.entries(), up.ranTools(), g
	}
	for _, stateless := range []bool{true, false} {
		for _, version := range []string{"2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"} {
			t.Run(fmt.Sprintf("stateless=%v/%s", stateless, version), func(t *testing.T) {
				sdkAns, sdkAudit, sdkRan, _ := run(t, stateless, false, version)
				relAns, relAudit, relRan, g := run(t, stateless, true, version)
				for i := range calls {
					if sdkAns[i] != relAns[i] {
						t.Errorf("call %d (%s):\n SDK:   %+v\n relay: %+v", i, calls[i].name, sdkAns[i], relAns[i])
					}
				}
				if fmt.Sprint(sdkAudit) != fmt.Sprint(relAudit) || fmt.Sprint(sdkRan) != fmt.Sprint(relRan) {
					t.Errorf("audit %v / %v, ran %v / %v", sdkAudit, relAudit, sdkRan, relRan)
				}
				s := g.servers["everything"]
				if s.relayed.Load() != int64(len(calls)) || s.up.relayed.Load() == 0 {
					t.Errorf("the relay answered %d of %d calls and posted %d", s.relayed.Load(), len(calls), s.up.relayed.Load())
				}
			})
		}
	}
}

// Requests the relay does not take go to the SDK, which answers them.
func TestRelayLeavesTheRestToTheSDK(t *testing.T) {
	up := startUpstream(t, true, nil)
	rec := newRecorder(t, allowEcho)
	cs, hs := gatewayFor(t, routerconfig.MCPServer{Name: "everything", URL: up.url, Tools: []string{"echo"}}, rec)
	toolNames(t, cs)
	for _, tc := range []struct {
		name, body string
		header     map[string]string
	}{
		{"batch", `[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"x"}}}]`, nil},
		{"no protocol version", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"x"}}}`, map[string]string{"Mcp-Protocol-Version": ""}},
		{"unknown param", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","task":{},"arguments":{"message":"x"}}}`, nil},
		{"header mismatch", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"},"name":"echo","arguments":{"message":"x"}}}`,
			map[string]string{"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "get-env"}},
		{"duplicate member", `{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"x"}}}`, nil},
		{"tools/list", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, hs.URL+"/mcp/everything", strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			req.Header.Set("Mcp-Protocol-Version", "2025-06-18")
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			id, name, _, ok := readRelayRequest(req, []byte(tc.body))
			if ok {
				t.Fatalf("the relay took it (id %s, tool %q)", id, name)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		})
	}
}

// FuzzRelayRequest posts tools/call messages with consistent headers, so
// that the relay takes them, to a relaying gateway and to one that sends
// everything through the SDK, both in front of the same kind of server.
// The two answer alike (HTTP status, result or error code, the result
// itself); the policy invariants of FuzzGatewayMessage hold.
func FuzzRelayRequest(f *testing.F) {
	for _, s := range []struct{ id, name, args, version string }{
		{"1", "echo", `{"message":"hi"}`, "2026-07-28"},
		{`"a"`, "echo", `{"message":"hi"}`, "2025-06-18"},
		{"2", "pay", `{"amount":1}`, "2025-11-25"},
		{"3", "get-env", ``, "2025-03-26"},
		{"4", "echo", `{"message":"x","message":"y"}`, "2026-07-28"},
		{"5", "echo", `null`, "2025-06-18"},
		{"6", "ech\u006f", `{"message":1}`, "2026-07-28"},
		{"-7", "nope", `[]`, "2026-07-28"},
	} {
		f.Add(s.id, s.name, s.args, s.version)
	}
	type side struct {
		g   *Gateway
		up  *upstreamServer
		rec *recorder
	}
	mk := func(relay bool) side {
		up := startUpstream(f, true, nil)
		rec := newRecorder(f, allowEcho, governance.Rule{Name: "no-pay", Effect: governance.EffectDeny, Actions: []string{"mcp:everything.pay"}})
		pool := NewPool(nil, nil)
		f.Cleanup(pool.Close)
		g := New([]routerconfig.MCPServer{{Name: "everything", URL: up.url, Tools: []string{"echo", "pay"}}}, pool, rec, nil)
		g.servers["everything"].noRelay = !relay
		return side{g, up, rec}
	}
	rel, sdk := mk(true), mk(false)
	f.Fuzz(func(t *testing.T, id, name, args, version string) {
		params := `"name":` + strconv.Quote(name)
		if args != "" {
			params += `,"arguments":` + args
		}
		if version >= modernProtocol {
			params += `,"_meta":{"io.modelcontextprotocol/protocolVersion":` + strconv.Quote(version) + `,"io.modelcontextprotocol/clientCapabilities":{}}`
		}
		body := `{"jsonrpc":"2.0","id":` + id + `,"method":"tools/call","params":{` + params + `}}`
		post := func(g *Gateway) *httptest.ResponseRecorder {
			req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:8443/mcp/everything", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			req.Header.Set("Mcp-Protocol-Version", version)
			req.Header.Set("Mcp-Method", "tools/call")
			if h := strings.Map(func(r rune) rune {
				if r < 0x20 || r > 0x7e {
					return -1
				}
				return r
			}, name); h == name {
				req.Header.Set("Mcp-Name", name)
			}
			w := httptest.NewRecorder()
			g.ServeHTTP(w, req)
			return w
		}
		before := rel.g.servers["everything"].relayed.Load()
		a := post(rel.g)
		if rel.g.servers["everything"].relayed.Load() == before {
			return // the SDK answered: nothing to compare
		}
		b := post(sdk.g)
		if a.Code != b.Code {
			t.Fatalf("status relay %d, SDK %d for %s\n%s\n%s", a.Code, b.Code, body, a.Body, b.Body)
		}
		var ra, rb struct {
			ID     json.RawMessage
			Result json.RawMessage
			Error  *struct{ Code int }
		}
		if json.Unmarshal(a.Body.Bytes(), &ra) != nil {
			t.Fatalf("relay answered %q", a.Body)
		}
		if json.Unmarshal(b.Body.Bytes(), &rb) != nil {
			return // the SDK's own answer is not JSON-RPC (an HTTP error); the relay's is
		}
		if (ra.Error == nil) != (rb.Error == nil) || (ra.Error != nil && ra.Error.Code != rb.Error.Code) {
			t.Fatalf("relay %s, SDK %s for %s", a.Body, b.Body, body)
		}
		if ra.Error == nil && !jsonEqual(ra.Result, rb.Result) {
			t.Fatalf("results differ for %s:\n relay %s\n SDK   %s", body, ra.Result, rb.Result)
		}
		for _, name := range rel.up.ranTools() {
			if name != "echo" {
				t.Fatalf("the server ran %q from %q", name, body)
			}
		}
		allowed := 0
		for _, e := range rel.rec.entries() {
			if e.Decision == "allow" {
				allowed++
			}
		}
		if ran := len(rel.up.ranTools()); ran > allowed {
			t.Fatalf("the server ran %d calls, %d were audited as allowed", ran, allowed)
		}
	})
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// FuzzRelayResponse feeds a server's answers (JSON or an SSE stream) to
// the relay's reader: it never panics, and what it returns is the result
// of the response with the relay's id.
func FuzzRelayResponse(f *testing.F) {
	for _, s := range []struct {
		ct, body string
	}{
		{"application/json", `{"jsonrpc":"2.0","id":"kars-1","result":{"content":[]}}`},
		{"application/json", `{"jsonrpc":"2.0","id":"kars-1","error":{"code":-32602,"message":"bad"}}`},
		{"text/event-stream", "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"kars-1\",\n\ndata: \"result\":{}}\n\n"},
		{"text/event-stream", "data: {\"jsonrpc\":\"2.0\",\"id\":\"kars-1\",\"result\":{\"isError\":true}}\n\n"},
		{"text/event-stream", "data: {\"jsonrpc\":\"2.0\",\"id\":\"kars-2\",\"result\":{}}\n\n"},
		{"text/html", "<html>"},
	} {
		f.Add(s.ct, []byte(s.body), 200)
	}
	f.Fuzz(func(t *testing.T, ct string, body []byte, status int) {
		if status < 100 || status > 999 {
			return
		}
		resp := &http.Response{StatusCode: status, Header: http.Header{"Content-Type": {ct}}, Body: io.NopCloser(bytes.NewReader(body))}
		raw, err := readRelayResponse(resp, "kars-1")
		if err != nil {
			return
		}
		if len(raw) == 0 || !bytes.Contains(body, []byte("kars-1")) && !bytes.Contains(body, []byte(`\u`)) {
			t.Fatalf("result %q from a body without the id: %q", raw, body)
		}
		if !json.Valid(raw) {
			t.Fatalf("result %q is not JSON", raw)
		}
	})
}
