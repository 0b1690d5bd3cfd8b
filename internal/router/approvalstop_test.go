package router

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/routerconfig"
)

// stopPrompt is how soon after its stop a router must have answered its
// held calls and returned: well under shutdownGrace, which it would wait
// for calls held a minute without ending them.
const stopPrompt = shutdownGrace / 6

// heldDecide asks the router at agentAddr, awaiting approval, to decide
// shell:rm, and delivers what it answered.
func heldDecide(t *testing.T, agentAddr string) <-chan Decision {
	ch := make(chan Decision, 1)
	go func() {
		var d Decision
		resp, err := http.Post("http://"+agentAddr+DecidePath, "application/json",
			strings.NewReader(`{"action":"shell:rm","args":{"path":"/tmp/x"},"awaitApproval":true}`))
		if err != nil {
			t.Errorf("held decide: %v", err)
		} else {
			if resp.StatusCode != http.StatusOK {
				t.Errorf("held decide answered %d", resp.StatusCode)
			}
			json.NewDecoder(resp.Body).Decode(&d)
			resp.Body.Close()
		}
		ch <- d
	}()
	return ch
}

// stopAsync calls stop on its own goroutine and delivers its error.
func stopAsync(stop func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- stop() }()
	return ch
}

// servingApprovals runs Serve on approvalServeConfig and returns an agent
// connected to its MCP gateway, the config's path, the config, the bound
// addresses and the stop function.
func servingApprovals(t *testing.T) (*approvalHarness, string, *routerconfig.Config, map[string]string, func() error) {
	t.Helper()
	up := startMCPUpstream(t, "")
	cfgPath, c := approvalServeConfig(t, up.url)
	addrs, stop := serving(t, ServeOptions{ConfigPath: cfgPath})
	a := &approvalHarness{harness: &harness{t: t}, up: up}
	a.cs = connectMCP(t, "http://"+addrs["agent"]+"/mcp/everything")
	return a, cfgPath, c, addrs, stop
}

// assertNextStartClosesNothing starts the router on cfgPath again and
// checks that it adds only its audit:open entry (no pending entry was
// left without an outcome), that a late decision on any of ended (calls
// the stopped router ended) is "already decided", 409, and runs nothing,
// and that the log verifies.
func assertNextStartClosesNothing(t *testing.T, cfgPath string, c *routerconfig.Config, ended ...string) {
	t.Helper()
	before, _ := AuditTail(c.Audit.Dir, 1<<20)
	addrs, stop := serving(t, ServeOptions{ConfigPath: cfgPath})
	for _, id := range ended {
		if st, b, err := decideAt(addrs["admin"], id, "approve"); err != nil || st != http.StatusConflict {
			t.Fatalf("a late decision on %s at the next router: %d %s %v (want 409: it ended with the last router)", id, st, b, err)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	after, _ := AuditTail(c.Audit.Dir, 1<<20)
	if len(after) != len(before)+1 || after[len(after)-1].Action != audit.ActionOpen {
		t.Fatalf("the next start added %d entries, want its audit:open only: %+v", len(after)-len(before), after[len(before):])
	}
	verifyLog(t, c.Audit.Dir)
}

// A router stopped while calls await approval (held a minute, past its
// shutdown grace period) ends them as it begins shutting down: the MCP
// agent gets the refusal of an abandoned approval, saying the router
// stopped, and the decide endpoint's agent a deny, both at once and not a
// dropped connection; each call has exactly one outcome entry (abandoned,
// abandoned_because=router_stopping) before the log closes, nothing ran,
// the chain verifies, and the next start has nothing to close out.
func TestApprovalEndsWhenRouterStops(t *testing.T) {
	a, cfgPath, c, addrs, stop := servingApprovals(t)
	mcpDone := a.callAsync(context.Background(), "delete_repo", map[string]any{"repo": "kars"})
	decideDone := heldDecide(t, addrs["agent"])
	ids := awaitListed(t, addrs["admin"], 2)

	start := time.Now()
	stopped := stopAsync(stop)
	var r callResult
	select {
	case r = <-mcpDone:
	case <-time.After(stopPrompt):
		t.Fatalf("the held MCP call was not answered within %v of the stop", stopPrompt)
	}
	if r.err != nil || !r.isError || !strings.HasPrefix(r.text, "kars policy: mcp:everything.delete_repo is deny (rule deletes-need-a-human): kars-router stopped while approval apv-") {
		t.Fatalf("the held MCP call answered %+v", r)
	}
	var d Decision
	select {
	case d = <-decideDone:
	case <-time.After(stopPrompt):
		t.Fatalf("the held decide was not answered within %v of the stop", stopPrompt)
	}
	if d.Decision != "deny" || d.Rule != "shell-needs-a-human" || !strings.Contains(d.Reason, "kars-router stopped while approval apv-") {
		t.Fatalf("the held decide answered %+v", d)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(stopPrompt):
		t.Fatalf("Serve did not return within %v of the stop", stopPrompt)
	}
	t.Logf("held calls answered and Serve returned %v after the stop", time.Since(start))

	entries, err := AuditTail(c.Audit.Dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		out := outcomesOf(entries, id)
		if len(out) != 1 || out[0].Decision != "deny" || out[0].Attrs["approval"] != "abandoned" ||
			out[0].Attrs["abandoned_because"] != "router_stopping" || out[0].Attrs["decided_by"] != "" ||
			!strings.Contains(out[0].Reason, "kars-router stopped while approval "+id) {
			t.Fatalf("outcomes of %s: %+v", id, out)
		}
		if !strings.Contains(r.text, id) && !strings.Contains(d.Reason, id) {
			t.Fatalf("neither agent was told of approval %s: %q, %q", id, r.text, d.Reason)
		}
	}
	if len(a.ran()) != 0 {
		t.Fatalf("the MCP server ran %v", a.ran())
	}
	verifyLog(t, c.Audit.Dir)
	assertNextStartClosesNothing(t, cfgPath, c, ids...)
}

// A decision and the router's stop, racing: exactly one of them ends the
// call. The decision won (200): the call was approved, ran, and the agent
// got its answer. The stop won: the decision is 409 (or finds the admin
// listener closed), the call is abandoned because the router was
// stopping and did not run. Either way the call has exactly one outcome,
// the chain verifies and the next start closes nothing out. Run it with
// -race -count=20.
func TestApprovalDecisionRacesRouterStop(t *testing.T) {
	a, cfgPath, c, addrs, stop := servingApprovals(t)
	done := a.callAsync(context.Background(), "delete_repo", map[string]any{"repo": "kars"})
	id := awaitListed(t, addrs["admin"], 1)[0]

	type answer struct {
		status int
		body   []byte
		err    error
	}
	begin := make(chan struct{})
	decided := make(chan answer, 1)
	go func() {
		<-begin
		st, b, err := decideAt(addrs["admin"], id, "approve")
		decided <- answer{st, b, err}
	}()
	// The stop comes up to 150 µs after the decision is sent, about what
	// the decision takes to arrive here: each winner in some runs.
	lag := rand.N(150 * time.Microsecond)
	stopped := stopAsync(func() error { <-begin; time.Sleep(lag); return stop() })
	close(begin)
	dec := <-decided
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	r := <-done

	entries, err := AuditTail(c.Audit.Dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	out := outcomesOf(entries, id)
	if len(out) != 1 {
		t.Fatalf("%d outcomes of %s (decision %d %s %v): %+v", len(out), id, dec.status, dec.body, dec.err, out)
	}
	switch {
	case dec.err == nil && dec.status == http.StatusOK:
		if out[0].Attrs["approval"] != "approved" || out[0].Attrs["decided_by"] != "alice" || r.err != nil || r.text != "deleted" || len(a.ran()) != 1 {
			t.Fatalf("the decision won but the call ended %+v, answered %+v, ran %v", out[0], r, a.ran())
		}
		t.Logf("the decision won (stop %v after it)", lag)
	case dec.err == nil && dec.status != http.StatusConflict:
		t.Fatalf("the decision answered %d %s", dec.status, dec.body)
	default:
		if out[0].Attrs["approval"] != "abandoned" || out[0].Attrs["abandoned_because"] != "router_stopping" ||
			r.err != nil || !r.isError || !strings.Contains(r.text, "kars-router stopped while approval "+id) || len(a.ran()) != 0 {
			t.Fatalf("the stop won (decision %d %v) but the call ended %+v, answered %+v, ran %v", dec.status, dec.err, out[0], r, a.ran())
		}
		t.Logf("the stop won (%v after the decision; decision %d %v)", lag, dec.status, dec.err)
	}
	verifyLog(t, c.Audit.Dir)
	assertNextStartClosesNothing(t, cfgPath, c, id)
}

// Once the router has begun stopping, a decision on a call it held is
// 409 (already decided) and changes nothing, and a call that would be
// held is refused at once, not held: a deny the audit log records as
// abandoned because the router was stopping, with no approval id (there
// is no pending entry to answer for).
func TestApprovalStoppingRouterHoldsNothing(t *testing.T) {
	a := newApprovalHarness(t, routerconfig.Approvals{TimeoutMillis: 60_000}, nil)
	done := a.callAsync(context.Background(), "delete_repo", map[string]any{"repo": "one"})
	p := a.awaitPending(1)[0]
	a.router.approvals.Stop()
	if r := <-done; r.err != nil || !r.isError || !strings.Contains(r.text, "kars-router stopped while approval "+p.ID) {
		t.Fatalf("the held call answered %+v", r)
	}
	for _, d := range []string{"approve", "deny"} {
		if st, b := a.adminDo("POST", "/admin/v1/approvals/"+p.ID+"?decision="+d+"&by=alice", "admin-secret-token"); st != http.StatusConflict {
			t.Fatalf("%s after the stop: %d %s", d, st, b)
		}
	}
	r := <-a.callAsync(context.Background(), "delete_repo", map[string]any{"repo": "two"})
	if r.err != nil || !r.isError || !strings.Contains(r.text, "kars-router is stopping, so the call is not held for approval") {
		t.Fatalf("a call after the stop answered %+v", r)
	}
	if len(a.pending()) != 0 || len(a.ran()) != 0 {
		t.Fatalf("after the stop: listed %+v, ran %v", a.pending(), a.ran())
	}
	var got []string
	for _, e := range a.approvalEntries() {
		got = append(got, e.Decision+" approval="+e.Attrs["approval"]+" because="+e.Attrs["abandoned_because"]+" id="+e.Attrs["approval_id"])
	}
	want := []string{"require_approval approval=pending because= id=" + p.ID, "deny approval=abandoned because=router_stopping id=" + p.ID,
		"deny approval=abandoned because=router_stopping id="}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
