package router

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig"
)

// rawPost sends body to the agent API as a hostile agent would, byte for
// byte, and returns the status and the decoded error code.
func (h *harness) rawPost(path, body string) (int, string, string) {
	h.t.Helper()
	resp, err := http.Post(h.agent.URL+path, "application/json", strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, gjson.GetBytes(b, "error.code").String(), string(b)
}

// openAITarget points the harness at the fake's OpenAI API (which serves
// the Responses API too).
func openAITarget(h *harness, c *routerconfig.Config) {
	c.Models.Primary = routerconfig.Target{Provider: routerconfig.ProviderOpenAI, Model: "gpt-4.1", Endpoint: h.fake.OpenAIBaseURL(),
		Auth: &routerconfig.Auth{Mode: routerconfig.AuthAPIKey, KeyFile: h.keyFile}}
}

// The security review's first proof: an upstream that takes the last of two
// "model" members received the agent's choice while policy and audit saw
// the configured model. Now the body is refused before governance and
// nothing is forwarded.
func TestDuplicateModelRefusedAndNotForwarded(t *testing.T) {
	h := newHarness(t, nil)
	for _, body := range []string{
		`{"model":"gpt-4.1","model":"o3-pro","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"gpt-4.1","mod\u0065l":"o3-pro","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"gpt-4.1","MODEL":"o3-pro","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"gpt-4.1","messages":[{"role":"user","content":"hi","role":"system"}]}`,
		"{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"}]}",
		`{"model":"gpt-4.1","messages":[{"role":"user","content":"\udead"}]}`,
		`{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"},]}`,
		`{"model":"gpt-4.1","stream":"false","messages":[]}`,
	} {
		status, code, raw := h.rawPost("/v1/chat/completions", body)
		if status != http.StatusBadRequest || code != "kars_bad_request" {
			t.Errorf("%q: %d %s", body, status, raw)
		}
	}
	if n := h.fake.Requests.Load(); n != 0 {
		t.Fatalf("%d ambiguous bodies reached the upstream", n)
	}
	for _, rec := range h.auditRecords() {
		if rec.Decision != "refused" || rec.Attrs["refusal"] != "kars_bad_request" {
			t.Fatalf("audit: %+v", rec)
		}
	}
}

// The second proof: Responses API answers without usage were settled at 0
// tokens. Now each is charged its reservation and flagged.
func TestAnswerWithoutUsageIsCharged(t *testing.T) {
	const daily = 100_000
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		openAITarget(h, c)
		c.Budget = &routerconfig.Budget{Daily: daily, DefaultReserve: 2_000}
	})
	body := `{"model":"gpt-4.1","input":"say hi #fake:nousage","max_output_tokens":500}`
	for range 5 {
		if status, _, raw := h.rawPost("/v1/responses", body); status != http.StatusOK {
			t.Fatalf("%d %s", status, raw)
		}
	}
	st := h.ledgerState()
	perCall := int64(len(body)+3)/4 + 500
	if st.DayUsed != 5*perCall || st.DayReserved != 0 {
		t.Fatalf("ledger %+v, want 5 × %d charged", st, perCall)
	}
	recs := h.auditRecords()
	if len(recs) != 5 {
		t.Fatalf("%d audit entries", len(recs))
	}
	for _, r := range recs {
		if r.Attrs["usage_reported"] != "false" || r.Attrs["usage_charged"] != "reserved" || r.Attrs["charged_tokens"] != strconv.FormatInt(perCall, 10) {
			t.Fatalf("audit attrs %v", r.Attrs)
		}
	}
	// With usage, the upstream's count is what is charged.
	before := h.ledgerState().DayUsed
	if status, _, raw := h.rawPost("/v1/responses", `{"model":"gpt-4.1","input":"say hi","max_output_tokens":500}`); status != http.StatusOK {
		t.Fatalf("%d %s", status, raw)
	}
	if got := h.ledgerState().DayUsed - before; got >= perCall || got <= 0 {
		t.Fatalf("a call with usage charged %d, want the upstream's (smaller) count", got)
	}
}

// n and best_of multiply the completion reservation: a per-request budget
// that fits one completion refuses five.
func TestChoicesMultiplyTheReservation(t *testing.T) {
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		openAITarget(h, c)
		c.Budget = &routerconfig.Budget{PerRequest: 1_000, Daily: 1 << 30}
	})
	one := `{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"max_tokens":600}`
	if status, _, raw := h.rawPost("/v1/chat/completions", one); status != http.StatusOK {
		t.Fatalf("%d %s", status, raw)
	}
	five := `{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"max_tokens":600,"n":5}`
	if status, code, raw := h.rawPost("/v1/chat/completions", five); status != http.StatusTooManyRequests || code != "kars_budget_per-request" {
		t.Fatalf("n=5: %d %s", status, raw)
	}
	best := `{"model":"gpt-4.1","prompt":"hi","max_tokens":600,"best_of":3}`
	if status, code, raw := h.rawPost("/v1/completions", best); status != http.StatusTooManyRequests || code != "kars_budget_per-request" {
		t.Fatalf("best_of=3: %d %s", status, raw)
	}
	if h.fake.Requests.Load() != 1 {
		t.Fatalf("%d upstream requests, want only the first", h.fake.Requests.Load())
	}
}

// A background response answers before it is generated: it is charged its
// reservation up front, and the forwarded body caps the output at what was
// charged.
func TestBackgroundResponseChargedUpFront(t *testing.T) {
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		openAITarget(h, c)
		c.Budget = &routerconfig.Budget{Daily: 1 << 30, DefaultReserve: 3_000}
	})
	body := `{"model":"gpt-4.1","input":"write a novel","background":true}`
	status, _, raw := h.rawPost("/v1/responses", body)
	if status != http.StatusOK || gjson.Get(raw, "status").Str != "queued" {
		t.Fatalf("%d %s", status, raw)
	}
	bodies := h.fake.Bodies()
	if len(bodies) != 1 || gjson.GetBytes(bodies[0], "max_output_tokens").Int() != 3_000 {
		t.Fatalf("forwarded %s", bodies)
	}
	want := int64(len(body)+3)/4 + 3_000
	if st := h.ledgerState(); st.DayUsed != want {
		t.Fatalf("charged %d, want the reservation %d", st.DayUsed, want)
	}
}

// Provider-side fetches are actions, denied unless a rule allows them, and
// audited; nothing is forwarded when one is denied.
func TestProviderFetchesGoverned(t *testing.T) {
	image := func(url string) string {
		return `{"model":"gpt-4.1","messages":[{"role":"user","content":[{"type":"text","text":"describe"},{"type":"image_url","image_url":{"url":"` + url + `"}}]}]}`
	}
	t.Run("denied by default", func(t *testing.T) {
		h := newHarness(t, nil) // the built-in default: inference only
		status, code, raw := h.rawPost("/v1/chat/completions", image("https://169.254.169.254/latest/meta-data"))
		if status != http.StatusForbidden || code != "kars_policy_denied" || !strings.Contains(raw, "egress:169.254.169.254:443") {
			t.Fatalf("%d %s", status, raw)
		}
		if h.fake.Requests.Load() != 0 {
			t.Fatal("a request with a denied fetch reached the upstream")
		}
		recs := h.auditRecords()
		if len(recs) != 1 || recs[0].Action != "egress:169.254.169.254:443" || recs[0].Decision != "deny" ||
			!strings.HasPrefix(recs[0].Attrs["provider_fetch.0"], "egress:169.254.169.254:443 deny") {
			t.Fatalf("audit: %+v", recs)
		}
	})
	t.Run("allowed host forwarded, others denied", func(t *testing.T) {
		h := newHarness(t, func(h *harness, c *routerconfig.Config) {
			c.Governance = &governance.Policy{Name: "p", Rules: []governance.Rule{
				{Name: "models", Effect: governance.EffectAllow, Actions: []string{"inference:*"}},
				{Name: "cdn", Effect: governance.EffectAllow, Actions: []string{"egress:cdn.example.com:443"}},
				{Name: "search", Effect: governance.EffectAllow, Actions: []string{"tool:provider.web_search"}},
			}}
		})
		if status, _, raw := h.rawPost("/v1/chat/completions", image("https://cdn.example.com/cat.png")); status != http.StatusOK {
			t.Fatalf("%d %s", status, raw)
		}
		if status, _, raw := h.rawPost("/v1/chat/completions", image("http://cdn.example.com/cat.png")); status != http.StatusForbidden {
			t.Fatalf("port 80 is another action: %d %s", status, raw)
		}
		if status, _, raw := h.rawPost("/v1/chat/completions", image("https://cdn.example.com@evil.example/cat.png")); status != http.StatusForbidden || !strings.Contains(raw, "egress:evil.example:443") {
			t.Fatalf("userinfo trick: %d %s", status, raw)
		}
		ws := `{"model":"gpt-4.1","messages":[{"role":"user","content":"news?"}],"web_search_options":{}}`
		if status, _, raw := h.rawPost("/v1/chat/completions", ws); status != http.StatusOK {
			t.Fatalf("allowed web search: %d %s", status, raw)
		}
		if h.fake.Requests.Load() != 2 {
			t.Fatalf("%d upstream requests, want 2", h.fake.Requests.Load())
		}
		recs := h.auditRecords()
		if recs[0].Decision != "allow" || !strings.HasPrefix(recs[0].Attrs["provider_fetch.0"], "egress:cdn.example.com:443 allow cdn") {
			t.Fatalf("audit: %+v", recs[0])
		}
	})
	t.Run("remote MCP needs a tool list and each tool decided", func(t *testing.T) {
		h := newHarness(t, func(h *harness, c *routerconfig.Config) {
			openAITarget(h, c)
			c.Governance = &governance.Policy{Name: "p", Rules: []governance.Rule{
				{Name: "models", Effect: governance.EffectAllow, Actions: []string{"inference:*"}},
				{Name: "wiki", Effect: governance.EffectAllow, Actions: []string{"egress:mcp.deepwiki.com:443", "mcp:deepwiki.ask_question"}},
			}}
		})
		mcp := func(tools string) string {
			return `{"model":"gpt-4.1","input":"q","tools":[{"type":"mcp","server_label":"deepwiki","server_url":"https://mcp.deepwiki.com/mcp"` + tools + `}]}`
		}
		if status, code, raw := h.rawPost("/v1/responses", mcp("")); status != http.StatusBadRequest || code != "kars_provider_fetch_ungovernable" {
			t.Fatalf("no tool list: %d %s", status, raw)
		}
		if status, _, raw := h.rawPost("/v1/responses", mcp(`,"allowed_tools":["ask_question","read_wiki_contents"]`)); status != http.StatusForbidden || !strings.Contains(raw, "mcp:deepwiki.read_wiki_contents") {
			t.Fatalf("unlisted tool: %d %s", status, raw)
		}
		if status, _, raw := h.rawPost("/v1/responses", mcp(`,"allowed_tools":["ask_question"]`)); status != http.StatusOK {
			t.Fatalf("allowed: %d %s", status, raw)
		}
		if h.fake.Requests.Load() != 1 {
			t.Fatalf("%d upstream requests, want 1", h.fake.Requests.Load())
		}
	})
	t.Run("anthropic server tools", func(t *testing.T) {
		h := newHarness(t, func(h *harness, c *routerconfig.Config) {
			c.Models.Primary = routerconfig.Target{Provider: routerconfig.ProviderAnthropic, Model: "claude-sonnet-4-5",
				Endpoint: h.fake.URL(), Auth: &routerconfig.Auth{Mode: routerconfig.AuthAPIKey, KeyFile: h.keyFile}}
		})
		body := `{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"web_fetch_20250910","name":"web_fetch"}]}`
		req, _ := http.NewRequest(http.MethodPost, h.agent.URL+"/v1/messages", strings.NewReader(body))
		req.Header.Set("anthropic-version", "2023-06-01")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e struct {
			Type  string                   `json:"type"`
			Error struct{ Message string } `json:"error"`
		}
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || e.Type != "error" || !strings.Contains(e.Error.Message, "tool:provider.web_fetch") {
			t.Fatalf("%d %+v", resp.StatusCode, e)
		}
		if h.fake.Requests.Load() != 0 {
			t.Fatal("forwarded")
		}
	})
}
