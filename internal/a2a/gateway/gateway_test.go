package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2aclient"
	"github.com/a2aproject/a2a-go/v2/a2acompat/a2av0"

	"github.com/kars-io/kars/internal/a2a/a2atest"
	"github.com/kars-io/kars/internal/a2a/card"
	"github.com/kars-io/kars/internal/a2a/routes"
	"github.com/kars-io/kars/internal/a2a/rpc"
	"github.com/kars-io/kars/internal/router"
)

func sdkClient(t testing.TB, url, version string, hc *http.Client) *a2aclient.Client {
	t.Helper()
	ifc := []*a2a.AgentInterface{{URL: url, ProtocolBinding: a2a.TransportProtocolJSONRPC, ProtocolVersion: a2a.ProtocolVersion(version)}}
	var opt a2aclient.FactoryOption = a2aclient.WithJSONRPCTransport(hc)
	if version == "0.3" {
		opt = a2av0.WithJSONRPCTransport(a2av0.JSONRPCTransportConfig{Client: hc})
	}
	c, err := a2aclient.NewFromEndpoints(context.Background(), ifc, opt)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sendReq(skill, text string) *a2a.SendMessageRequest {
	m := a2a.NewMessage(a2a.MessageRoleUser, a2a.NewTextPart(text))
	m.Metadata = map[string]any{"skill": skill}
	return &a2a.SendMessageRequest{Message: m}
}

// TestThroughTheGateway: the official Go SDK as a foreign caller, through
// the gateway to the router and the agent, in both protocol versions; the
// card fetched through the gateway verifies; both hops audit the call.
func TestThroughTheGateway(t *testing.T) {
	s := newStack(t, 500, routes.RateLimit{RPM: 600, Burst: 100})
	hc := s.callerClient(s.caller, s.card)
	ctx := context.Background()
	for _, v := range []string{"1.0", "0.3"} {
		c := sdkClient(t, s.URL(), v, hc)
		res, err := c.SendMessage(ctx, sendReq("search.web", "hi "+v))
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		if m, ok := res.(*a2a.Message); !ok || m.Parts[0].Text() != "echo: hi "+v {
			t.Fatalf("%s: %+v", v, res)
		}
		bg := sendReq("search.web", "later "+v)
		bg.Config = &a2a.SendMessageConfig{ReturnImmediately: true}
		res, err = c.SendMessage(ctx, bg)
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		task := res.(*a2a.Task)
		got, err := c.GetTask(ctx, &a2a.GetTaskRequest{ID: task.ID})
		if err != nil || got.ID != task.ID {
			t.Fatalf("%s get: %v", v, err)
		}
		var last a2a.TaskState
		for ev, err := range c.SendStreamingMessage(ctx, sendReq("summarize.text", "stream")) {
			if err != nil {
				t.Fatalf("%s stream: %v", v, err)
			}
			if e, ok := ev.(*a2a.TaskStatusUpdateEvent); ok {
				last = e.Status.State
			}
		}
		if last != a2a.TaskStateCompleted {
			t.Fatalf("%s stream ended in %s", v, last)
		}
	}
	for _, p := range []string{"/.well-known/agent-card.json", "/.well-known/agent.json"} {
		resp, err := hc.Get(s.URL() + p)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		v, err := card.VerifyCard(b, card.FromJWK)
		if err != nil || v.Name != "research-bot" {
			t.Fatalf("%s: %v %s", p, err, b)
		}
	}
	entries, err := router.AuditTail(s.gwAudit, 100)
	if err != nil {
		t.Fatal(err)
	}
	var forwarded int
	for _, e := range entries {
		if e.Attrs["op"] == "a2a-gateway" && e.Decision == "allow" {
			forwarded++
			if e.Attrs["router_latency_us"] == "" || e.Attrs["caller_thumbprint"] != s.caller.Thumbprint(t) ||
				e.Attrs["caller_subject"] != "partner-planner" || e.PayloadSHA256 == "" || e.Sandbox != sandbox {
				t.Fatalf("gateway entry %+v", e)
			}
		}
	}
	if forwarded != 8 {
		t.Fatalf("%d forwarded calls audited by the gateway, want 8", forwarded)
	}
	if score := s.trust.Score(s.caller.Thumbprint(t)); score <= 500 {
		t.Fatalf("successful calls left trust at %d", score)
	}
	// Refusals reach an SDK caller as it expects them: authentication and
	// authorisation as HTTP 401/403 (A2A's transport-level errors), the
	// rest as JSON-RPC errors it decodes.
	stranger := a2atest.NewIdentity(t, "stranger")
	_, err = sdkClient(t, s.URL(), "1.0", s.callerClient(stranger, a2atest.CallerCard(t, stranger, "stranger"))).
		SendMessage(ctx, sendReq("search.web", "hi"))
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("a caller not allowed, as the SDK reads it: %v", err)
	}
	_, err = sdkClient(t, s.URL(), "1.0", hc).SendMessage(ctx, sendReq("not.advertised", "hi"))
	if err == nil || !strings.Contains(err.Error(), "not advertised") {
		t.Errorf("a skill not advertised, as the SDK reads it: %v", err)
	}
}

func rawSend(skill string, textLen int) []byte {
	return []byte(`{"jsonrpc":"2.0","id":"r1","method":"SendMessage","params":{"message":{"messageId":"m","role":"ROLE_USER","parts":[{"text":"` +
		strings.Repeat("x", textLen) + `"}],"metadata":{"skill":"` + skill + `"}}}}`)
}

func post(hc *http.Client, url string, body []byte) (int, string, error) {
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(rpc.HeaderVersion, "1.0")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// TestGatewayRefusals: each refusal the gateway (or, behind it, the
// router) makes reaches nothing: the agent sees no turn.
func TestGatewayRefusals(t *testing.T) {
	s := newStack(t, 380, routes.RateLimit{RPM: 600, Burst: 100})
	stranger := a2atest.NewIdentity(t, "stranger")
	ecCaller := a2atest.NewECIdentity(t, "ec-partner")
	unsigned := func() []byte {
		var m map[string]any
		json.Unmarshal(s.card, &m)
		delete(m, "signatures")
		b, _ := json.Marshal(m)
		return b
	}()
	if status, out, err := post(s.callerClient(s.caller, s.card), s.URL(), rawSend("search.web", 3)); err != nil || status != 200 || !strings.Contains(out, "echo: xxx") {
		t.Fatalf("control: %d %s %v", status, out, err)
	}
	s.route.Callers = append(s.route.Callers, routes.Caller{Thumbprint: ecCaller.Thumbprint(t)})
	s.gw.SetTable(&routes.Table{Routes: []routes.Route{s.route}})
	if status, out, _ := post(s.callerClient(ecCaller, a2atest.CallerCard(t, ecCaller, "ec")), s.URL(), rawSend("search.web", 3)); status != 403 || !strings.Contains(out, "kars_caller_not_allowed") {
		// The gateway lets a P-256 caller through; the router, whose
		// allowedCallers do not list it, refuses.
		t.Fatalf("P-256 caller: %d %s", status, out)
	}
	for _, tc := range []struct {
		name   string
		hc     *http.Client
		url    string
		body   []byte
		status int
		reason string
	}{
		{"skill not advertised", s.callerClient(s.caller, s.card), "", rawSend("delete.all", 1), 200, "kars_skill_not_advertised"},
		{"body over the cap", s.callerClient(s.caller, s.card), "", rawSend("search.web", 2<<20), 413, "kars_body_too_large"},
		{"no such sandbox", s.callerClient(s.caller, s.card), s.gwSrv.URL + "/a2a/kars-x/x", rawSend("search.web", 1), 404, "kars_no_route"},
		{"no client certificate", s.callerClient(nil, s.card), "", rawSend("search.web", 1), 0, ""},
		{"no caller card", s.callerClient(s.caller, nil), "", rawSend("search.web", 1), 401, "kars_caller_card_missing"},
		{"thumbprint not allowed", s.callerClient(stranger, a2atest.CallerCard(t, stranger, "stranger")), "", rawSend("search.web", 1), 403, "kars_caller_not_allowed"},
		{"unsigned caller card", s.callerClient(s.caller, unsigned), "", rawSend("search.web", 1), 401, "kars_caller_card_invalid"},
		{"card signed by a key other than the certificate's", s.callerClient(s.caller, a2atest.CallerCard(t, stranger, "partner-planner")), "", rawSend("search.web", 1), 401, "kars_caller_card_key_mismatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			turns := s.agent.Turns()
			url := tc.url
			if url == "" {
				url = s.URL()
			}
			status, out, err := post(tc.hc, url, tc.body)
			if s.agent.Turns() != turns {
				t.Fatalf("reached the agent: %d %s", status, out)
			}
			if tc.reason == "" {
				if err == nil {
					t.Fatalf("accepted without a client certificate: %d %s", status, out)
				}
				return
			}
			if err != nil || status != tc.status || !strings.Contains(out, tc.reason) {
				t.Fatalf("got %d %s %v, want %d %s", status, out, err, tc.status, tc.reason)
			}
		})
	}
	// The unadvertised skill and the bad cards were violations (-50 each):
	// the caller's trust fell below the sandbox's floor of 380.
	turns := s.agent.Turns()
	status, out, _ := post(s.callerClient(s.caller, s.card), s.URL(), rawSend("search.web", 1))
	if status != 403 || !strings.Contains(out, "kars_trust_too_low") || s.agent.Turns() != turns {
		t.Fatalf("trust: %d %s (score %d)", status, out, s.trust.Score(s.caller.Thumbprint(t)))
	}
}

func TestGatewayRateAndExpiry(t *testing.T) {
	s := newStack(t, 0, routes.RateLimit{RPM: 60, Burst: 2})
	hc := s.callerClient(s.caller, s.card)
	var codes []int
	for range 4 {
		status, _, err := post(hc, s.URL(), rawSend("search.web", 1))
		if err != nil {
			t.Fatal(err)
		}
		codes = append(codes, status)
	}
	if codes[0] != 200 || codes[1] != 200 || codes[3] != 429 || s.agent.Turns() != 2 {
		t.Fatalf("statuses %v, turns %d", codes, s.agent.Turns())
	}
	// A route past its expiry is gone, whatever the table still says.
	s.route.ExpiresAt = time.Now().Add(-time.Second)
	s.gw.SetTable(&routes.Table{Routes: []routes.Route{s.route}})
	if status, out, _ := post(hc, s.URL(), rawSend("search.web", 1)); status != 404 || !strings.Contains(out, "kars_no_route") {
		t.Fatalf("expired route: %d %s", status, out)
	}
}

// TestRevocationEndsCallsInFlight: removing the route ends a stream in
// progress at once, and the next call finds no route.
func TestRevocationEndsCallsInFlight(t *testing.T) {
	s := newStack(t, 0, routes.RateLimit{RPM: 600, Burst: 100})
	s.agent.Delay.Store(int64(30 * time.Second))
	c := sdkClient(t, s.URL(), "1.0", s.callerClient(s.caller, s.card))
	done := make(chan time.Time, 1)
	go func() {
		for _, err := range c.SendStreamingMessage(context.Background(), sendReq("search.web", "long")) {
			if err != nil {
				break
			}
		}
		done <- time.Now()
	}()
	deadline := time.Now().Add(5 * time.Second)
	for s.agent.Turns() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	revoked := time.Now()
	s.gw.SetTable(&routes.Table{})
	select {
	case end := <-done:
		if d := end.Sub(revoked); d > 2*time.Second {
			t.Fatalf("the stream outlived its route by %s", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stream kept running after revocation")
	}
	status, out, _ := post(s.callerClient(s.caller, s.card), s.URL(), rawSend("search.web", 1))
	if status != 404 || !strings.Contains(out, "kars_no_route") {
		t.Fatalf("after revocation: %d %s", status, out)
	}
	// The router's own revocation ends the agent's turn too.
	cfg := *s.cfg.Load()
	cfg.ExpiresAt = time.Now()
	s.cfg.Store(&cfg)
}

// TestRouterCertificatePinned: a router presenting any other certificate
// than the route's is not called.
func TestRouterCertificatePinned(t *testing.T) {
	s := newStack(t, 0, routes.RateLimit{RPM: 600, Burst: 100})
	other := a2atest.NewIdentity(t, "impostor", "research-bot-router.kars-research-bot.svc")
	s.route.RouterCertPEM = string(other.CertPEM)
	s.gw.SetTable(&routes.Table{Routes: []routes.Route{s.route}})
	status, out, _ := post(s.callerClient(s.caller, s.card), s.URL(), rawSend("search.web", 1))
	if status != 502 || s.agent.Turns() != 0 {
		t.Fatalf("unpinned router: %d %s", status, out)
	}
}

func TestImportsNoCredential(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/kars-io/kars/") && strings.Contains(dep, "credential") ||
			dep == "github.com/kars-io/kars/internal/router" || strings.HasPrefix(dep, "github.com/Azure/") ||
			strings.HasPrefix(dep, "golang.org/x/oauth2") || strings.HasPrefix(dep, "github.com/kars-io/kars/internal/inference") {
			t.Errorf("the gateway depends on %s", dep)
		}
	}
}

var _ = tls.VersionTLS13
