package agent

import (
	"encoding/json"
	"net/http"
	"testing"
)

// TestAttachCredentials: http_get attaches a Header or Query binding's
// placeholder on the binding's endpoints only, and never overrides what
// the request already carries.
func TestAttachCredentials(t *testing.T) {
	var creds []agentCredential
	raw := `[{"name":"github","placeholder":"kars_placeholder_github_1","endpoints":["https://api.github.com/repos/"],"placement":{"type":"Header","name":"Authorization","valuePrefix":"Bearer "}},
		{"name":"search","placeholder":"kars_placeholder_search_2","endpoints":["https://search.example:8443/v1/"],"placement":{"type":"Query","name":"key"}},
		{"name":"telegram","placeholder":"kars_placeholder_telegram_3","endpoints":["https://api.telegram.org/bot"],"placement":{"type":"Path"}}]`
	if err := json.Unmarshal([]byte(raw), &creds); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ url, auth, query string }{
		{"https://api.github.com/repos/kars-io/kars/issues", "Bearer kars_placeholder_github_1", ""},
		{"https://API.GITHUB.COM:443/repos/x", "Bearer kars_placeholder_github_1", ""},
		{"https://api.github.com/user", "", ""},
		{"http://api.github.com/repos/x", "", ""},
		{"https://api.github.com.evil.test/repos/x", "", ""},
		{"https://search.example:8443/v1/find?q=kars", "", "key=kars_placeholder_search_2&q=kars"},
		{"https://search.example/v1/find?q=kars", "", "q=kars"},
		{"https://api.telegram.org/botX/getMe", "", ""},
	} {
		req, _ := http.NewRequest(http.MethodGet, c.url, nil)
		attachCredentials(req, creds)
		if got := req.Header.Get("Authorization"); got != c.auth {
			t.Errorf("%s: Authorization %q, want %q", c.url, got, c.auth)
		}
		if req.URL.RawQuery != c.query {
			t.Errorf("%s: query %q, want %q", c.url, req.URL.RawQuery, c.query)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, "https://api.github.com/repos/x", nil)
	req.Header.Set("Authorization", "Bearer mine")
	attachCredentials(req, creds)
	if req.Header.Get("Authorization") != "Bearer mine" {
		t.Error("an Authorization the request had was replaced")
	}
}
