package router

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/approval"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
)

// outcomesOf are the outcome entries of approval id (every entry with its
// approval_id but the pending one).
func outcomesOf(entries []audit.Entry, id string) []audit.Entry {
	var out []audit.Entry
	for _, e := range entries {
		if e.Attrs["approval_id"] == id && e.Attrs["approval"] != "pending" {
			out = append(out, e)
		}
	}
	return out
}

// verifyLog fails t unless the log in dir verifies.
func verifyLog(t *testing.T, dir string) {
	t.Helper()
	rep, err := audit.Verify(dir, audit.VerifyOptions{})
	if err != nil || !rep.OK() {
		t.Fatalf("audit verify: %+v %v", rep, err)
	}
}

// A life of the router as the log sees it: audit.Open (its audit:open
// entry), then recs, stamped at clock's times.
type lifeLog struct {
	t     *testing.T
	dir   string
	clock time.Time
}

func (l *lifeLog) life(recs ...audit.Record) {
	l.t.Helper()
	w, err := audit.Open(audit.Options{Dir: l.dir, Sandbox: "kars-test/bot", Now: func() time.Time { return l.clock }})
	if err != nil {
		l.t.Fatal(err)
	}
	defer w.Close()
	for _, r := range recs {
		if _, err := w.Append(context.Background(), r); err != nil {
			l.t.Fatal(err)
		}
	}
}

// start is a router start: the log opened, the close-out run. It returns
// the ids closed out and what was logged.
func (l *lifeLog) start() ([]string, string) {
	l.t.Helper()
	w, err := audit.Open(audit.Options{Dir: l.dir, Sandbox: "kars-test/bot", Now: func() time.Time { return l.clock }})
	if err != nil {
		l.t.Fatal(err)
	}
	defer w.Close()
	var logged bytes.Buffer
	closed, _, err := closeOutApprovals(context.Background(), l.dir, w, slog.New(slog.NewTextHandler(&logged, nil)))
	if err != nil {
		l.t.Fatal(err)
	}
	var ids []string
	for _, p := range closed {
		ids = append(ids, p.ID)
	}
	return ids, logged.String()
}

func (l *lifeLog) entries() []audit.Entry {
	l.t.Helper()
	es, err := AuditTail(l.dir, 1<<20)
	if err != nil {
		l.t.Fatal(err)
	}
	return es
}

// pendingRec is the pending entry holdForApproval writes.
func pendingRec(id, expires string) audit.Record {
	return audit.Record{Sandbox: "kars-test/bot", Agent: "kars-test/bot", Action: "mcp:everything.delete_repo",
		Decision: "require_approval", Rule: "deletes-need-a-human", Reason: "deletes need a human", PayloadSHA256: strings.Repeat("ab", 32),
		Attrs: map[string]string{"approval": "pending", "approval_id": id, "approval_expires": expires, "tool": "delete_repo"}}
}

func outcomeRec(id, outcome string) audit.Record {
	r := pendingRec(id, "")
	r.Decision = "deny"
	r.Attrs = map[string]string{"approval": outcome, "approval_id": id, "decided_by": "alice"}
	return r
}

func callRec() audit.Record {
	return audit.Record{Sandbox: "kars-test/bot", Agent: "kars-test/bot", Action: "mcp:everything.echo", Decision: "allow", Rule: "echo"}
}

// Over logs written as routers write them: a pending entry with no
// outcome gets exactly one, shaped as an abandoned call's; one with an
// outcome, or whose id or expiry the router would not have written,
// gets none (the odd ones with a log line); a start that crashed half way
// through its close-out is finished by the next; a further start adds
// nothing; the chain verifies throughout.
func TestCloseOutApprovalsOverLives(t *testing.T) {
	t0 := time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC)
	l := &lifeLog{t: t, dir: t.TempDir(), clock: t0}
	exp := t0.Add(2 * time.Minute).Format(time.RFC3339Nano)
	const (
		decided = "apv-00000000000000a1"
		waiting = "apv-00000000000000b2"
		second  = "apv-00000000000000c3"
	)
	l.life(callRec(), pendingRec(decided, exp), pendingRec(waiting, exp), outcomeRec(decided, "denied"),
		pendingRec("apv-NOT-HEX-AT-ALL!", exp), pendingRec("apv-00000000000000d4", "next tuesday"),
		pendingRec(second, exp), callRec())

	// The next start crashes after closing out one of the two.
	l.clock = t0.Add(3 * time.Minute)
	var waitingPending audit.Entry
	for _, e := range l.entries() {
		if e.Attrs["approval_id"] == waiting {
			waitingPending = e
		}
	}
	l.life(closeOutRecord(waitingPending))

	l.clock = t0.Add(4 * time.Minute)
	ids, logged := l.start()
	if !slices.Equal(ids, []string{second}) {
		t.Fatalf("closed out %v, want only %s (the crashed start closed %s)", ids, second, waiting)
	}
	for _, want := range []string{"malformed id", "apv-NOT-HEX-AT-ALL!", "malformed expiry", `"next tuesday"`} {
		if !strings.Contains(logged, want) {
			t.Errorf("log lacks %q:\n%s", want, logged)
		}
	}
	es := l.entries()
	for _, id := range []string{decided, waiting, second} {
		if n := len(outcomesOf(es, id)); n != 1 {
			t.Fatalf("%s has %d outcomes, want 1", id, n)
		}
	}
	for _, id := range []string{"apv-NOT-HEX-AT-ALL!", "apv-00000000000000d4"} {
		if n := len(outcomesOf(es, id)); n != 0 {
			t.Fatalf("malformed %s was closed out", id)
		}
	}
	o := outcomesOf(es, second)[0]
	var p audit.Entry
	for _, e := range es {
		if e.Attrs["approval_id"] == second && e.Attrs["approval"] == "pending" {
			p = e
		}
	}
	if o.Decision != "deny" || o.Attrs["approval"] != "abandoned" || o.Attrs["abandoned_because"] != "router_restart" ||
		o.Attrs["pending_seq"] != fmt.Sprint(p.Seq) || o.Attrs["approval_expires"] != "" || o.Attrs["tool"] != "delete_repo" ||
		o.Action != p.Action || o.Rule != p.Rule || o.PayloadSHA256 != p.PayloadSHA256 || o.Agent != p.Agent ||
		!strings.Contains(o.Reason, "restarted") || !strings.Contains(o.Reason, second) || o.Seq <= p.Seq {
		t.Fatalf("close-out %+v\nof pending %+v", o, p)
	}
	verifyLog(t, l.dir)

	l.clock = t0.Add(5 * time.Minute)
	if ids, _ := l.start(); len(ids) != 0 {
		t.Fatalf("a further start closed out %v", ids)
	}
	if n := len(l.entries()); n != len(es)+1 {
		t.Fatalf("a further start added %d entries, want only its audit:open", n-len(es))
	}
	verifyLog(t, l.dir)
}

// Only the hour a call can be held before the ended life's last entry is
// read: a pending entry older than that in the same life (whose outcome a
// live router would have written at its timeout) is not looked for, and
// the life before a life that served is not read at all (its start closed
// that one out).
func TestCloseOutReadsABoundedWindow(t *testing.T) {
	t0 := time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC)
	l := &lifeLog{t: t, dir: t.TempDir(), clock: t0}
	const earlier, old, recent = "apv-0000000000000001", "apv-0000000000000002", "apv-0000000000000003"
	l.life(pendingRec(earlier, t0.Add(time.Minute).Format(time.RFC3339Nano)))
	l.clock = t0.Add(time.Minute)
	w, err := audit.Open(audit.Options{Dir: l.dir, Sandbox: "kars-test/bot", Now: func() time.Time { return l.clock }})
	if err != nil {
		t.Fatal(err)
	}
	w.Append(context.Background(), pendingRec(old, t0.Add(2*time.Minute).Format(time.RFC3339Nano)))
	l.clock = t0.Add(3 * time.Hour)
	w.Append(context.Background(), pendingRec(recent, l.clock.Add(time.Minute).Format(time.RFC3339Nano)))
	if _, err := w.Append(context.Background(), callRec()); err != nil {
		t.Fatal(err)
	}
	w.Close()
	l.clock = l.clock.Add(time.Minute)
	if ids, _ := l.start(); !slices.Equal(ids, []string{recent}) {
		t.Fatalf("closed out %v, want only %s", ids, recent)
	}
}

// approvalCrashEnv makes the test binary run Serve on the config it names
// (TestApprovalCrashChild) and print its addresses, to be killed.
const approvalCrashEnv = "KARS_TEST_APPROVAL_CRASH_CONFIG"

func TestApprovalCrashChild(t *testing.T) {
	path := os.Getenv(approvalCrashEnv)
	if path == "" {
		t.Skip("the router process TestApprovalSurvivesRouterCrash kills")
	}
	err := Serve(context.Background(), ServeOptions{ConfigPath: path, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Ready: func(a map[string]string) {
			b, _ := json.Marshal(a)
			fmt.Printf("approval-crash-child: %s\n", b)
		}})
	t.Fatal(err)
}

// A router killed while a call awaits approval writes no outcome; the
// next router, started on the same audit log, appends exactly one (the
// call abandoned because the router restarted) before it serves, lists
// nothing, answers a decision on the id as already decided (409), and
// leaves a log that verifies; a third start adds nothing. The agent's
// call fails with the connection: it did not run.
func TestApprovalSurvivesRouterCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	up := startMCPUpstream(t, "")
	cfgPath, c := approvalServeConfig(t, up.url)

	cmd := exec.Command(os.Args[0], "-test.run=^TestApprovalCrashChild$")
	cmd.Env = append(os.Environ(), approvalCrashEnv+"="+cfgPath)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var addrs map[string]string
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		if v, ok := strings.CutPrefix(lines.Text(), "approval-crash-child: "); ok {
			json.Unmarshal([]byte(v), &addrs)
			break
		}
	}
	go io.Copy(io.Discard, stdout)
	if addrs["agent"] == "" || addrs["admin"] == "" {
		t.Fatalf("the child router reported %v", addrs)
	}

	a := &approvalHarness{harness: &harness{t: t}, up: up}
	a.cs = connectMCP(t, "http://"+addrs["agent"]+"/mcp/everything")
	done := a.callAsync(context.Background(), "delete_repo", map[string]any{"repo": "kars"})
	id := awaitListed(t, addrs["admin"], 1)[0]

	// The crash: no shutdown, no abandon path, no outcome.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	select {
	case r := <-done:
		if r.err == nil && !r.isError {
			t.Fatalf("the held call answered %+v from a killed router", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent's call did not end with the router's process")
	}
	entries, err := AuditTail(c.Audit.Dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(outcomesOf(entries, id)); n != 0 {
		t.Fatalf("the killed router wrote %d outcomes for %s; the test needs none", n, id)
	}
	before := len(entries)

	addrs2, stop := serving(t, ServeOptions{ConfigPath: cfgPath})
	entries, err = AuditTail(c.Audit.Dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	out := outcomesOf(entries, id)
	if len(out) != 1 || out[0].Decision != "deny" || out[0].Attrs["approval"] != "abandoned" ||
		out[0].Attrs["abandoned_because"] != "router_restart" || out[0].Action != "mcp:everything.delete_repo" {
		t.Fatalf("outcomes of %s after the restart: %+v", id, out)
	}
	if len(entries) != before+2 {
		t.Fatalf("the restart added %d entries, want its audit:open and one close-out", len(entries)-before)
	}
	if ids := listedAt(t, addrs2["admin"]); len(ids) != 0 {
		t.Fatalf("listed after the restart: %v", ids)
	}
	if st, b, _ := decideAt(addrs2["admin"], id, "approve"); st != http.StatusConflict ||
		!strings.Contains(string(b), "already decided") {
		t.Fatalf("approving the closed-out call: %d %s", st, b)
	}
	if len(a.ran()) != 0 {
		t.Fatalf("the MCP server ran %v", a.ran())
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	verifyLog(t, c.Audit.Dir)

	_, stop = serving(t, ServeOptions{ConfigPath: cfgPath})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	again, _ := AuditTail(c.Audit.Dir, 1<<20)
	if len(again) != len(entries)+1 || len(outcomesOf(again, id)) != 1 || again[len(again)-1].Action != audit.ActionOpen {
		t.Fatalf("a third start added %d entries (want its audit:open only), %d outcomes", len(again)-len(entries), len(outcomesOf(again, id)))
	}
	verifyLog(t, c.Audit.Dir)
}

// approvalServeConfig writes a router.json for Serve (admin token
// "admin-token") whose policy holds the MCP server's delete_repo, and the
// decide endpoint's shell:* when the agent asks, for a minute, and returns
// its path and the config.
func approvalServeConfig(t *testing.T, mcpURL string) (string, *routerconfig.Config) {
	t.Helper()
	dir := t.TempDir()
	c := routerconfigtest.Offline(t, dir)
	c.Sandbox = routerconfigtest.Sandbox("kars-test", "bot")
	c.Governance = &governance.Policy{Name: "tools", Rules: []governance.Rule{
		{Name: "deletes-need-a-human", Effect: governance.EffectRequireApproval, Actions: []string{"mcp:everything.delete_repo"}},
		{Name: "shell-needs-a-human", Effect: governance.EffectRequireApproval, Actions: []string{"shell:*"}},
	}}
	c.MCP = []routerconfig.MCPServer{{Name: "everything", URL: mcpURL, Tools: []string{"delete_repo"}}}
	c.Approvals = &routerconfig.Approvals{TimeoutMillis: 60_000}
	return routerconfigtest.Write(t, dir, c), c
}

// adminAt calls the admin API at addr with the token "admin-token".
func adminAt(addr, method, path string) (int, []byte, error) {
	req, _ := http.NewRequest(method, "http://"+addr+path, nil)
	req.Header.Set("Authorization", "Bearer admin-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, nil
}

// decideAt posts decision (approve or deny) by alice on approval id.
func decideAt(addr, id, decision string) (int, []byte, error) {
	return adminAt(addr, "POST", "/admin/v1/approvals/"+id+"?decision="+decision+"&by=alice")
}

// listedAt is the ids of the calls the router at addr holds.
func listedAt(t *testing.T, addr string) []string {
	t.Helper()
	st, b, err := adminAt(addr, "GET", "/admin/v1/approvals")
	var out struct{ Approvals []struct{ ID string } }
	if err != nil || st != http.StatusOK || json.Unmarshal(b, &out) != nil {
		t.Fatalf("GET approvals: %d %s %v", st, b, err)
	}
	var ids []string
	for _, p := range out.Approvals {
		ids = append(ids, p.ID)
	}
	return ids
}

// awaitListed polls the router at addr until it holds n calls, and
// returns their ids.
func awaitListed(t *testing.T, addr string, n int) []string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if ids := listedAt(t, addr); len(ids) == n {
			return ids
		} else if time.Now().After(deadline) {
			t.Fatalf("%d calls held after 10s, want %d", len(ids), n)
		}
	}
}

// FuzzCloseOutScan feeds the scan logs of any shape — lives, calls,
// pending entries and outcomes in any order, ids and expiries of any form
// — and checks that it never closes out a call twice, one with an outcome
// after its pending entry, or one whose id or expiry the router would not
// have written; and that it closes out every well-formed pending entry of
// the life that just ended that has no outcome.
func FuzzCloseOutScan(f *testing.F) {
	f.Add([]byte{0, 1, 4, 2, 1, 0}, "apv-00000000000000ff", "2026-05-04T10:02:00Z")
	f.Add([]byte{0, 1, 1, 3, 0, 3, 0}, "apv-../../etc", "soon")
	f.Add([]byte{0, 4, 1, 5, 0, 2, 0, 1}, "", "2026-05-04T10:02:00.5+02:00")
	f.Fuzz(func(t *testing.T, script []byte, oddID, oddExpiry string) {
		if len(script) > 200 {
			return
		}
		ids := []string{"apv-0000000000000001", "apv-0000000000000002", oddID}
		t0 := time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC)
		var log []audit.Entry // oldest first
		add := func(r audit.Record) {
			log = append(log, audit.Entry{Seq: uint64(len(log) + 1), Time: t0.Add(time.Duration(len(log)) * time.Second), Record: r})
		}
		for i, b := range script {
			id := ids[int(b>>3)%len(ids)]
			switch b % 6 {
			case 0:
				add(audit.Record{Action: audit.ActionOpen})
			case 1:
				exp := t0.Add(time.Hour).Format(time.RFC3339Nano)
				if i%2 == 1 {
					exp = oddExpiry
				}
				add(pendingRec(id, exp))
			case 2:
				add(outcomeRec(id, "approved"))
			case 3:
				add(closeOutRecord(audit.Entry{Seq: 1, Record: pendingRec(id, "")}))
			case 4:
				add(callRec())
			case 5:
				add(audit.Record{Action: audit.ActionRecover})
			}
		}
		add(audit.Record{Action: audit.ActionOpen}) // this start
		s := newCloseOutScan(slog.New(slog.NewTextHandler(io.Discard, nil)))
		for i := len(log) - 1; i >= 0 && s.add(log[i]); i-- {
		}
		closed := map[string]bool{}
		for _, r := range s.closeOuts() {
			id := r.Attrs["approval_id"]
			if closed[id] || !approval.ValidID(id) || r.Attrs["approval"] != "abandoned" {
				t.Fatalf("close-out %+v (twice, or malformed)", r.Attrs)
			}
			closed[id] = true
			seq, _ := strconv.ParseUint(r.Attrs["pending_seq"], 10, 64)
			if seq == 0 || int(seq) > len(log) {
				t.Fatalf("close-out names pending_seq %q", r.Attrs["pending_seq"])
			}
			p := log[seq-1]
			if p.Attrs["approval"] != "pending" || p.Attrs["approval_id"] != id {
				t.Fatalf("pending_seq %d is %+v", seq, p.Attrs)
			}
			if _, err := time.Parse(time.RFC3339Nano, p.Attrs["approval_expires"]); err != nil {
				t.Fatalf("closed out %s whose expiry %q does not parse", id, p.Attrs["approval_expires"])
			}
			for _, later := range log[seq:] {
				if later.Attrs["approval_id"] == id && later.Attrs["approval"] != "pending" {
					t.Fatalf("closed out %s, which has an outcome at %d", id, later.Seq)
				}
			}
		}
		// The life that just ended: from the last audit:open but one.
		start := -1
		for i := len(log) - 2; i >= 0; i-- {
			if log[i].Action == audit.ActionOpen {
				start = i
				break
			}
		}
		if start < 0 {
			return
		}
		for i := start + 1; i < len(log)-1; i++ {
			e := log[i]
			id := e.Attrs["approval_id"]
			if e.Attrs["approval"] != "pending" || !approval.ValidID(id) {
				continue
			}
			if _, err := time.Parse(time.RFC3339Nano, e.Attrs["approval_expires"]); err != nil {
				continue
			}
			answered := false
			for _, later := range log[i+1:] {
				answered = answered || (later.Attrs["approval_id"] == id && later.Attrs["approval"] != "pending")
			}
			if !answered && !closed[id] {
				t.Fatalf("pending %s at %d of the ended life has no outcome and was not closed out", id, e.Seq)
			}
		}
	})
}
