package router

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/fsfault"
	"github.com/openai/openai-go/v3"
)

// TestAuditDiskFailureRecoversWithoutRestart breaks the audit log's disk
// for real (writes past a size fail, as on a full disk) and heals it. While
// it is broken calls are refused and /readyz says so; once it heals calls
// are served again with no restart, and the log verifies with a gap marker
// where the refused calls would have been. Before the log recovered by
// itself the router refused every call until it was restarted, while
// /healthz stayed OK so nothing restarted it.
func TestAuditDiskFailureRecoversWithoutRestart(t *testing.T) {
	h := newHarness(t, nil)
	admin := h.router.AdminHandler(h.cfg.Admin.TokenFile, AdminBackends{})
	probe := func(path string) int {
		rec := httptest.NewRecorder()
		admin.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code
	}
	call := func(msg string) error {
		_, err := h.client().Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg(msg)})
		return err
	}
	if err := call("before"); err != nil {
		t.Fatal(err)
	}
	h.quiesce()
	names, _ := filepath.Glob(filepath.Join(h.cfg.Audit.Dir, "audit-*.jsonl"))
	st, err := os.Stat(names[len(names)-1])
	if err != nil {
		t.Fatal(err)
	}
	lift := fsfault.LimitFileSize(t, st.Size()+40)
	for i, msg := range []string{"broken disk", "still broken"} {
		var apiErr *openai.Error
		if err := call(msg); !errors.As(err, &apiErr) || apiErr.StatusCode != 503 || apiErr.Code != "kars_audit_unavailable" {
			t.Fatalf("call %d on a broken disk: %v, want 503 kars_audit_unavailable", i+1, err)
		}
	}
	if code := probe("/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz %d while the audit log fails", code)
	}
	lift()
	deadline := time.Now().Add(20 * time.Second)
	for call("healed") != nil {
		if time.Now().After(deadline) {
			t.Fatal("calls still refused 20s after the disk healed: the router needs a restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code := probe("/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz %d after the log recovered", code)
	}
	if code := probe("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz %d", code)
	}
	if err := h.sink.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(h.cfg.Audit.Dir, audit.VerifyOptions{})
	if err != nil || !rep.OK() {
		t.Fatalf("verify after recovery: %+v %v", rep, err)
	}
	var markers, served int
	for _, e := range h.auditRecords() {
		switch {
		case e.Action == "audit:recover":
			markers++
		case e.Attrs["status"] == "200":
			served++
		}
	}
	if markers != 1 || served != 2 {
		t.Fatalf("%d gap markers and %d served calls on record, want 1 and 2 (before and after the failure)", markers, served)
	}
}
