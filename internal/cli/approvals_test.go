package cli

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/budget"
	"github.com/kars-io/kars/internal/router"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
)

// adminRouter serves a real router's admin API (Offline model, no MCP
// server) and counts the requests that reach it.
func adminRouter(t *testing.T) (*endpoint, *atomic.Int64) {
	t.Helper()
	c := routerconfigtest.Offline(t, t.TempDir())
	c.Sandbox = routerconfigtest.Sandbox("kars-bot", "bot")
	snap := routerconfigtest.Snapshot(t, c)
	sink, err := audit.Open(audit.Options{Dir: c.Audit.Dir, Sandbox: "bot"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	led, err := budget.Open(c.StateDir, budget.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(snap, router.Options{Audit: sink, Ledger: led, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var hits atomic.Int64
	h := r.AdminHandler(c.Admin.TokenFile, router.AdminBackends{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		hits.Add(1)
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	return &endpoint{http: srv.Client(), base: srv.URL, token: routerconfigtest.AdminToken, close: func() {}}, &hits
}

// The command lists and decides through the router's admin API; bad
// input is refused before anything is sent.
func TestApprovalsCommand(t *testing.T) {
	ep, hits := adminRouter(t)
	run := func(args []string, by string) (string, error) {
		path, err := approvalsPath(args, by)
		if err != nil {
			return "", err
		}
		var out bytes.Buffer
		err = runApprovals(context.Background(), ep, args[0], path, false, &out)
		return out.String(), err
	}
	if out, err := run([]string{"bot"}, ""); err != nil || out != "no calls await approval in bot\n" {
		t.Fatalf("list: %q %v", out, err)
	}
	_, err := run([]string{"bot", "approve", "apv-0123456789abcdef"}, "alice")
	if err == nil || !strings.Contains(err.Error(), "answered 404: no call awaits approval apv-0123456789abcdef") {
		t.Fatalf("approve unknown: %v", err)
	}
	if hits.Load() != 2 {
		t.Fatalf("%d requests reached the router, want 2", hits.Load())
	}
	for _, c := range []struct {
		args []string
		by   string
		want string
	}{
		{[]string{"bot", "allow", "apv-0123456789abcdef"}, "alice", "is not approve or deny"},
		{[]string{"bot", "approve", "apv-0123"}, "alice", "is not an approval id"},
		{[]string{"bot", "deny", "../admin/v1/reload"}, "alice", "is not an approval id"},
		{[]string{"bot", "deny", "apv-0123456789abcdef"}, "al ice", "--by: the name may hold only"},
	} {
		if _, err := run(c.args, c.by); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%v by %q: %v, want %q", c.args, c.by, err, c.want)
		}
	}
	if hits.Load() != 2 {
		t.Fatalf("bad input reached the router: %d requests", hits.Load())
	}
	ep.token = "wrong"
	if _, err := run([]string{"bot"}, ""); err == nil || !strings.Contains(err.Error(), "answered 401") {
		t.Fatalf("wrong token: %v", err)
	}
}
