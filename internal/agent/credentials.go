package agent

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
)

// agentCredential is one entry of KARS_CREDENTIALS (render.AgentCredential):
// a placeholder and where the router places its value. It holds no secret.
type agentCredential struct {
	Name        string   `json:"name"`
	Placeholder string   `json:"placeholder"`
	Endpoints   []string `json:"endpoints"`
	Placement   struct {
		Type        string `json:"type"`
		Name        string `json:"name"`
		ValuePrefix string `json:"valuePrefix"`
	} `json:"placement"`
}

// agentCredentials are the agent's bindings, read once from the
// environment kars rendered.
var agentCredentials = sync.OnceValue(func() []agentCredential {
	var out []agentCredential
	_ = json.Unmarshal([]byte(os.Getenv(envCredentials)), &out) // none when absent or malformed
	return out
})

// attachCredentials puts in req the placeholder of each Header or Query
// binding one of whose endpoints req's URL falls under, so that http_get
// can call an API that wants a token (a GitHub-style bearer token) while
// the agent holds none: the router replaces the placeholder with the
// value on exactly those endpoints and refuses it anywhere else, so a
// wrong guess here is refused, never leaked. A header or parameter the
// request already has is left as it is.
func attachCredentials(req *http.Request, creds []agentCredential) {
	for _, c := range creds {
		if c.Placement.Name == "" || !underAnyEndpoint(req.URL, c.Endpoints) {
			continue
		}
		switch c.Placement.Type {
		case "Header":
			if req.Header.Get(c.Placement.Name) == "" {
				req.Header.Set(c.Placement.Name, c.Placement.ValuePrefix+c.Placeholder)
			}
		case "Query":
			q := req.URL.Query()
			if !q.Has(c.Placement.Name) {
				q.Set(c.Placement.Name, c.Placeholder)
				req.URL.RawQuery = q.Encode()
			}
		}
	}
}

// underAnyEndpoint reports whether u has the scheme, host, port and a path
// under one of the endpoint URLs.
func underAnyEndpoint(u *url.URL, endpoints []string) bool {
	for _, raw := range endpoints {
		e, err := url.Parse(raw)
		if err != nil {
			continue
		}
		if e.Scheme == u.Scheme && strings.EqualFold(e.Hostname(), u.Hostname()) && portOf(e) == portOf(u) && strings.HasPrefix(u.EscapedPath(), e.EscapedPath()) {
			return true
		}
	}
	return false
}

func portOf(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "https" {
		return "443"
	}
	return "80"
}
