package inference

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"
)

// A provider acts on the agent's behalf when a request asks it to fetch a
// URL (an image, a file, a document), to search or fetch the web, to call a
// remote MCP server, or to run any other server-side tool. Those reach hosts
// outside every egress control kars has, so each is an action the router
// decides before the request is forwarded, with the governance engine's
// default (deny) when no rule speaks to it:
//
//   - a URL the provider will fetch: egress:<host>:<port>
//   - a remote MCP server: egress:<host>:<port> of its URL, and
//     mcp:<server>.<tool> for every tool the request lets the provider call;
//     a server whose tools are not listed is refused, because the provider
//     could then call any of them
//   - any provider-executed tool (web search, web fetch, code execution,
//     file search, connectors, data sources, tool types kars does not know):
//     tool:provider.<type>, with a version date suffix removed
//     (web_search_20250305 → tool:provider.web_search)
//
// Client tools — functions and the tool types the client itself executes
// (Anthropic's bash, text editor, computer and memory; OpenAI's computer
// use, local shell, apply patch) — are not provider fetches: the agent's
// runtime runs them and asks the router through the decide endpoint.

// Fetch is one thing a request asks the provider to do on the agent's behalf.
type Fetch struct {
	// Action is the governance action deciding it.
	Action string
	// Where is the path of the member in the request body, for messages.
	Where string
}

// MaxFetches bounds the provider actions one request may carry; more is
// refused rather than decided one by one.
const MaxFetches = 256

// maxActionLen is the governance engine's bound on an action.
const maxActionLen = 256

// ErrFetchRefused wraps every reason ProviderFetches refuses a body.
var ErrFetchRefused = errors.New("provider-side fetch refused")

func refuseFetch(where, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrFetchRefused, where, fmt.Sprintf(format, args...))
}

// ProviderFetches lists what a request body (already validated as strict
// JSON) asks the provider to fetch or run, in document order, without
// duplicates. It returns an error wrapping ErrFetchRefused for a request
// kars cannot govern: a URL that is not absolute http(s) or data, a remote
// MCP server without a tool list, or more than MaxFetches actions.
func ProviderFetches(d Dialect, op Op, body []byte) ([]Fetch, error) {
	var f fetchFinder
	// The top-level members, found in one pass (as root.Get would find
	// each: the first of a name) rather than one pass per member, each of
	// which would skip the whole conversation again.
	var m struct{ system, messages, tools, mcpServers, webSearch, dataSources, input, prompt gjson.Result }
	gjson.ParseBytes(body).ForEach(func(k, v gjson.Result) bool {
		var dst *gjson.Result
		switch k.Str {
		case "system":
			dst = &m.system
		case "messages":
			dst = &m.messages
		case "tools":
			dst = &m.tools
		case "mcp_servers":
			dst = &m.mcpServers
		case "web_search_options":
			dst = &m.webSearch
		case "data_sources":
			dst = &m.dataSources
		case "input":
			dst = &m.input
		case "prompt":
			dst = &m.prompt
		default:
			return true
		}
		if !dst.Exists() {
			*dst = v
		}
		return true
	})
	switch {
	case d == DialectAnthropic && op == OpMessages:
		f.content(m.system, "system")
		f.content(m.messages, "messages")
		f.tools(m.tools, "tools")
		f.anthropicMCP(m.mcpServers)
	case op == OpChat:
		f.content(m.messages, "messages")
		f.tools(m.tools, "tools")
		if ws := m.webSearch; ws.Exists() && ws.Type != gjson.Null {
			f.add("tool:provider.web_search", "web_search_options")
		}
		f.dataSources(m.dataSources)
	case op == OpResponses:
		f.content(m.input, "input")
		f.content(m.prompt, "prompt")
		f.tools(m.tools, "tools")
	}
	if f.err == nil && len(f.out) > MaxFetches {
		f.err = refuseFetch("request", "more than %d provider-side fetches and tools", MaxFetches)
	}
	if f.err != nil {
		return nil, f.err
	}
	return f.out, nil
}

type fetchFinder struct {
	out  []Fetch
	seen map[string]bool
	err  error
}

func (f *fetchFinder) add(action, where string) {
	if f.err != nil || f.seen[action] {
		return
	}
	if len(action) > maxActionLen {
		f.fail(refuseFetch(where, "the action %.40q… is longer than %d bytes", action, maxActionLen))
		return
	}
	if f.seen == nil {
		f.seen = map[string]bool{}
	}
	f.seen[action] = true
	f.out = append(f.out, Fetch{Action: action, Where: where})
}

func (f *fetchFinder) fail(err error) {
	if f.err == nil {
		f.err = err
	}
}

// content walks message content (at any depth: tool results may carry
// images too) for the typed parts that name a URL the provider fetches.
func (f *fetchFinder) content(v gjson.Result, where string) {
	if f.err != nil || !v.Exists() {
		return
	}
	switch {
	case v.IsArray():
		i := 0
		v.ForEach(func(_, el gjson.Result) bool {
			f.content(el, where+"["+strconv.Itoa(i)+"]")
			i++
			return f.err == nil
		})
	case v.IsObject():
		switch v.Get("type").String() {
		case "image_url": // OpenAI chat: {"type":"image_url","image_url":{"url":...}} (or a bare string)
			u := v.Get("image_url")
			if u.IsObject() {
				u = u.Get("url")
			}
			f.url(u, where+".image_url")
		case "input_image": // Responses: {"type":"input_image","image_url":...}
			f.url(v.Get("image_url"), where+".image_url")
		case "input_file": // Responses: {"type":"input_file","file_url":...}
			f.url(v.Get("file_url"), where+".file_url")
		case "url": // Anthropic source: {"type":"url","url":...}
			f.url(v.Get("url"), where+".url")
		}
		v.ForEach(func(k, el gjson.Result) bool {
			if el.IsObject() || el.IsArray() {
				f.content(el, where+"."+k.String())
			}
			return f.err == nil
		})
	}
}

// url decides a URL the provider would fetch: data URLs carry their bytes
// and fetch nothing; http(s) URLs are egress to their host and port; any
// other scheme is refused (a provider might fetch gs:// or s3:// too).
func (f *fetchFinder) url(v gjson.Result, where string) {
	if !v.Exists() || v.Type == gjson.Null {
		return
	}
	if v.Type != gjson.String {
		f.fail(refuseFetch(where, "the URL must be a string"))
		return
	}
	action, err := EgressAction(v.Str)
	if err != nil {
		f.fail(refuseFetch(where, "%v", err))
		return
	}
	if action != "" {
		f.add(action, where)
	}
}

// EgressAction returns the governance action for fetching raw, or "" for a
// data URL, which fetches nothing.
func EgressAction(raw string) (string, error) {
	if len(raw) >= 5 && strings.EqualFold(raw[:5], "data:") {
		return "", nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("unparsable URL")
	}
	port := ""
	switch strings.ToLower(u.Scheme) {
	case "https":
		port = "443"
	case "http":
		port = "80"
	default:
		return "", fmt.Errorf("only https, http and data URLs can be governed, not %q", u.Scheme)
	}
	if u.Opaque != "" || u.Host == "" {
		return "", fmt.Errorf("the URL has no host")
	}
	host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	if host == "" || !asciiHost(host) {
		return "", fmt.Errorf("the URL's host must be ASCII (use the punycode form)")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 || p[0] == '0' {
			return "", fmt.Errorf("the URL's port is invalid")
		}
		port = p
	}
	if strings.IndexByte(host, ':') >= 0 {
		host = "[" + host + "]"
	}
	return "egress:" + host + ":" + port, nil
}

func asciiHost(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == ':' || c == '_') {
			return false
		}
	}
	return true
}

// clientTools are tool types the client executes; every other typed tool
// runs at the provider.
var clientTools = map[string]bool{
	"function": true, "custom": true,
	// Anthropic client tools (with their version suffix removed).
	"bash": true, "text_editor": true, "computer": true, "memory": true,
	// OpenAI Responses client tools.
	"computer_use_preview": true, "computer_use": true, "local_shell": true, "shell": true, "apply_patch": true,
}

// toolType removes a version date suffix: "web_search_20250305",
// "web_search_preview_2025_03_11" and "text_editor_20250728" become
// "web_search", "web_search_preview" and "text_editor".
func toolType(t string) string {
	if i := strings.LastIndexByte(t, '_'); i > 0 && len(t)-i-1 == 8 && digits(t[i+1:]) {
		return t[:i]
	}
	if n := len(t); n > 11 && t[n-11] == '_' && digits(t[n-10:n-6]) && t[n-6] == '_' && digits(t[n-5:n-3]) && t[n-3] == '_' && digits(t[n-2:]) {
		return t[:n-11]
	}
	return t
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// tools decides each provider-executed tool of a tools array.
func (f *fetchFinder) tools(v gjson.Result, where string) {
	if !v.IsArray() {
		return
	}
	i := 0
	v.ForEach(func(_, t gjson.Result) bool {
		w := where + "[" + strconv.Itoa(i) + "]"
		i++
		typ := t.Get("type")
		if !typ.Exists() || typ.Type == gjson.Null {
			return true // an Anthropic custom tool: the client runs it
		}
		if typ.Type != gjson.String || typ.Str == "" {
			f.fail(refuseFetch(w, "a tool's type must be a non-empty string"))
			return false
		}
		name := toolType(typ.Str)
		if clientTools[name] {
			return true
		}
		if name == "mcp" {
			f.responsesMCP(t, w)
			return f.err == nil
		}
		if !toolName(name) {
			f.fail(refuseFetch(w, "tool type %q is not a plain name", typ.Str))
			return false
		}
		f.add("tool:provider."+name, w)
		return f.err == nil
	})
}

// toolName accepts the characters a governance tool name may hold.
func toolName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= 0x20 || c > 0x7e || c == ':' || c == '*' || c == '?' {
			return false
		}
	}
	return s != "" && len(s) <= 128
}

// responsesMCP decides an OpenAI Responses remote MCP tool:
// {"type":"mcp","server_label":..,"server_url":..|"connector_id":..,"allowed_tools":[..]|{"tool_names":[..]}}.
func (f *fetchFinder) responsesMCP(t gjson.Result, where string) {
	label := t.Get("server_label").String()
	if !toolName(label) || strings.IndexByte(label, '.') >= 0 {
		f.fail(refuseFetch(where, "an MCP tool needs a server_label without dots, colons or spaces"))
		return
	}
	if u := t.Get("server_url"); u.Exists() {
		f.url(u, where+".server_url")
	}
	if c := t.Get("connector_id"); c.Exists() {
		if !toolName(c.String()) {
			f.fail(refuseFetch(where, "connector_id is not a plain name"))
			return
		}
		f.add("tool:provider.connector."+c.String(), where+".connector_id")
	}
	allowed := t.Get("allowed_tools")
	if allowed.IsObject() {
		allowed = allowed.Get("tool_names")
	}
	f.mcpTools(label, allowed, where+".allowed_tools")
}

// anthropicMCP decides the Messages API's MCP connector servers:
// "mcp_servers":[{"type":"url","url":..,"name":..,"tool_configuration":{"allowed_tools":[..]}}].
func (f *fetchFinder) anthropicMCP(v gjson.Result) {
	if !v.Exists() || v.Type == gjson.Null {
		return
	}
	if !v.IsArray() {
		f.fail(refuseFetch("mcp_servers", "must be an array"))
		return
	}
	i := 0
	v.ForEach(func(_, s gjson.Result) bool {
		w := "mcp_servers[" + strconv.Itoa(i) + "]"
		i++
		name := s.Get("name").String()
		if !toolName(name) || strings.IndexByte(name, '.') >= 0 {
			f.fail(refuseFetch(w, "an MCP server needs a name without dots, colons or spaces"))
			return false
		}
		f.url(s.Get("url"), w+".url")
		if !s.Get("url").Exists() {
			f.fail(refuseFetch(w, "an MCP server needs a url"))
			return false
		}
		f.mcpTools(name, s.Get("tool_configuration.allowed_tools"), w+".tool_configuration.allowed_tools")
		return f.err == nil
	})
}

// mcpTools decides mcp:<server>.<tool> for each listed tool. A server whose
// tools are not listed is refused: the provider could call any of them.
func (f *fetchFinder) mcpTools(server string, list gjson.Result, where string) {
	if f.err != nil {
		return
	}
	if !list.IsArray() || len(list.Array()) == 0 {
		f.fail(refuseFetch(where, "list the tools the provider may call on MCP server %q; kars decides each as mcp:%s.<tool>", server, server))
		return
	}
	list.ForEach(func(_, n gjson.Result) bool {
		if n.Type != gjson.String || !toolName(n.Str) {
			f.fail(refuseFetch(where, "MCP tool names must be plain strings"))
			return false
		}
		f.add("mcp:"+server+"."+n.Str, where)
		return f.err == nil
	})
}

// dataSources decides Azure OpenAI "On Your Data" sources: the service
// queries each source's endpoint on the agent's behalf.
func (f *fetchFinder) dataSources(v gjson.Result) {
	if !v.Exists() || v.Type == gjson.Null {
		return
	}
	if !v.IsArray() {
		f.fail(refuseFetch("data_sources", "must be an array"))
		return
	}
	i := 0
	v.ForEach(func(_, s gjson.Result) bool {
		w := "data_sources[" + strconv.Itoa(i) + "]"
		i++
		typ := s.Get("type").String()
		if !toolName(typ) {
			f.fail(refuseFetch(w, "a data source needs a type"))
			return false
		}
		f.add("tool:provider.data_source."+typ, w)
		if ep := s.Get("parameters.endpoint"); ep.Exists() {
			f.url(ep, w+".parameters.endpoint")
		}
		return f.err == nil
	})
}
