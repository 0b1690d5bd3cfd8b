package router

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/eval"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/memory/foundryfake"
	"github.com/kars-io/kars/internal/routerconfig"
)

// memoryHarness is a router bound to a store of the fake Foundry project,
// authenticating with a managed identity token from the fake IMDS.
func memoryHarness(t testing.TB, foundry *foundryfake.Server, endpoint, partition string, mutate func(*routerconfig.Memory), rules ...governance.Rule) *harness {
	t.Helper()
	return newHarness(t, func(h *harness, c *routerconfig.Config) {
		if rules == nil {
			rules = []governance.Rule{{Name: "memory", Effect: governance.EffectAllow, Actions: []string{"memory:*"}}}
		}
		c.Governance = &governance.Policy{Name: "memory", Rules: append([]governance.Rule{
			{Name: "models", Effect: governance.EffectAllow, Actions: []string{"inference:*:*"}}}, rules...)}
		c.Memory = &routerconfig.Memory{Endpoint: endpoint, Store: "kars-memories", Scope: routerconfig.MemoryScopeUser, Partition: partition,
			RetentionDays: 30, Auth: &routerconfig.Auth{Mode: routerconfig.AuthManagedIdentity, IMDSEndpoint: h.fake.URL()}}
		if mutate != nil {
			mutate(c.Memory)
		}
		foundry.Token = h.fake.EntraToken
	})
}

func memCall(t *testing.T, h *harness, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, h.agent.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func contents(out map[string]any) []string {
	var c []string
	for _, m := range out["memories"].([]any) {
		c = append(c, m.(map[string]any)["content"].(string))
	}
	return c
}

// Write, search and delete through the router against the Foundry wire
// format; partitions keep principals and sandboxes apart; retention and
// read-only are enforced by the router; every call is audited.
func TestMemoryThroughRouter(t *testing.T) {
	foundry := foundryfake.New("", "kars-memories")
	endpoint := foundry.Start()
	defer foundry.Close()
	a := memoryHarness(t, foundry, endpoint, "kars-a/bot", nil)
	b := memoryHarness(t, foundry, endpoint, "kars-b/bot", nil)
	foundry.Token = a.fake.EntraToken
	b.fake.EntraToken = a.fake.EntraToken

	status, out := memCall(t, a, "GET", "/kars/v1/memory", "")
	if status != 200 || out["scope"] != "user" || out["store"] != "kars-memories" {
		t.Fatalf("memory info: %d %v", status, out)
	}
	status, out = memCall(t, a, "POST", "/kars/v1/memory/memories", `{"content":"Alice prefers dark roast coffee","principal":"alice"}`)
	if status != 200 || out["id"] == "" {
		t.Fatalf("write: %d %v", status, out)
	}
	id := out["id"].(string)
	if got := foundry.Items("kars-memories", ""); !slices.Equal(got, []string{"kars/kars-a/bot/user/alice|Alice prefers dark roast coffee"}) {
		t.Fatalf("stored %v: the router fixes the Foundry scope", got)
	}
	status, out = memCall(t, a, "POST", "/kars/v1/memory/search", `{"query":"what coffee does she like","principal":"alice"}`)
	if status != 200 || !slices.Equal(contents(out), []string{"Alice prefers dark roast coffee"}) {
		t.Fatalf("search as alice: %d %v", status, out)
	}
	// Another principal of the same sandbox, and the same principal of
	// another sandbox, see nothing.
	if _, out = memCall(t, a, "POST", "/kars/v1/memory/search", `{"query":"coffee","principal":"bob"}`); len(contents(out)) != 0 {
		t.Fatalf("bob read alice's memory: %v", out)
	}
	if _, out = memCall(t, b, "POST", "/kars/v1/memory/search", `{"query":"coffee","principal":"alice"}`); len(contents(out)) != 0 {
		t.Fatalf("another sandbox read the memory: %v", out)
	}
	if status, _ = memCall(t, b, "DELETE", "/kars/v1/memory/memories/"+id+"?principal=alice", ""); status != http.StatusNotFound {
		t.Fatalf("another sandbox deleted it: %d", status)
	}
	// The agent cannot step out of its partition through the principal.
	for _, p := range []string{"../../kars-b/bot/user/alice", "", "a/b"} {
		if status, _ = memCall(t, a, "POST", "/kars/v1/memory/search", fmt.Sprintf(`{"query":"coffee","principal":%q}`, p)); status != http.StatusBadRequest {
			t.Fatalf("principal %q: %d", p, status)
		}
	}
	// Retention: a memory older than 30 days is never returned, and goes.
	old := foundry.Plant("kars-memories", "kars/kars-a/bot/user/alice", "Alice used to like green tea coffee", time.Now().Add(-40*24*time.Hour))
	_, out = memCall(t, a, "POST", "/kars/v1/memory/search", `{"query":"tea coffee","principal":"alice"}`)
	if got := contents(out); !slices.Equal(got, []string{"Alice prefers dark roast coffee"}) {
		t.Fatalf("search returned %v past the retention", got)
	}
	a.quiesce()
	a.router.Wait()
	for _, it := range foundry.Items("kars-memories", "") {
		if strings.Contains(it, "green tea") {
			t.Fatalf("expired memory %s not deleted", old)
		}
	}
	if status, out = memCall(t, a, "DELETE", "/kars/v1/memory/memories/"+id+"?principal=alice", ""); status != 200 || out["deleted"] != true {
		t.Fatalf("delete: %d %v", status, out)
	}
	if len(foundry.Items("kars-memories", "")) != 0 {
		t.Fatal("the memory is still stored")
	}

	var got []string
	for _, e := range a.auditRecords() {
		if e.Attrs["op"] == "memory" {
			got = append(got, e.Action+" "+e.Decision)
		}
	}
	want := []string{"memory:write allow", "memory:search allow", "memory:search allow", "memory:search deny", "memory:search deny", "memory:search deny", "memory:search allow", "memory:delete allow"}
	if !slices.Equal(got, want) {
		t.Fatalf("audit %v\nwant %v", got, want)
	}
}

func TestMemoryReadOnlyAndPolicy(t *testing.T) {
	foundry := foundryfake.New("", "kars-memories")
	endpoint := foundry.Start()
	defer foundry.Close()
	ro := memoryHarness(t, foundry, endpoint, "kars-a/bot", func(m *routerconfig.Memory) { m.ReadOnly = true; m.Scope = routerconfig.MemoryScopeAgent })
	status, out := memCall(t, ro, "POST", "/kars/v1/memory/memories", `{"content":"x"}`)
	if status != http.StatusForbidden || !strings.Contains(fmt.Sprint(out), "kars_memory_read_only") {
		t.Fatalf("read-only write: %d %v", status, out)
	}
	if status, _ = memCall(t, ro, "POST", "/kars/v1/memory/search", `{"query":"x"}`); status != 200 {
		t.Fatalf("read-only search: %d", status)
	}
	// No rule allows memory:write: denied before the store is called.
	denied := memoryHarness(t, foundry, endpoint, "kars-c/bot", func(m *routerconfig.Memory) { m.Scope = routerconfig.MemoryScopeAgent },
		governance.Rule{Name: "recall-only", Effect: governance.EffectAllow, Actions: []string{"memory:search"}})
	before := foundry.Calls("POST /items")
	if status, out = memCall(t, denied, "POST", "/kars/v1/memory/memories", `{"content":"x"}`); status != http.StatusForbidden || !strings.Contains(fmt.Sprint(out), "kars_policy_denied") {
		t.Fatalf("policy-denied write: %d %v", status, out)
	}
	if foundry.Calls("POST /items") != before {
		t.Fatal("a denied write reached the store")
	}
	// Without a binding the API says so.
	plain := newHarness(t, nil)
	if status, _ = memCall(t, plain, "GET", "/kars/v1/memory", ""); status != http.StatusNotFound {
		t.Fatalf("no binding: %d", status)
	}
}

// The admin API reports whether the store exists and admits the router,
// and forgets the sandbox's memories (deleteOnSandboxDelete).
func TestMemoryAdmin(t *testing.T) {
	foundry := foundryfake.New("", "kars-memories")
	endpoint := foundry.Start()
	defer foundry.Close()
	h := memoryHarness(t, foundry, endpoint, "kars-a/bot", nil)
	admin := httptest.NewServer(h.router.AdminHandler(h.cfg.Admin.TokenFile, AdminBackends{}))
	defer admin.Close()
	get := func(method, path string) (int, map[string]any) {
		req, _ := http.NewRequest(method, admin.URL+path, nil)
		req.Header.Set("Authorization", "Bearer admin-secret-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	if status, out := get("GET", "/admin/v1/memory"); status != 200 || out["reachable"] != true {
		t.Fatalf("status: %d %v", status, out)
	}
	memCall(t, h, "POST", "/kars/v1/memory/memories", `{"content":"one","principal":"alice"}`)
	memCall(t, h, "POST", "/kars/v1/memory/memories", `{"content":"two","principal":"bob"}`)
	foundry.Plant("kars-memories", "kars/kars-z/other", "someone else's", time.Now())
	if status, out := get("POST", "/admin/v1/memory/forget"); status != 200 {
		t.Fatalf("forget: %d %v", status, out)
	}
	if got := foundry.Items("kars-memories", ""); !slices.Equal(got, []string{"kars/kars-z/other|someone else's"}) {
		t.Fatalf("after forget: %v", got)
	}
	// A store that does not exist, and a token Foundry refuses.
	missing := memoryHarness(t, foundry, endpoint, "kars-a/bot", func(m *routerconfig.Memory) { m.Store = "nope" })
	admin2 := httptest.NewServer(missing.router.AdminHandler(missing.cfg.Admin.TokenFile, AdminBackends{}))
	defer admin2.Close()
	req, _ := http.NewRequest("GET", admin2.URL+"/admin/v1/memory", nil)
	req.Header.Set("Authorization", "Bearer admin-secret-token")
	resp, _ := http.DefaultClient.Do(req)
	var st MemoryStatus
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st.Problem != "StoreMissing" {
		t.Fatalf("missing store: %+v", st)
	}
	foundry.Token = "another-token"
	if _, out := get("GET", "/admin/v1/memory"); out["problem"] != "AuthMisconfigured" {
		t.Fatalf("refused token: %v", out)
	}
}

// The built-in memory-isolation corpus against a router with memory per
// user: each canary written as one principal stays invisible to another.
func TestMemoryIsolationCorpus(t *testing.T) {
	foundry := foundryfake.New("", "kars-memories")
	endpoint := foundry.Start()
	defer foundry.Close()
	h := memoryHarness(t, foundry, endpoint, "kars-a/bot", nil)
	cases, err := eval.Corpus("memory-isolation")
	if err != nil {
		t.Fatal(err)
	}
	res := eval.Run(t.Context(), eval.Target{Client: http.DefaultClient, RouterURL: h.agent.URL, AgentURL: h.agent.URL, Session: "iso"},
		cases, []karsv1.EvaluatorKind{karsv1.EvaluatorPolicyDecision})
	if s := eval.Summarize(res); s.CasesRun != len(cases) || s.CasesPassed != len(cases) {
		t.Fatalf("memory isolation: %+v %+v", s, res)
	}
	if len(foundry.Items("kars-memories", "")) != len(cases) {
		t.Fatalf("the canaries were not planted: %v", foundry.Items("kars-memories", ""))
	}
	// Memory scoped to the agent is shared by design: not applicable.
	shared := memoryHarness(t, foundry, endpoint, "kars-b/bot", func(m *routerconfig.Memory) { m.Scope = routerconfig.MemoryScopeAgent })
	res = eval.Run(t.Context(), eval.Target{Client: http.DefaultClient, RouterURL: shared.agent.URL, AgentURL: shared.agent.URL, Session: "iso"},
		cases, []karsv1.EvaluatorKind{karsv1.EvaluatorPolicyDecision})
	if s := eval.Summarize(res); s.CasesRun != 0 || res[0].Obs.NotApplicable == "" {
		t.Fatalf("agent-scoped memory: %+v", res[0])
	}
}

// FuzzMemoryRequest plays arbitrary agent requests against the memory API
// (method, path under /kars/v1/memory, body, principal) with a canary in
// alice's partition: nothing panics, every answer is a JSON object, the
// router never fails with a 5xx of its own, and the canary comes back only
// to a request that names alice.
func FuzzMemoryRequest(f *testing.F) {
	foundry := foundryfake.New("", "kars-memories")
	endpoint := foundry.Start()
	f.Cleanup(foundry.Close)
	h := memoryHarness(f, foundry, endpoint, "kars-a/bot", nil)
	const canary = "CANARY-7f3a-only-alice"
	resp, err := http.Post(h.agent.URL+"/kars/v1/memory/memories", "application/json",
		strings.NewReader(`{"content":"`+canary+`","principal":"alice"}`))
	if err != nil || resp.StatusCode != http.StatusOK {
		f.Fatalf("plant the canary: %v %v", err, resp)
	}
	resp.Body.Close()
	for _, s := range []struct {
		method byte
		path   string
		body   string
	}{
		{0, "", ""},
		{1, "/memories", `{"content":"x","principal":"bob"}`},
		{1, "/search", `{"query":"CANARY","principal":"bob"}`},
		{1, "/search", `{"query":"CANARY","principal":"alice","limit":3}`},
		{1, "/search", `{"query":"CANARY","principal":"bob","principal":"alice"}`},
		{1, "/search", `{"query":"CANARY","principal":"../alice"}`},
		{1, "/search", `{"query":"CANARY","Principal":"alice","principal":"bob"}`},
		{1, "/search", "{\"query\":\"CANARY\",\"principal\":\"bob\"}\n{\"principal\":\"alice\"}"},
		{2, "/memories/mem_1?principal=bob", ""},
		{2, "/memories/%2e%2e?principal=alice", ""},
		{1, "/memories", `{"content":"` + strings.Repeat("a", 70000) + `","principal":"bob"}`},
	} {
		f.Add(s.method, s.path, s.body)
	}
	methods := []string{http.MethodGet, http.MethodPost, http.MethodDelete, http.MethodPut}
	f.Fuzz(func(t *testing.T, m byte, path, body string) {
		req, err := http.NewRequest(methods[int(m)%len(methods)], h.agent.URL+"/kars/v1/memory"+path, strings.NewReader(body))
		if err != nil {
			return // not a URL a client could send
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 500 && resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("%s %q: %d %s", req.Method, path, resp.StatusCode, raw)
		}
		var out map[string]any
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %q answered %d with a non-object %q", req.Method, path, resp.StatusCode, raw)
		}
		if strings.Contains(string(raw), canary) && !strings.Contains(path+body, "alice") {
			t.Fatalf("alice's canary reached a request that does not name alice: %s %q %q -> %s", req.Method, path, body, raw)
		}
	})
}
