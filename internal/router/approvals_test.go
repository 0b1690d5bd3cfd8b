package router

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/kars-io/kars/internal/approval"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig"
)

// approvalHarness is the MCP harness with a rule that holds delete_repo
// for approval, the approval bounds ap, and the admin API served.
type approvalHarness struct {
	*harness
	up    *mcpUpstream
	admin *httptest.Server
	cs    *mcp.ClientSession
}

func newApprovalHarness(t *testing.T, ap routerconfig.Approvals, pol *governance.Approval) *approvalHarness {
	t.Helper()
	up := startMCPUpstream(t, "")
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		c.Governance = &governance.Policy{Name: "tools", Approval: pol, Rules: []governance.Rule{
			{Name: "models", Effect: governance.EffectAllow, Actions: []string{"inference:*:*"}},
			{Name: "echo", Effect: governance.EffectAllow, Actions: []string{"mcp:everything.echo"}},
			{Name: "deletes-need-a-human", Effect: governance.EffectRequireApproval, Actions: []string{"mcp:everything.delete_repo"}},
			{Name: "shell-needs-a-human", Effect: governance.EffectRequireApproval, Actions: []string{"shell:*"}},
		}}
		c.MCP = []routerconfig.MCPServer{{Name: "everything", URL: up.url, Tools: []string{"echo", "delete_repo"}}}
		c.Approvals = &ap
	})
	a := &approvalHarness{harness: h, up: up}
	a.admin = httptest.NewServer(h.router.AdminHandler(h.cfg.Admin.TokenFile, AdminBackends{}))
	t.Cleanup(a.admin.Close)
	a.cs = connectMCP(t, h.agent.URL+"/mcp/everything")
	return a
}

// adminDo calls the admin API with the token (or without, token "").
func (a *approvalHarness) adminDo(method, path, token string) (int, []byte) {
	a.t.Helper()
	req, _ := http.NewRequest(method, a.admin.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (a *approvalHarness) pending() []approval.Pending {
	a.t.Helper()
	st, b := a.adminDo("GET", "/admin/v1/approvals", "admin-secret-token")
	if st != http.StatusOK {
		a.t.Fatalf("GET approvals: %d %s", st, b)
	}
	var out struct{ Approvals []approval.Pending }
	if err := json.Unmarshal(b, &out); err != nil {
		a.t.Fatal(err)
	}
	return out.Approvals
}

// awaitPending polls the admin list until n calls are held.
func (a *approvalHarness) awaitPending(n int) []approval.Pending {
	a.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p := a.pending()
		if len(p) == n {
			return p
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("%d calls held after 10s, want %d: %+v", len(p), n, p)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

type callResult struct {
	text    string
	isError bool
	err     error
}

// callAsync makes a tools/call on its own goroutine.
func (a *approvalHarness) callAsync(ctx context.Context, tool string, args map[string]any) <-chan callResult {
	ch := make(chan callResult, 1)
	go func() {
		out, err := a.cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
		r := callResult{err: err}
		if err == nil {
			r.isError = out.IsError
			if len(out.Content) > 0 {
				if tc, ok := out.Content[0].(*mcp.TextContent); ok {
					r.text = tc.Text
				}
			}
		}
		ch <- r
	}()
	return ch
}

func (a *approvalHarness) ran() []string {
	a.up.mu.Lock()
	defer a.up.mu.Unlock()
	return slices.Clone(a.up.ran)
}

// approvalEntries are the audit entries of delete_repo: decision, rule,
// the approval attribute and who decided.
func (a *approvalHarness) approvalEntries() []audit.Entry {
	var out []audit.Entry
	for _, e := range a.auditRecords() {
		if e.Action == "mcp:everything.delete_repo" {
			out = append(out, e)
		}
	}
	return out
}

func summary(es []audit.Entry) []string {
	var out []string
	for _, e := range es {
		s := e.Decision + " " + e.Rule + " approval=" + e.Attrs["approval"]
		if by := e.Attrs["decided_by"]; by != "" {
			s += " by=" + by
		}
		out = append(out, s)
	}
	return out
}

// A held call waits, is listed with what it asks, and completes as an
// allowed call once a person approves it; a second decision is 409; the
// pending and the decided entries are on record with the approval id.
func TestApprovalApproveThroughRouter(t *testing.T) {
	a := newApprovalHarness(t, routerconfig.Approvals{TimeoutMillis: 60_000}, nil)
	// A tool that may run once approved is listed (governance MayRun).
	lt, err := a.cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range lt.Tools {
		names = append(names, tl.Name)
	}
	if slices.Sort(names); !slices.Equal(names, []string{"delete_repo", "echo"}) {
		t.Fatalf("tools/list: %v", names)
	}
	done := a.callAsync(context.Background(), "delete_repo", map[string]any{"repo": "kars"})
	p := a.awaitPending(1)[0]
	if p.Action != "mcp:everything.delete_repo" || p.Rule != "deletes-need-a-human" || p.Args != `{"repo":"kars"}` ||
		len(p.ArgsSHA256) != 64 || !approval.ValidID(p.ID) || !p.Expires.After(p.Requested.Add(59*time.Second)) || p.AgeSeconds < 0 {
		t.Fatalf("pending: %+v", p)
	}
	if len(a.ran()) != 0 {
		t.Fatalf("the server ran %v before the approval", a.ran())
	}
	select {
	case r := <-done:
		t.Fatalf("the call answered before a decision: %+v", r)
	default:
	}
	if st, b := a.adminDo("POST", "/admin/v1/approvals/"+p.ID+"?decision=approve&by=alice", "admin-secret-token"); st != http.StatusOK ||
		!strings.Contains(string(b), `"decision": "approve"`) {
		t.Fatalf("approve: %d %s", st, b)
	}
	r := <-done
	if r.err != nil || r.isError || r.text != "deleted" {
		t.Fatalf("approved call: %+v", r)
	}
	if !slices.Equal(a.ran(), []string{"delete_repo"}) {
		t.Fatalf("the server ran %v", a.ran())
	}
	for _, d := range []string{"approve", "deny"} {
		if st, b := a.adminDo("POST", "/admin/v1/approvals/"+p.ID+"?decision="+d+"&by=bob", "admin-secret-token"); st != http.StatusConflict {
			t.Fatalf("second decision %s: %d %s", d, st, b)
		}
	}
	if len(a.pending()) != 0 {
		t.Fatalf("still listed: %+v", a.pending())
	}
	es := a.approvalEntries()
	want := []string{"require_approval deletes-need-a-human approval=pending", "allow deletes-need-a-human approval=approved by=alice"}
	if got := summary(es); !slices.Equal(got, want) {
		t.Fatalf("audit %q, want %q", got, want)
	}
	for _, e := range es {
		if e.Attrs["approval_id"] != p.ID || e.PayloadSHA256 != p.ArgsSHA256 {
			t.Fatalf("entry %+v does not name approval %s", e, p.ID)
		}
	}
	if rep, err := audit.Verify(a.cfg.Audit.Dir, audit.VerifyOptions{}); err != nil || !rep.OK() {
		t.Fatalf("audit chain: %v %+v", err, rep)
	}
}

// Denied and timed-out calls get the policy refusal with the reason and
// never reach the server.
func TestApprovalDenyAndTimeout(t *testing.T) {
	a := newApprovalHarness(t, routerconfig.Approvals{TimeoutMillis: 60_000}, nil)
	done := a.callAsync(context.Background(), "delete_repo", map[string]any{"repo": "kars"})
	p := a.awaitPending(1)[0]
	if st, b := a.adminDo("POST", "/admin/v1/approvals/"+p.ID+"?by=bob&decision=deny", "admin-secret-token"); st != http.StatusOK {
		t.Fatalf("deny: %d %s", st, b)
	}
	r := <-done
	if r.err != nil || !r.isError || !strings.HasPrefix(r.text, "kars policy: mcp:everything.delete_repo is deny (rule deletes-need-a-human): approval "+p.ID+" denied by bob") {
		t.Fatalf("denied call: %+v", r)
	}

	b := newApprovalHarness(t, routerconfig.Approvals{TimeoutMillis: 20}, nil)
	r = <-b.callAsync(context.Background(), "delete_repo", map[string]any{"repo": "kars"})
	if r.err != nil || !r.isError || !strings.Contains(r.text, "approval timed out after 20ms") {
		t.Fatalf("timed-out call: %+v", r)
	}
	if len(a.ran())+len(b.ran()) != 0 {
		t.Fatalf("the servers ran %v %v", a.ran(), b.ran())
	}
	if got, want := summary(a.approvalEntries()), []string{"require_approval deletes-need-a-human approval=pending", "deny deletes-need-a-human approval=denied by=bob"}; !slices.Equal(got, want) {
		t.Fatalf("audit %q, want %q", got, want)
	}
	if got, want := summary(b.approvalEntries()), []string{"require_approval deletes-need-a-human approval=pending", "deny deletes-need-a-human approval=timeout"}; !slices.Equal(got, want) {
		t.Fatalf("audit %q, want %q", got, want)
	}
}

// The router holds at most maxPending calls: the next is refused at once
// and audited as such; cancelling a held call drops it (abandoned).
func TestApprovalCapAndCancel(t *testing.T) {
	a := newApprovalHarness(t, routerconfig.Approvals{TimeoutMillis: 60_000, MaxPending: 1}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	held := a.callAsync(ctx, "delete_repo", map[string]any{"repo": "one"})
	a.awaitPending(1)
	r := <-a.callAsync(context.Background(), "delete_repo", map[string]any{"repo": "two"})
	if r.err != nil || !r.isError || !strings.Contains(r.text, "too many calls are awaiting approval (1 pending, the router's bound)") {
		t.Fatalf("call over the cap: %+v", r)
	}
	// Other tools are not held.
	if r := <-a.callAsync(context.Background(), "echo", map[string]any{"message": "hi"}); r.err != nil || r.text != "Echo: hi" {
		t.Fatalf("echo while a call is held: %+v", r)
	}
	cancel()
	if r := <-held; r.err == nil {
		t.Fatalf("the cancelled call answered %+v", r)
	}
	a.quiesce()
	if p := a.pending(); len(p) != 0 {
		t.Fatalf("a cancelled call is still listed: %+v", p)
	}
	if !slices.Equal(a.ran(), []string{"echo"}) {
		t.Fatalf("the server ran %v", a.ran())
	}
	got := summary(a.approvalEntries())
	slices.Sort(got)
	want := []string{"deny deletes-need-a-human approval=abandoned", "deny deletes-need-a-human approval=full",
		"require_approval deletes-need-a-human approval=pending"}
	if !slices.Equal(got, want) {
		t.Fatalf("audit %q, want %q", got, want)
	}
}

// The admin endpoints require the token, and refuse malformed, unknown
// and unauthorised decisions without touching the held call.
func TestApprovalAdminRefusals(t *testing.T) {
	a := newApprovalHarness(t, routerconfig.Approvals{TimeoutMillis: 60_000},
		&governance.Approval{Mode: governance.ApprovalNever, Approvers: []string{"alice"}})
	done := a.callAsync(context.Background(), "delete_repo", map[string]any{"repo": "kars"})
	p := a.awaitPending(1)[0]
	if !slices.Equal(p.Approvers, []string{"alice"}) {
		t.Fatalf("approvers: %+v", p)
	}
	for _, c := range []struct {
		method, path, token string
		status              int
	}{
		{"GET", "/admin/v1/approvals", "", http.StatusUnauthorized},
		{"GET", "/admin/v1/approvals", "wrong", http.StatusUnauthorized},
		{"POST", "/admin/v1/approvals/" + p.ID + "?decision=approve&by=alice", "", http.StatusUnauthorized},
		{"POST", "/admin/v1/approvals/apv-0000000000000000?decision=approve&by=alice", "admin-secret-token", http.StatusNotFound},
		{"POST", "/admin/v1/approvals/" + strings.ToUpper(p.ID) + "?decision=approve&by=alice", "admin-secret-token", http.StatusBadRequest},
		{"POST", "/admin/v1/approvals/" + p.ID + "?decision=yes&by=alice", "admin-secret-token", http.StatusBadRequest},
		{"POST", "/admin/v1/approvals/" + p.ID + "?decision=approve", "admin-secret-token", http.StatusBadRequest},
		{"POST", "/admin/v1/approvals/" + p.ID + "?decision=approve&by=al%20ice", "admin-secret-token", http.StatusBadRequest},
		{"POST", "/admin/v1/approvals/" + p.ID + "?decision=approve&decision=deny&by=alice", "admin-secret-token", http.StatusBadRequest},
		{"POST", "/admin/v1/approvals/" + p.ID + "?decision=approve&by=alice&force=1", "admin-secret-token", http.StatusBadRequest},
		{"POST", "/admin/v1/approvals/" + p.ID + "?decision=approve&by=mallory", "admin-secret-token", http.StatusForbidden},
		{"GET", "/admin/v1/approvals/" + p.ID, "admin-secret-token", http.StatusNotFound},
	} {
		if st, b := a.adminDo(c.method, c.path, c.token); st != c.status {
			t.Fatalf("%s %s (token %q): %d %s, want %d", c.method, c.path, c.token, st, b, c.status)
		}
	}
	if q := a.pending(); len(q) != 1 || q[0].ID != p.ID {
		t.Fatalf("after refused decisions: %+v", q)
	}
	if st, b := a.adminDo("POST", "/admin/v1/approvals/"+p.ID+"?decision=approve&by=alice", "admin-secret-token"); st != http.StatusOK {
		t.Fatalf("approve by alice: %d %s", st, b)
	}
	if r := <-done; r.err != nil || r.text != "deleted" {
		t.Fatalf("approved call: %+v", r)
	}
}

// A rule asking for more approvals than one is refused, not held: the
// router takes one decision per call.
func TestApprovalMinApprovalsRefused(t *testing.T) {
	a := newApprovalHarness(t, routerconfig.Approvals{TimeoutMillis: 60_000},
		&governance.Approval{Mode: governance.ApprovalNever, MinApprovals: 2})
	r := <-a.callAsync(context.Background(), "delete_repo", nil)
	if r.err != nil || !r.isError || !strings.Contains(r.text, "asks for 2 approvals") {
		t.Fatalf("call: %+v", r)
	}
	if got := summary(a.approvalEntries()); !slices.Equal(got, []string{"deny deletes-need-a-human approval=unsupported"}) {
		t.Fatalf("audit %q", got)
	}
}

// The decide endpoint holds a require_approval decision when the agent
// asks it to (awaitApproval) and answers what the person decided; without
// it, it answers require_approval at once, as before.
func TestApprovalDecideEndpoint(t *testing.T) {
	a := newApprovalHarness(t, routerconfig.Approvals{TimeoutMillis: 60_000}, nil)
	decide := func(body string) (int, Decision) {
		resp, err := http.Post(a.agent.URL+DecidePath, "application/json", strings.NewReader(body))
		if err != nil {
			t.Error(err)
			return 0, Decision{}
		}
		defer resp.Body.Close()
		var d Decision
		json.NewDecoder(resp.Body).Decode(&d)
		return resp.StatusCode, d
	}
	if st, d := decide(`{"action":"shell:rm","args":{"path":"/tmp/x"}}`); st != 200 || d.Decision != "require_approval" {
		t.Fatalf("without awaitApproval: %d %+v", st, d)
	}
	if st, d := decide(`{"action":"shell:rm","awaitApproval":"yes"}`); st != 400 {
		t.Fatalf("awaitApproval not a bool: %d %+v", st, d)
	}
	for _, c := range []struct{ verdict, want string }{{"approve", "allow"}, {"deny", "deny"}} {
		done := make(chan Decision, 1)
		go func() {
			st, d := decide(`{"action":"shell:rm","args":{"path":"/tmp/x"},"awaitApproval":true}`)
			if st != 200 {
				t.Errorf("held decide answered %d", st)
			}
			done <- d
		}()
		p := a.awaitPending(1)[0]
		if p.Action != "shell:rm" || p.Args != `{"path":"/tmp/x"}` {
			t.Fatalf("pending %+v", p)
		}
		if st, b := a.adminDo("POST", "/admin/v1/approvals/"+p.ID+"?decision="+c.verdict+"&by=carol", "admin-secret-token"); st != 200 {
			t.Fatalf("%s: %d %s", c.verdict, st, b)
		}
		if d := <-done; d.Decision != c.want || d.Rule != "shell-needs-a-human" || !strings.Contains(d.Reason, "carol") {
			t.Fatalf("%s: decided %+v", c.verdict, d)
		}
	}
	var got []string
	for _, e := range a.auditRecords() {
		if e.Action == "shell:rm" {
			got = append(got, e.Decision+" approval="+e.Attrs["approval"]+" by="+e.Attrs["decided_by"]+" op="+e.Attrs["op"])
		}
	}
	want := []string{"require_approval approval= by= op=decide", "deny approval= by= op=decide",
		"require_approval approval=pending by= op=decide", "allow approval=approved by=carol op=decide",
		"require_approval approval=pending by= op=decide", "deny approval=denied by=carol op=decide"}
	if !slices.Equal(got, want) {
		t.Fatalf("audit %q, want %q", got, want)
	}
}

// An agent quarantined while its call waits does not get it run, even
// when a person approves it.
func TestApprovalQuarantineWins(t *testing.T) {
	a := newApprovalHarness(t, routerconfig.Approvals{TimeoutMillis: 60_000}, nil)
	done := a.callAsync(context.Background(), "delete_repo", map[string]any{"repo": "kars"})
	p := a.awaitPending(1)[0]
	if st, b := a.adminDo("POST", "/admin/v1/quarantine?reason=incident-42", "admin-secret-token"); st != http.StatusOK {
		t.Fatalf("quarantine: %d %s", st, b)
	}
	if st, b := a.adminDo("POST", "/admin/v1/approvals/"+p.ID+"?decision=approve&by=alice", "admin-secret-token"); st != http.StatusOK {
		t.Fatalf("approve: %d %s", st, b)
	}
	r := <-done
	if r.err != nil || !r.isError || !strings.Contains(r.text, "quarantined meanwhile") || !strings.Contains(r.text, "incident-42") {
		t.Fatalf("call: %+v", r)
	}
	if len(a.ran()) != 0 {
		t.Fatalf("the server ran %v", a.ran())
	}
	if got := summary(a.approvalEntries()); !slices.Equal(got, []string{"require_approval deletes-need-a-human approval=pending",
		"deny deletes-need-a-human approval=quarantined by=alice"}) {
		t.Fatalf("audit %q", got)
	}
}

func TestArgsSummary(t *testing.T) {
	long := argsSummary(map[string]any{"s": strings.Repeat("é", 400)})
	if !utf8.ValidString(long) || len(long) > argsSummaryLen+len("…") || !strings.HasSuffix(long, "é…") {
		t.Fatalf("summary %q", long)
	}
	if s := argsSummary(map[string]any{"b": 1, "a": "x"}); s != `{"a":"x","b":1}` {
		t.Fatalf("summary %q", s)
	}
	if argsSummary(nil) != "" {
		t.Fatal("summary of no arguments")
	}
}

// approvalQuery is the admin API's reader of untrusted ids and queries.
func FuzzApprovalQuery(f *testing.F) {
	f.Add("apv-0123456789abcdef", "decision=approve&by=alice")
	f.Add("apv-0123456789abcdef", "decision=deny&by=system:serviceaccount:ns:sa")
	f.Add("apv-0123456789ABCDEF", "decision=approve&by=a")
	f.Add("x", "decision=approve&by=a&by=b")
	f.Add("apv-0123456789abcdef", "%zz")
	f.Fuzz(func(t *testing.T, id, q string) {
		approve, by, err := approvalQuery(id, q)
		if err != nil {
			return
		}
		if !approval.ValidID(id) || approval.CheckName(by) != nil {
			t.Fatalf("accepted id %q by %q", id, by)
		}
		want := "decision=deny"
		if approve {
			want = "decision=approve"
		}
		if !strings.Contains(q, want) {
			t.Fatalf("decision %v from %q", approve, q)
		}
	})
}

// parseDecide reads the agent's untrusted decide body, awaitApproval
// included.
func FuzzParseDecide(f *testing.F) {
	f.Add([]byte(`{"action":"tool:web_search","args":{"q":"x"}}`))
	f.Add([]byte(`{"action":"shell:rm","awaitApproval":true}`))
	f.Add([]byte(`{"action":"shell:rm","awaitApproval":1}`))
	f.Add([]byte(`{"action":"shell:rm","awaitApproval":true,"awaitApproval":false}`))
	f.Add([]byte(`{"action":"inference:chat:x"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := parseDecide(body)
		if err != nil {
			return
		}
		if ns, bad := governance.CheckAction(req.action); bad != "" || ns == governance.NSInference {
			t.Fatalf("accepted action %q", req.action)
		}
		var m map[string]json.RawMessage
		json.Unmarshal(body, &m)
		if req.await && string(m["awaitApproval"]) != "true" {
			t.Fatalf("await without awaitApproval true in %q", body)
		}
	})
}
