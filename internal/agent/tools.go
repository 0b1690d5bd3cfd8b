package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Tool is a built-in tool the agent can offer the model.
type Tool struct {
	Name        string
	Description string
	// Params is the JSON schema of the arguments.
	Params map[string]any
	// Run executes the tool; it only runs after the router allowed it.
	Run func(ws string, args map[string]any) (string, error)
}

// builtinTools are the reference agent's tools. Only http_get reaches the
// network, and only through the router's forward proxy (HTTP(S)_PROXY, and
// the egress guard for anything else), which decides the destination.
func builtinTools() []Tool {
	str := func(desc string) map[string]any { return map[string]any{"type": "string", "description": desc} }
	return []Tool{
		{
			Name:        "calculator",
			Description: "Evaluate an arithmetic expression with + - * / and parentheses.",
			Params:      map[string]any{"type": "object", "properties": map[string]any{"expression": str("the expression")}, "required": []string{"expression"}},
			Run: func(_ string, a map[string]any) (string, error) {
				v, err := Calculate(argString(a, "expression"))
				if err != nil {
					return "", err
				}
				return strconv.FormatFloat(v, 'g', 12, 64), nil
			},
		},
		{
			Name:        "current_time",
			Description: "The current date and time in UTC.",
			Params:      map[string]any{"type": "object", "properties": map[string]any{}},
			Run: func(string, map[string]any) (string, error) {
				return time.Now().UTC().Format(time.RFC3339), nil
			},
		},
		{
			Name:        "list_files",
			Description: "List the files in the agent's workspace.",
			Params:      map[string]any{"type": "object", "properties": map[string]any{}},
			Run: func(ws string, _ map[string]any) (string, error) {
				var names []string
				err := filepath.WalkDir(ws, func(p string, d os.DirEntry, err error) error {
					if err != nil {
						return err
					}
					rel, _ := filepath.Rel(ws, p)
					if d.IsDir() && strings.HasPrefix(d.Name(), ".") && rel != "." {
						return filepath.SkipDir
					}
					if !d.IsDir() {
						names = append(names, rel)
					}
					return nil
				})
				sort.Strings(names)
				return strings.Join(names, "\n"), err
			},
		},
		{
			Name:        "read_file",
			Description: "Read a file from the agent's workspace.",
			Params:      map[string]any{"type": "object", "properties": map[string]any{"path": str("path relative to the workspace")}, "required": []string{"path"}},
			Run: func(ws string, a map[string]any) (string, error) {
				p, err := workspacePath(ws, argString(a, "path"))
				if err != nil {
					return "", err
				}
				b, err := os.ReadFile(p)
				if len(b) > 64<<10 {
					b = b[:64<<10]
				}
				return string(b), err
			},
		},
		{
			Name:        "http_get",
			Description: "Fetch a URL (http or https) and return the status and the start of the body.",
			Params:      map[string]any{"type": "object", "properties": map[string]any{"url": str("the URL")}, "required": []string{"url"}},
			Run: func(_ string, a map[string]any) (string, error) {
				return httpGet(argString(a, "url"))
			},
		},
		{
			Name:        "write_file",
			Description: "Write a file in the agent's workspace.",
			Params: map[string]any{"type": "object", "properties": map[string]any{
				"path": str("path relative to the workspace"), "content": str("the text to write")}, "required": []string{"path", "content"}},
			Run: func(ws string, a map[string]any) (string, error) {
				p, err := workspacePath(ws, argString(a, "path"))
				if err != nil {
					return "", err
				}
				if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
					return "", err
				}
				content := argString(a, "content")
				return fmt.Sprintf("wrote %d bytes", len(content)), os.WriteFile(p, []byte(content), 0o600)
			},
		},
	}
}

func argString(a map[string]any, k string) string {
	switch v := a[k].(type) {
	case string:
		return v
	case nil:
		return ""
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// workspacePath resolves rel inside ws and refuses anything that leaves it.
func workspacePath(ws, rel string) (string, error) {
	rel = strings.TrimSpace(rel)
	if rel == "" {
		return "", fmt.Errorf("a path is required")
	}
	p := filepath.Join(ws, filepath.Clean("/"+rel))
	if p != ws && !strings.HasPrefix(p, ws+string(filepath.Separator)) {
		return "", fmt.Errorf("path %q leaves the workspace", rel)
	}
	if strings.HasPrefix(strings.TrimPrefix(p, ws+"/"), ".kars-agent") {
		return "", fmt.Errorf("path %q is the agent's own state", rel)
	}
	return p, nil
}

// Calculate evaluates the arithmetic expression in s. When s is free text
// (as the offline model sends it), the longest run of arithmetic characters
// is taken as the expression.
func Calculate(s string) (float64, error) {
	expr := longestArithmetic(s)
	if expr == "" {
		return 0, fmt.Errorf("no arithmetic expression in %q", s)
	}
	p := &calc{s: expr}
	v, err := p.sum()
	if err != nil {
		return 0, err
	}
	p.space()
	if p.i != len(p.s) {
		return 0, fmt.Errorf("unexpected %q in %q", p.s[p.i:], expr)
	}
	return v, nil
}

func longestArithmetic(s string) string {
	isArith := func(r rune) bool { return unicode.IsDigit(r) || strings.ContainsRune("+-*/(). ", r) }
	best, cur := "", []rune{}
	flush := func() {
		t := strings.TrimSpace(string(cur))
		if strings.ContainsAny(t, "0123456789") && len(t) > len(best) {
			best = t
		}
		cur = cur[:0]
	}
	for _, r := range s {
		if isArith(r) {
			cur = append(cur, r)
		} else {
			flush()
		}
	}
	flush()
	return strings.Trim(best, " .")
}

// calc is a recursive-descent parser: sum := product (('+'|'-') product)*,
// product := unary (('*'|'/') unary)*, unary := '-' unary | atom.
type calc struct {
	s     string
	i     int
	depth int
}

func (p *calc) space() {
	for p.i < len(p.s) && p.s[p.i] == ' ' {
		p.i++
	}
}

func (p *calc) sum() (float64, error) {
	v, err := p.product()
	for err == nil {
		p.space()
		if p.i >= len(p.s) || (p.s[p.i] != '+' && p.s[p.i] != '-') {
			return v, nil
		}
		op := p.s[p.i]
		p.i++
		var r float64
		if r, err = p.product(); op == '+' {
			v += r
		} else {
			v -= r
		}
	}
	return 0, err
}

func (p *calc) product() (float64, error) {
	v, err := p.unary()
	for err == nil {
		p.space()
		if p.i >= len(p.s) || (p.s[p.i] != '*' && p.s[p.i] != '/') {
			return v, nil
		}
		op := p.s[p.i]
		p.i++
		var r float64
		if r, err = p.unary(); err != nil {
			break
		}
		if op == '*' {
			v *= r
		} else if r == 0 {
			return 0, fmt.Errorf("division by zero")
		} else {
			v /= r
		}
	}
	return 0, err
}

func (p *calc) unary() (float64, error) {
	p.space()
	if p.i < len(p.s) && p.s[p.i] == '-' {
		p.i++
		v, err := p.unary()
		return -v, err
	}
	return p.atom()
}

func (p *calc) atom() (float64, error) {
	p.space()
	if p.i < len(p.s) && p.s[p.i] == '(' {
		if p.depth++; p.depth > 64 {
			return 0, fmt.Errorf("expression nests too deeply")
		}
		p.i++
		v, err := p.sum()
		if err != nil {
			return 0, err
		}
		p.space()
		if p.i >= len(p.s) || p.s[p.i] != ')' {
			return 0, fmt.Errorf("missing ')'")
		}
		p.i++
		p.depth--
		return v, nil
	}
	start := p.i
	for p.i < len(p.s) && (p.s[p.i] >= '0' && p.s[p.i] <= '9' || p.s[p.i] == '.') {
		p.i++
	}
	if start == p.i {
		return 0, fmt.Errorf("expected a number at %q", p.s[start:])
	}
	return strconv.ParseFloat(p.s[start:p.i], 64)
}

// webClient reaches the network through the router's forward proxy, as
// the runtime contract's environment names it.
var webClient = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{Proxy: http.ProxyFromEnvironment}}

// httpGet fetches the first http(s) URL in s (models, and the offline
// model in particular, may wrap it in prose) and returns the status line
// and up to 2 KiB of the body. A refusal by the router's egress policy is
// an HTTP 403 whose body says which rule refused it.
func httpGet(s string) (string, error) {
	var u string
	for _, f := range strings.Fields(s) {
		if strings.HasPrefix(f, "http://") || strings.HasPrefix(f, "https://") {
			u = strings.TrimRight(f, ".,;)\"'")
			break
		}
	}
	if u == "" {
		return "", fmt.Errorf("no http:// or https:// URL in %q", s)
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	attachCredentials(req, agentCredentials())
	resp, err := webClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 2<<10))
	return fmt.Sprintf("HTTP %d from %s: %s", resp.StatusCode, u, strings.TrimSpace(string(b))), nil
}
