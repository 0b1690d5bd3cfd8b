package inference

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/tidwall/gjson"
)

func TestParseRequestRefusesAmbiguousBodies(t *testing.T) {
	for _, bad := range []string{
		`{"model":"gpt-4.1","model":"o3-pro","messages":[]}`, // the upstream takes the last
		`{"model":"gpt-4.1","Model":"o3-pro","messages":[]}`,
		`{"model":"gpt-4.1","messages":[{"role":"user","content":"a","content":"b"}]}`,
		"{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}",
		`{"model":"gpt-4.1","messages":[{"role":"user","content":"\ud800"}]}`,
		`{"model":"gpt-4.1","messages":[],}`,
		`{"model":"gpt-4.1","stream":"true"}`,
		`{"model":"gpt-4.1","stream":1}`,
		`{"model":"gpt-4.1","n":0}`,
		`{"model":"gpt-4.1","n":1000}`,
		`{"model":"gpt-4.1","best_of":2.5}`,
	} {
		if _, err := ParseRequest(OpChat, []byte(bad)); err == nil {
			t.Errorf("ParseRequest(%q) accepted", bad)
		}
	}
	if _, err := ParseRequest(OpChat, []byte(`{"model":"a","model":"b"}`)); !errors.Is(err, ErrNotJSON) || !strings.Contains(err.Error(), `duplicate member name "model"`) {
		t.Errorf("duplicate model: %v", err)
	}
}

func TestParseRequestMultipliers(t *testing.T) {
	r, err := ParseRequest(OpCompletions, []byte(`{"model":"x","prompt":"p","n":3,"best_of":5,"max_tokens":10}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.Choices != 5 || r.MaxTokens != 10 {
		t.Fatalf("%+v", r)
	}
	r, _ = ParseRequest(OpChat, []byte(`{"model":"x","messages":[]}`))
	if r.Choices != 1 || r.Background {
		t.Fatalf("%+v", r)
	}
	r, _ = ParseRequest(OpResponses, []byte(`{"model":"x","input":"hi","background":true}`))
	if !r.Background {
		t.Fatalf("%+v", r)
	}
	r, _ = ParseRequest(OpChat, []byte(`{"model":"x","messages":[],"background":true}`))
	if r.Background {
		t.Fatalf("background is a Responses API member only: %+v", r)
	}
}

func TestUpstreamBodyOutputCap(t *testing.T) {
	out, err := UpstreamBody(OpResponses, []byte(`{"model":"x","input":"hi","background":true}`), "", false, 4096)
	if err != nil || gjson.GetBytes(out, "max_output_tokens").Int() != 4096 {
		t.Fatalf("%s %v", out, err)
	}
	out, _ = UpstreamBody(OpResponses, []byte(`{"model":"x","input":"hi","max_output_tokens":100}`), "", false, 4096)
	if gjson.GetBytes(out, "max_output_tokens").Int() != 100 {
		t.Fatalf("an agent's own cap is kept: %s", out)
	}
}

func TestProviderFetches(t *testing.T) {
	for _, tc := range []struct {
		name string
		d    Dialect
		op   Op
		body string
		want []string
		err  string
	}{
		{"plain chat", DialectOpenAI, OpChat, `{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}`, nil, ""},
		{"chat image url", DialectOpenAI, OpChat,
			`{"messages":[{"role":"user","content":[{"type":"text","text":"what is this"},{"type":"image_url","image_url":{"url":"https://Images.Example.com./a.png"}}]}]}`,
			[]string{"egress:images.example.com:443"}, ""},
		{"chat data url fetches nothing", DialectOpenAI, OpChat,
			`{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}`, nil, ""},
		{"chat image port and userinfo", DialectAzure, OpChat,
			`{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://allowed.example@evil.example:8080/x"}}]}]}`,
			[]string{"egress:evil.example:8080"}, ""},
		{"chat ipv6 literal", DialectOpenAI, OpChat,
			`{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://[fd00::1]/x"}}]}]}`,
			[]string{"egress:[fd00::1]:80"}, ""},
		{"chat odd scheme refused", DialectOpenAI, OpChat,
			`{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"gs://bucket/x"}}]}]}`, nil, "only https, http and data"},
		{"chat web search options", DialectOpenAI, OpChat, `{"messages":[],"web_search_options":{}}`, []string{"tool:provider.web_search"}, ""},
		{"azure data sources", DialectAzure, OpChat,
			`{"messages":[],"data_sources":[{"type":"azure_search","parameters":{"endpoint":"https://search.example.net","index_name":"i"}}]}`,
			[]string{"tool:provider.data_source.azure_search", "egress:search.example.net:443"}, ""},
		{"responses input image and file", DialectOpenAI, OpResponses,
			`{"input":[{"role":"user","content":[{"type":"input_image","image_url":"https://a.example/i.png"},{"type":"input_file","file_url":"https://b.example/doc.pdf"},{"type":"input_file","file_id":"file-1"}]}]}`,
			[]string{"egress:a.example:443", "egress:b.example:443"}, ""},
		{"responses server tools", DialectOpenAI, OpResponses,
			`{"input":"hi","tools":[{"type":"function","name":"f"},{"type":"web_search_preview_2025_03_11"},{"type":"file_search","vector_store_ids":["v"]},{"type":"code_interpreter","container":{"type":"auto"}},{"type":"local_shell"}]}`,
			[]string{"tool:provider.web_search_preview", "tool:provider.file_search", "tool:provider.code_interpreter"}, ""},
		{"responses remote mcp", DialectOpenAI, OpResponses,
			`{"input":"hi","tools":[{"type":"mcp","server_label":"deepwiki","server_url":"https://mcp.deepwiki.com/mcp","allowed_tools":["ask_question"],"require_approval":"never"}]}`,
			[]string{"egress:mcp.deepwiki.com:443", "mcp:deepwiki.ask_question"}, ""},
		{"responses mcp filter object", DialectOpenAI, OpResponses,
			`{"input":"hi","tools":[{"type":"mcp","server_label":"gh","connector_id":"connector_github","allowed_tools":{"tool_names":["search","fetch"]}}]}`,
			[]string{"tool:provider.connector.connector_github", "mcp:gh.search", "mcp:gh.fetch"}, ""},
		{"responses mcp without tool list", DialectOpenAI, OpResponses,
			`{"input":"hi","tools":[{"type":"mcp","server_label":"x","server_url":"https://x.example/mcp"}]}`, nil, "list the tools"},
		{"responses prompt variables", DialectOpenAI, OpResponses,
			`{"prompt":{"id":"p","variables":{"pic":{"type":"input_image","image_url":"https://c.example/p.png"}}}}`,
			[]string{"egress:c.example:443"}, ""},
		{"anthropic url sources and server tools", DialectAnthropic, OpMessages,
			`{"max_tokens":10,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://img.example/a.jpg"}},{"type":"tool_result","tool_use_id":"t","content":[{"type":"document","source":{"type":"url","url":"https://docs.example/a.pdf"}}]}]}],"tools":[{"name":"get_weather","input_schema":{"type":"object"}},{"type":"web_search_20250305","name":"web_search","max_uses":3},{"type":"web_fetch_20250910","name":"web_fetch"},{"type":"bash_20250124","name":"bash"},{"type":"text_editor_20250728","name":"str_replace_based_edit_tool"}]}`,
			[]string{"egress:img.example:443", "egress:docs.example:443", "tool:provider.web_search", "tool:provider.web_fetch"}, ""},
		{"anthropic mcp connector", DialectAnthropic, OpMessages,
			`{"max_tokens":10,"messages":[],"mcp_servers":[{"type":"url","url":"https://mcp.example.com/sse","name":"ex","authorization_token":"t","tool_configuration":{"enabled":true,"allowed_tools":["echo"]}}]}`,
			[]string{"egress:mcp.example.com:443", "mcp:ex.echo"}, ""},
		{"anthropic mcp all tools refused", DialectAnthropic, OpMessages,
			`{"max_tokens":10,"messages":[],"mcp_servers":[{"type":"url","url":"https://mcp.example.com/sse","name":"ex"}]}`, nil, "list the tools"},
		{"unknown future tool type is a provider tool", DialectOpenAI, OpResponses,
			`{"input":"hi","tools":[{"type":"browser_agent"}]}`, []string{"tool:provider.browser_agent"}, ""},
		{"schema objects are not fetches", DialectOpenAI, OpChat,
			`{"messages":[],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"u":{"type":"string","format":"uri"}}}}}]}`, nil, ""},
		{"duplicates decided once", DialectOpenAI, OpChat,
			`{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://a.example/1"}},{"type":"image_url","image_url":{"url":"https://a.example/2"}}]}]}`,
			[]string{"egress:a.example:443"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, err := ProviderFetches(tc.d, tc.op, []byte(tc.body))
			if tc.err != "" {
				if !errors.Is(err, ErrFetchRefused) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, f := range fs {
				got = append(got, f.Action)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("actions = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestProviderFetchesBound(t *testing.T) {
	var parts []string
	for i := range MaxFetches + 1 {
		parts = append(parts, `{"type":"image_url","image_url":{"url":"https://h`+strings.Repeat("x", i%7)+string(rune('a'+i%26))+`.example/`+"\"}}")
	}
	// Different hosts so that each counts.
	for i := range parts {
		parts[i] = strings.Replace(parts[i], "https://h", "https://h"+strings.Repeat("y", i/26)+"-", 1)
	}
	body := `{"messages":[{"role":"user","content":[` + strings.Join(parts, ",") + `]}]}`
	if _, err := ProviderFetches(DialectOpenAI, OpChat, []byte(body)); !errors.Is(err, ErrFetchRefused) {
		t.Fatalf("err = %v", err)
	}
}

func FuzzProviderFetches(f *testing.F) {
	f.Add(uint8(0), []byte(`{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://a.example/x"}}]}]}`))
	f.Add(uint8(1), []byte(`{"input":[{"type":"input_file","file_url":"http://[::1]:80/"}],"tools":[{"type":"mcp","server_label":"s","server_url":"https://m/","allowed_tools":["a"]}]}`))
	f.Add(uint8(2), []byte(`{"messages":[{"content":[{"source":{"type":"url","url":"https://x"}}]}],"mcp_servers":[{"url":"https://y","name":"n","tool_configuration":{"allowed_tools":["t"]}}]}`))
	ops := []struct {
		d  Dialect
		op Op
	}{{DialectOpenAI, OpChat}, {DialectOpenAI, OpResponses}, {DialectAnthropic, OpMessages}}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		o := ops[int(which)%len(ops)]
		if _, err := ParseRequest(o.op, body); err != nil {
			return // the router refuses it before looking for fetches
		}
		fs, err := ProviderFetches(o.d, o.op, body)
		if err != nil {
			if !errors.Is(err, ErrFetchRefused) {
				t.Fatalf("unwrapped error %v", err)
			}
			return
		}
		if len(fs) > MaxFetches {
			t.Fatalf("%d fetches", len(fs))
		}
		for _, f := range fs {
			if !wellFormedAction(f.Action) {
				t.Fatalf("malformed action %q", f.Action)
			}
		}
	})
}

// wellFormedAction mirrors the governance grammar for the three namespaces
// fetches produce (the governance package checks the rest when deciding).
func wellFormedAction(a string) bool {
	if len(a) > 256 {
		return false
	}
	for i := 0; i < len(a); i++ {
		if a[i] < 0x21 || a[i] > 0x7e || a[i] == '*' || a[i] == '?' {
			return false
		}
	}
	ns, rest, ok := strings.Cut(a, ":")
	if !ok || rest == "" {
		return false
	}
	switch ns {
	case "egress":
		i := strings.LastIndexByte(rest, ':')
		return i > 0 && i < len(rest)-1
	case "tool", "mcp":
		return !strings.Contains(rest, ":")
	}
	return false
}
