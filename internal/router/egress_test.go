package router

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/egress/dest"
	"github.com/kars-io/kars/internal/egress/resolve"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
)

// egressHarness is a router with its egress side, an upstream TLS server
// on loopback standing in for every test host, and a resolver that maps
// the test names to it.
type egressHarness struct {
	*harness
	eg       *Egress
	agentURL string
	port     uint16
	cancel   context.CancelFunc
}

func newEgressHarness(t *testing.T, mutate func(c *routerconfig.Config, port uint16)) *egressHarness {
	t.Helper()
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "upstream ok") }))
	t.Cleanup(up.Close)
	port := uint16(up.Listener.Addr().(*net.TCPAddr).Port)
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		list := filepath.Join(h.dir, "blocklist.txt")
		os.WriteFile(list, []byte("blocked.test\n"), 0o600)
		c.Egress = &routerconfig.Egress{Blocklist: &routerconfig.Blocklist{Sources: []routerconfig.BlocklistSource{{File: list}}}}
		if mutate != nil {
			mutate(c, port)
		}
	})
	eg, err := NewEgress(h.router, h.cfg.StateDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{"allowed.test": true, "approved.test": true, "blocked.test": true, "unlisted.test": true, "denied-by-policy.test": true}
	eg.resolver = resolve.New(func(_ context.Context, fqdn string) ([]netip.Addr, error) {
		if names[strings.TrimSuffix(fqdn, ".")] {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: fqdn, IsNotFound: true}
	}).WithRefused(func(a netip.Addr) string {
		if a.IsLoopback() {
			return ""
		}
		return dest.Refused(a)
	})
	eg.proxy.Resolver = eg.resolver
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if err := eg.Start(ctx, h.cfg, &wg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	srv := httptest.NewServer(eg.Wrap(h.router.AgentHandler()))
	t.Cleanup(srv.Close)
	e := &egressHarness{harness: h, eg: eg, agentURL: srv.URL, port: port, cancel: cancel}
	// Wait for the blocklist's first load: until then egress fails closed.
	deadline := time.Now().Add(5 * time.Second)
	for b := eg.bl.Load(); b != nil && !b.ready.Load(); b = eg.bl.Load() {
		if time.Now().After(deadline) {
			t.Fatal("blocklist never loaded")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return e
}

// connect opens a CONNECT tunnel through the agent port and returns the
// response status, its body, and the tunnel when it was opened.
func (e *egressHarness) connect(t *testing.T, host string) (int, string, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(e.agentURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n", host, e.port, host, e.port)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		c.Close()
		return resp.StatusCode, string(b), nil
	}
	t.Cleanup(func() { c.Close() })
	return 200, "", c
}

func httpsThrough(t *testing.T, c net.Conn, host string) string {
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: host}) //nolint:gosec // a test upstream
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	b, _ := io.ReadAll(tc)
	return string(b)
}

func TestEgressDecisionsAuditedInOrder(t *testing.T) {
	e := newEgressHarness(t, func(c *routerconfig.Config, port uint16) {
		c.Egress.AllowedHosts = []string{fmt.Sprintf("allowed.test:%d", port), fmt.Sprintf("blocked.test:%d", port), fmt.Sprintf("denied-by-policy.test:%d", port)}
		c.Egress.Approvals = []routerconfig.EgressApproval{{Name: "ea-1", UID: "uid-1", Hosts: []string{"approved.test"}, Ports: []int32{int32(port)}, ExpiresAt: time.Now().Add(time.Hour)}}
		c.Governance = &governance.Policy{Name: "p", Rules: []governance.Rule{
			{Name: "models", Effect: governance.EffectAllow, Actions: []string{"inference:*"}},
			{Name: "no-such-host", Effect: governance.EffectDeny, Actions: []string{"egress:denied-by-policy.test:*"}},
		}}
	})
	code, _, c := e.connect(t, "allowed.test")
	if code != 200 || !strings.Contains(httpsThrough(t, c, "allowed.test"), "upstream ok") {
		t.Fatalf("allowed: %d", code)
	}
	if code, _, _ := e.connect(t, "approved.test"); code != 200 {
		t.Errorf("approved: %d", code)
	}
	for host, want := range map[string]string{
		"blocked.test":          "refused by blocklist rule \"blocklist\": the destination is on the blocklist (blocked.test)",
		"unlisted.test":         "refused by default rule \"default-deny\"",
		"denied-by-policy.test": "refused by governance rule \"no-such-host\"",
	} {
		code, body, _ := e.connect(t, host)
		if code != 403 || !strings.Contains(body, want) {
			t.Errorf("%s: %d %q, want 403 with %q", host, code, body, want)
		}
	}
	got := map[string]string{}
	for _, en := range e.auditRecords() {
		if en.Attrs["op"] == "egress" {
			got[en.Action] = en.Decision + " " + en.Attrs["step"] + " " + en.Rule
		}
	}
	p := e.port
	want := map[string]string{
		fmt.Sprintf("egress:allowed.test:%d", p):          fmt.Sprintf("allow allowlist allowedHosts allowed.test:%d", p),
		fmt.Sprintf("egress:approved.test:%d", p):         fmt.Sprintf("allow approval approval ea-1 approved.test:%d", p),
		fmt.Sprintf("egress:blocked.test:%d", p):          "deny blocklist blocklist",
		fmt.Sprintf("egress:unlisted.test:%d", p):         "deny default default-deny",
		fmt.Sprintf("egress:denied-by-policy.test:%d", p): "deny governance no-such-host",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("audit %s = %q, want %q", k, got[k], v)
		}
	}

	// The admin API echoes the approval the router enforces and lists
	// what was learned.
	admin := httptest.NewServer(e.router.AdminHandler(e.cfg.Admin.TokenFile, AdminBackends{Egress: e.eg.AdminHandler()}))
	defer admin.Close()
	var st EgressStatus
	adminGet(t, admin.URL+"/admin/v1/egress", &st)
	if len(st.Approvals) != 1 || st.Approvals[0].UID != "uid-1" || !st.Approvals[0].Active || st.Blocklist == nil || st.Blocklist.Domains != 1 {
		t.Errorf("status %+v", st)
	}
	var learned struct {
		Entries []struct {
			Host    string `json:"host"`
			Allowed int    `json:"allowed"`
			Denied  int    `json:"denied"`
		} `json:"entries"`
	}
	adminGet(t, admin.URL+"/admin/v1/egress/learned", &learned)
	if len(learned.Entries) != 5 {
		t.Errorf("learned %+v", learned.Entries)
	}
	resp, err := http.Get(admin.URL + "/admin/v1/egress")
	if err != nil || resp.StatusCode != 401 {
		t.Errorf("the egress admin API without the token: %v %v", resp.StatusCode, err)
	}
}

func adminGet(t *testing.T, url string, v any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer admin-secret-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s: %d %s", url, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// TestApprovalExpiryCutsAccess: an open tunnel that an approval allowed is
// closed within 5 s of the approval's expiresAt by the router's own clock,
// and new connections are refused from then on.
func TestApprovalExpiryCutsAccess(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for an approval to expire")
	}
	expires := time.Now().Add(2 * time.Second).Truncate(time.Second).Add(time.Second)
	e := newEgressHarness(t, func(c *routerconfig.Config, port uint16) {
		c.Egress.Approvals = []routerconfig.EgressApproval{{Name: "short", Hosts: []string{"approved.test"}, Ports: []int32{int32(port)}, ExpiresAt: expires}}
	})
	code, _, c := e.connect(t, "approved.test")
	if code != 200 {
		t.Fatalf("before expiry: %d", code)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // a test upstream
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	tc.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := tc.Read(make([]byte, 1)) // blocks until the tunnel is cut
	cut := time.Now()
	if err == nil {
		t.Fatal("read data instead of a closed tunnel")
	}
	lag := cut.Sub(expires)
	t.Logf("tunnel cut %s after expiresAt", lag.Round(time.Millisecond))
	if lag < 0 || lag > 5*time.Second {
		t.Errorf("tunnel cut %s after expiresAt; want within 0..5s", lag)
	}
	if code, body, _ := e.connect(t, "approved.test"); code != 403 || !strings.Contains(body, "default-deny") {
		t.Errorf("after expiry: %d %q", code, body)
	}
}

func TestLearnModeRecordsAndReloadRechecks(t *testing.T) {
	e := newEgressHarness(t, func(c *routerconfig.Config, port uint16) { c.Egress.Mode = routerconfig.EgressLearn })
	code, _, c := e.connect(t, "unlisted.test")
	if code != 200 {
		t.Fatalf("learn: %d", code)
	}
	if code, _, _ := e.connect(t, "blocked.test"); code != 403 {
		t.Errorf("the blocklist applies in Learn mode too: %d", code)
	}
	es, _ := e.eg.learned.List()
	found := false
	for _, en := range es {
		if en.Host == "unlisted.test" && en.Port == e.port && en.Allowed == 1 && en.Step == "learn" {
			found = true
		}
	}
	if !found {
		t.Errorf("learned %+v", es)
	}
	// Switching to Strict closes the tunnel Learn allowed.
	strict := *e.cfg
	eg := *strict.Egress
	eg.Mode = routerconfig.EgressStrict
	strict.Egress = &eg
	if err := e.router.Apply(routerconfigtest.Snapshot(t, &strict)); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := e.connect(t, "unlisted.test"); code != 403 {
		t.Errorf("after switching to Strict: %d", code)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("the Learn tunnel survived the switch to Strict: %v", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestEgressStateFile(t *testing.T) {
	e := newEgressHarness(t, nil)
	path := filepath.Join(e.dir, routerconfig.EgressStateFile)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); wg.Wait() }()
	e.eg.WatchState(ctx, path, "", &wg)
	if code, _, _ := e.connect(t, "approved.test"); code != 403 {
		t.Fatalf("before the state file: %d", code)
	}
	st := routerconfig.EgressState{Approvals: []routerconfig.EgressApproval{{Name: "ea", UID: "u", Hosts: []string{"approved.test"},
		Ports: []int32{int32(e.port)}, ExpiresAt: time.Now().Add(time.Hour)}}}
	raw, _ := json.Marshal(st)
	os.WriteFile(path, raw, 0o600)
	waitFor(t, func() bool { code, _, _ := e.connect(t, "approved.test"); return code == 200 })
	// An invalid file is rejected and the last good state stays.
	os.WriteFile(path, []byte(`{"approvals":[{"name":"x","hosts":["*.com"]}]}`), 0o600)
	time.Sleep(1500 * time.Millisecond)
	if code, _, _ := e.connect(t, "approved.test"); code != 200 {
		t.Errorf("an invalid state file replaced the good one: %d", code)
	}
	os.Remove(path)
	waitFor(t, func() bool { code, _, _ := e.connect(t, "approved.test"); return code == 403 })
}
