package ingress

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2aclient"
	"github.com/a2aproject/a2a-go/v2/a2acompat/a2av0"

	"github.com/kars-io/kars/internal/a2a/a2atest"
	"github.com/kars-io/kars/internal/a2a/card"
	"github.com/kars-io/kars/internal/a2a/rpc"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig"
)

type fixture struct {
	t                       *testing.T
	cfg                     atomic.Pointer[routerconfig.A2A]
	ing                     *Ingress
	srv                     *httptest.Server
	agent                   *a2atest.Agent
	router, gateway, caller *a2atest.Identity
	callerCard              []byte
	cardKey                 ed25519.PrivateKey
	skew                    atomic.Int64
	mu                      sync.Mutex
	records                 []audit.Record
	// beforeDecide and beforeAudit, when set, run as the ingress asks
	// governance and as it appends an entry (the entry is kept when
	// beforeAudit returns nil, and the append fails with its error).
	beforeDecide atomic.Pointer[func()]
	beforeAudit  atomic.Pointer[func() error]
}

func newFixture(t *testing.T, mod func(*routerconfig.A2A)) *fixture {
	t.Helper()
	f := &fixture{t: t, agent: a2atest.NewAgent(t),
		router:  a2atest.NewIdentity(t, "router", "router.test"),
		gateway: a2atest.NewIdentity(t, "kars-a2a-gateway"),
		caller:  a2atest.NewIdentity(t, "partner")}
	f.callerCard = a2atest.CallerCard(t, f.caller, "partner-planner")
	_, f.cardKey, _ = ed25519.GenerateKey(rand.Reader)
	certFile, keyFile := f.router.WriteFiles(t, t.TempDir(), "router")
	cfg := &routerconfig.A2A{
		TLSCertFile: certFile, TLSKeyFile: keyFile,
		GatewayPins: []string{SPKIPin(f.gateway.Cert)},
		PublicURL:   "https://gw.example/a2a/ns/research-bot", AgentURL: f.agent.URL,
		ExpiresAt:         time.Now().Add(time.Hour),
		Callers:           []routerconfig.A2ACaller{{Thumbprint: f.caller.Thumbprint(t), DisplayName: "partner-planner"}},
		Skills:            []routerconfig.A2ASkill{{Name: "search.web", Description: "Web search"}, {Name: "summarize.text"}, {Name: "forbidden"}},
		MinimumTrustScore: 500, RateLimit: routerconfig.A2ARateLimit{RPM: 600, Burst: 50},
		BodyCapBytes: 4096, SessionMaxSeconds: 60, AllowStreaming: true,
	}
	if mod != nil {
		mod(cfg)
	}
	f.cfg.Store(cfg)
	eng := governance.NewEngine()
	if err := eng.Load(&governance.Policy{Rules: []governance.Rule{
		{Name: "a2a-skills", Effect: governance.EffectAllow, Actions: []string{"a2a:receive:*"}},
		{Name: "no-forbidden", Effect: governance.EffectDeny, Actions: []string{"a2a:receive:forbidden"}, Priority: 10},
	}}); err != nil {
		t.Fatal(err)
	}
	f.ing = New(Options{
		Sandbox: "ns/research-bot", Agent: "ns/research-bot", Version: "1.0.0",
		Config: func() *routerconfig.A2A { return f.cfg.Load() },
		Decide: func(_ context.Context, action string, args map[string]any) governance.Decision {
			if hook := f.beforeDecide.Load(); hook != nil {
				(*hook)()
			}
			return eng.Decide(&governance.Request{Agent: "ns/research-bot", Action: action, Args: args})
		},
		Audit: func(_ context.Context, rec audit.Record) error {
			if hook := f.beforeAudit.Load(); hook != nil {
				if err := (*hook)(); err != nil {
					return err
				}
			}
			f.mu.Lock()
			f.records = append(f.records, rec)
			f.mu.Unlock()
			return nil
		},
		CardKey: f.cardKey,
		Now:     func() time.Time { return time.Now().Add(time.Duration(f.skew.Load())) },
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	f.srv = httptest.NewUnstartedServer(f.ing)
	f.srv.TLS = f.ing.TLSConfig()
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

// client is what the gateway does: its pinned client certificate, the
// router's certificate as the only root, and the caller's identity in
// headers.
func (f *fixture) client(gw *a2atest.Identity, caller *a2atest.Identity, cardRaw []byte, trust int) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.router.Pool(), ServerName: "router.test"}}
	if gw != nil {
		tr.TLSClientConfig.Certificates = []tls.Certificate{gw.TLS}
	}
	return &http.Client{Transport: a2atest.Headers(tr, map[string]string{
		rpc.HeaderCallerThumbprint: caller.Thumbprint(f.t),
		rpc.HeaderCallerCard:       a2atest.CardHeader(cardRaw),
		rpc.HeaderCallerTrust:      strconv.Itoa(trust),
		rpc.HeaderGatewayLatency:   "123",
	})}
}

func (f *fixture) goodClient() *http.Client {
	return f.client(f.gateway, f.caller, f.callerCard, 700)
}

// sdk returns an official Go SDK client for version v over hc.
func (f *fixture) sdk(v rpc.Version, hc *http.Client) *a2aclient.Client {
	f.t.Helper()
	ctx := context.Background()
	var c *a2aclient.Client
	var err error
	if v == rpc.V10 {
		c, err = a2aclient.NewFromEndpoints(ctx, []*a2a.AgentInterface{{URL: f.srv.URL + "/", ProtocolBinding: a2a.TransportProtocolJSONRPC, ProtocolVersion: "1.0"}},
			a2aclient.WithJSONRPCTransport(hc))
	} else {
		c, err = a2aclient.NewFromEndpoints(ctx, []*a2a.AgentInterface{{URL: f.srv.URL + "/", ProtocolBinding: a2a.TransportProtocolJSONRPC, ProtocolVersion: "0.3"}},
			a2av0.WithJSONRPCTransport(a2av0.JSONRPCTransportConfig{Client: hc}))
	}
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

func msg(skill, text string) *a2a.SendMessageRequest {
	m := a2a.NewMessage(a2a.MessageRoleUser, a2a.NewTextPart(text))
	if skill != "" {
		m.Metadata = map[string]any{"skill": skill}
	}
	return &a2a.SendMessageRequest{Message: m}
}

func (f *fixture) lastRecord() audit.Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.records) == 0 {
		f.t.Fatal("no audit record")
	}
	return f.records[len(f.records)-1]
}

func (f *fixture) recordCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.records)
}

// post sends body to the ingress as A2A version (none when ""), and
// returns the answer's status and body, or 0 and the error.
func (f *fixture) post(hc *http.Client, version string, body []byte) (int, string) {
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if version != "" {
		req.Header.Set(rpc.HeaderVersion, version)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(rb)
}

func taskOf(t *testing.T, r a2a.SendMessageResult) *a2a.Task {
	t.Helper()
	task, ok := r.(*a2a.Task)
	if !ok {
		t.Fatalf("result %T, want a task", r)
	}
	return task
}

// awaitTask polls GetTask until the task is terminal.
func awaitTask(t *testing.T, c *a2aclient.Client, id a2a.TaskID) *a2a.Task {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		task, err := c.GetTask(context.Background(), &a2a.GetTaskRequest{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		if task.Status.State.Terminal() || time.Now().After(deadline) {
			return task
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func messageText(t *testing.T, r a2a.SendMessageResult) (string, string) {
	t.Helper()
	m, ok := r.(*a2a.Message)
	if !ok {
		t.Fatalf("result %T, want a message", r)
	}
	var out []string
	for _, p := range m.Parts {
		out = append(out, p.Text())
	}
	return strings.Join(out, ""), m.ContextID
}

func background(r *a2a.SendMessageRequest) *a2a.SendMessageRequest {
	r.Config = &a2a.SendMessageConfig{ReturnImmediately: true}
	return r
}

func artifactText(t *a2a.Task) string {
	var out []string
	for _, a := range t.Artifacts {
		for _, p := range a.Parts {
			out = append(out, p.Text())
		}
	}
	return strings.Join(out, "")
}

// TestGoSDKBothVersions drives the ingress with the official Go SDK's
// JSON-RPC clients for A2A 1.0 and 0.3: send, get, list (1.0), cancel and
// stream, with the agent's reply coming back as the task's artifact.
func TestGoSDKBothVersions(t *testing.T) {
	for _, v := range []rpc.Version{rpc.V10, rpc.V03} {
		t.Run(v.String(), func(t *testing.T) {
			f := newFixture(t, nil)
			c := f.sdk(v, f.goodClient())
			ctx := context.Background()

			// A blocking send is answered with the agent's reply.
			res, err := c.SendMessage(ctx, msg("search.web", "find kars"))
			if err != nil {
				t.Fatal(err)
			}
			reply, contextID := messageText(t, res)
			if reply != "echo: find kars" {
				t.Fatalf("reply %q", reply)
			}
			session, text := f.agent.Last()
			if text != "find kars" || session != SessionID(f.caller.Thumbprint(t), contextID) {
				t.Fatalf("agent got %q in session %q", text, session)
			}
			rec := f.lastRecord()
			wantMethod := map[rpc.Version]string{rpc.V10: "SendMessage", rpc.V03: "message/send"}[v]
			if rec.Action != "a2a:receive:search.web" || rec.Decision != "allow" || rec.Rule != "a2a-skills" ||
				rec.Attrs["rpc_method"] != wantMethod || rec.Attrs["a2a_version"] != v.String() ||
				rec.Attrs["caller_subject"] != "partner-planner" || rec.Attrs["caller_thumbprint"] != f.caller.Thumbprint(t) ||
				rec.Attrs["caller_trust"] != "700" || rec.Attrs["gateway_latency_us"] != "123" || len(rec.PayloadSHA256) != 64 ||
				rec.Attrs["router_latency_us"] == "" || rec.Sandbox != "ns/research-bot" {
				t.Fatalf("audit record %+v", rec)
			}

			// A background send starts a task, fetched until done.
			res, err = c.SendMessage(ctx, background(msg("search.web", "in the background")))
			if err != nil {
				t.Fatal(err)
			}
			task := awaitTask(t, c, taskOf(t, res).ID)
			if task.Status.State != a2a.TaskStateCompleted || artifactText(task) != "echo: in the background" {
				t.Fatalf("task %+v", task)
			}
			if rec := f.lastRecord(); rec.Action != "a2a:receive:search.web" || rec.Attrs["rpc_method"] != map[rpc.Version]string{rpc.V10: "GetTask", rpc.V03: "tasks/get"}[v] {
				t.Fatalf("get audited as %+v", rec)
			}
			if v == rpc.V10 {
				list, err := c.ListTasks(ctx, &a2a.ListTasksRequest{})
				if err != nil || len(list.Tasks) != 1 || list.Tasks[0].ID != task.ID {
					t.Fatalf("list: %+v %v", list, err)
				}
			}

			// Cancel a task still in progress.
			f.agent.Delay.Store(int64(5 * time.Second))
			req := msg("summarize.text", "slow")
			req.Config = &a2a.SendMessageConfig{ReturnImmediately: true}
			res, err = c.SendMessage(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			slow := taskOf(t, res)
			if slow.Status.State.Terminal() {
				t.Fatalf("slow task already %s", slow.Status.State)
			}
			canceled, err := c.CancelTask(ctx, &a2a.CancelTaskRequest{ID: slow.ID})
			if err != nil || canceled.Status.State != a2a.TaskStateCanceled {
				t.Fatalf("cancel: %+v %v", canceled, err)
			}
			f.agent.Delay.Store(0)

			// Stream.
			var states []a2a.TaskState
			var streamed string
			for ev, err := range c.SendStreamingMessage(ctx, msg("search.web", "stream me")) {
				if err != nil {
					t.Fatal(err)
				}
				switch e := ev.(type) {
				case *a2a.Task:
					states = append(states, e.Status.State)
				case *a2a.TaskStatusUpdateEvent:
					states = append(states, e.Status.State)
				case *a2a.TaskArtifactUpdateEvent:
					for _, p := range e.Artifact.Parts {
						streamed += p.Text()
					}
				}
			}
			if streamed != "echo: stream me" || !slices.Contains(states, a2a.TaskStateWorking) || states[len(states)-1] != a2a.TaskStateCompleted {
				t.Fatalf("stream: states %v, text %q", states, streamed)
			}
			if rec := f.lastRecord(); rec.Attrs["stream"] != "true" || rec.Decision != "allow" {
				t.Fatalf("stream audited as %+v", rec)
			}
		})
	}
}

// TestRefusalsReachNothing: every refusal is answered by the ingress,
// audited with its reason, and nothing reaches the agent.
func TestRefusalsReachNothing(t *testing.T) {
	f := newFixture(t, nil)
	stranger := a2atest.NewIdentity(t, "stranger")
	strangerCard := a2atest.CallerCard(t, stranger, "stranger")
	impostorGW := a2atest.NewIdentity(t, "not-the-gateway")
	body := func(skill string, size int) []byte {
		md := ""
		if skill != "" {
			md = `,"metadata":{"skill":"` + skill + `"}`
		}
		return []byte(`{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"messageId":"m1","role":"ROLE_USER","parts":[{"text":"` +
			strings.Repeat("x", size) + `"}]` + md + `}}}`)
	}
	// body03 is the same call in A2A 0.3's shapes.
	body03 := func(method, skill string) []byte {
		return []byte(`{"jsonrpc":"2.0","id":1,"method":"` + method + `","params":{"message":{"kind":"message","messageId":"m1","role":"user",` +
			`"parts":[{"kind":"text","text":"x"}],"metadata":{"skill":"` + skill + `"}}}}`)
	}
	post := f.post
	// The control: the same request with a good identity reaches the agent.
	if status, out := post(f.goodClient(), "1.0", body("search.web", 10)); status != 200 || !strings.Contains(out, "echo: ") || f.agent.Turns() != 1 {
		t.Fatalf("control: %d %s (turns %d)", status, out, f.agent.Turns())
	}
	tampered := bytes.Replace(f.callerCard, []byte("partner-planner"), []byte("partner-planneR"), 1)
	unsigned := func() []byte {
		var m map[string]any
		json.Unmarshal(f.callerCard, &m)
		delete(m, "signatures")
		b, _ := json.Marshal(m)
		return b
	}()
	for _, tc := range []struct {
		name    string
		hc      *http.Client
		version string
		body    []byte
		before  func()
		after   func()
		status  int
		reason  string // "" for a TLS failure
		// decision is the audited decision: "deny" for policy (skill,
		// governance, session), "refused" (the default) for the ingress's
		// own limits and protocol checks.
		decision string
		// action is the audited action, when the test names one.
		action string
	}{
		{name: "no client certificate", hc: f.client(nil, f.caller, f.callerCard, 700), body: body("search.web", 1)},
		{name: "not the gateway's certificate", hc: f.client(impostorGW, f.caller, f.callerCard, 700), body: body("search.web", 1)},
		{name: "unsigned caller card", hc: f.client(f.gateway, f.caller, unsigned, 700), version: "1.0", body: body("search.web", 1), status: 401, reason: "kars_caller_card_invalid"},
		{name: "tampered caller card", hc: f.client(f.gateway, f.caller, tampered, 700), version: "1.0", body: body("search.web", 1), status: 401, reason: "kars_caller_card_invalid"},
		{name: "card signed by another key", hc: f.client(f.gateway, f.caller, strangerCard, 700), version: "1.0", body: body("search.web", 1), status: 401, reason: "kars_caller_card_key_mismatch"},
		{name: "thumbprint not allowed", hc: f.client(f.gateway, stranger, strangerCard, 700), version: "1.0", body: body("search.web", 1), status: 403, reason: "kars_caller_not_allowed"},
		{name: "trust too low", hc: f.client(f.gateway, f.caller, f.callerCard, 499), version: "1.0", body: body("search.web", 1), status: 403, reason: "kars_trust_too_low"},
		{name: "skill not advertised", hc: f.goodClient(), version: "1.0", body: body("delete.everything", 1), status: 200, reason: "kars_skill_not_advertised",
			decision: "deny", action: "a2a:receive:delete.everything"},
		{name: "no skill named", hc: f.goodClient(), version: "1.0", body: body("", 1), status: 200, reason: "kars_skill_missing", decision: "deny"},
		{name: "governance denies", hc: f.goodClient(), version: "1.0", body: body("forbidden", 1), status: 200, reason: "kars_policy_deny",
			decision: "deny", action: "a2a:receive:forbidden"},
		{name: "governance denies, 0.3", hc: f.goodClient(), version: "0.3", body: body03("message/send", "forbidden"), status: 200, reason: "kars_policy_deny",
			decision: "deny", action: "a2a:receive:forbidden"},
		// A stream's audit entry is written when the first byte of its
		// answer leaves, after governance has decided, not when a binding
		// sets the stream's headers: the entry carries the denial, not the
		// "allow" the call had before governance saw it.
		{name: "governance denies a 1.0 stream", hc: f.goodClient(), version: "1.0",
			body:   bytes.Replace(body("forbidden", 1), []byte(`"SendMessage"`), []byte(`"SendStreamingMessage"`), 1),
			status: 200, reason: "kars_policy_deny", decision: "deny", action: "a2a:receive:forbidden"},
		{name: "governance denies a 0.3 stream", hc: f.goodClient(), version: "0.3", body: body03("message/stream", "forbidden"), status: 200, reason: "kars_policy_deny",
			decision: "deny", action: "a2a:receive:forbidden"},
		{name: "body over the cap", hc: f.goodClient(), version: "1.0", body: body("search.web", 5000), status: 413, reason: "kars_body_too_large"},
		{name: "unknown version", hc: f.goodClient(), version: "2.0", body: body("search.web", 1), status: 400, reason: "kars_version_not_supported"},
		{name: "1.0 method under 0.3", hc: f.goodClient(), version: "0.3", body: body("search.web", 1), status: 200, reason: "kars_method_not_served"},
		{name: "duplicate method member", hc: f.goodClient(), version: "1.0",
			body: []byte(`{"jsonrpc":"2.0","id":1,"method":"GetTask","method":"SendMessage","params":{}}`), status: 400, reason: "kars_bad_request"},
		{name: "streaming not allowed", hc: f.goodClient(), version: "1.0", body: bytes.Replace(body("search.web", 1), []byte(`"SendMessage"`), []byte(`"SendStreamingMessage"`), 1),
			before: func() { c := *f.cfg.Load(); c.AllowStreaming = false; f.cfg.Store(&c) },
			after:  func() { c := *f.cfg.Load(); c.AllowStreaming = true; f.cfg.Store(&c) }, status: 200, reason: "kars_streaming_not_allowed"},
		{name: "window expired", hc: f.goodClient(), version: "1.0", body: body("search.web", 1),
			before: func() { f.skew.Store(int64(2 * time.Hour)) }, after: func() { f.skew.Store(0) }, status: 403, reason: "kars_not_exposed"},
		{name: "gateway pin removed by a reload", hc: f.goodClient(), version: "1.0", body: body("search.web", 1),
			before: func() {
				c := *f.cfg.Load()
				c.GatewayPins = []string{"sha256:" + strings.Repeat("0", 64)}
				f.cfg.Store(&c)
			},
			after: func() { c := *f.cfg.Load(); c.GatewayPins = []string{SPKIPin(f.gateway.Cert)}; f.cfg.Store(&c) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.before != nil {
				tc.before()
			}
			if tc.after != nil {
				defer tc.after()
			}
			turns, records := f.agent.Turns(), f.recordCount()
			status, out := post(tc.hc, tc.version, tc.body)
			if f.agent.Turns() != turns {
				t.Fatalf("the agent was reached: %d %s", status, out)
			}
			if tc.reason == "" {
				if status == 200 {
					t.Fatalf("accepted: %s", out)
				}
				return
			}
			if status != tc.status || !strings.Contains(out, tc.reason) {
				t.Fatalf("got %d %s, want %d %s", status, out, tc.status, tc.reason)
			}
			if f.recordCount() != records+1 || f.lastRecord().Attrs["refusal"] != tc.reason {
				t.Fatalf("audit: %d new records, last %+v", f.recordCount()-records, f.lastRecord())
			}
			want := cmp.Or(tc.decision, "refused")
			if rec := f.lastRecord(); rec.Decision != want || tc.action != "" && rec.Action != tc.action {
				t.Fatalf("audited as %s %s, want %s %s: %+v", rec.Decision, rec.Action, want, tc.action, rec)
			}
		})
	}
	// Rate: a burst of 3 at 60/min.
	c := *f.cfg.Load()
	c.RateLimit = routerconfig.A2ARateLimit{RPM: 60, Burst: 3}
	f.cfg.Store(&c)
	var limited bool
	for range 10 {
		status, out := post(f.goodClient(), "1.0", body("search.web", 1))
		if status == 429 && strings.Contains(out, "kars_rate_limited") {
			limited = true
			break
		}
	}
	if !limited {
		t.Fatal("the rate limit never refused")
	}
}

// TestMalformedParamsAuditedAsRefused: a call whose params a binding
// (1.0's, the SDK's; 0.3's, kars's) or the SDK's handler refuses as
// malformed is answered as the binding answers it, reaches nothing, and
// is audited as refused, never as allowed: whether the binding refused it
// before the interceptor saw it (no skill known) or the handler after
// governance allowed it (the skill's action, but no allowing rule).
func TestMalformedParamsAuditedAsRefused(t *testing.T) {
	f := newFixture(t, nil)
	req := func(method, params string) []byte {
		return []byte(`{"jsonrpc":"2.0","id":7,"method":"` + method + `","params":` + params + `}`)
	}
	const (
		notAMessage = `{"message":"hello","metadata":{"skill":"search.web"}}`
		noMessageID = `{"message":{"role":"ROLE_USER","parts":[{"text":"x"}],"metadata":{"skill":"search.web"}}}`
		noID03      = `{"message":{"kind":"message","role":"user","parts":[{"kind":"text","text":"x"}],"metadata":{"skill":"search.web"}}}`
		partsNotArr = `{"message":{"kind":"message","messageId":"m1","role":"user","parts":"x","metadata":{"skill":"search.web"}}}`
	)
	for _, tc := range []struct {
		name, version string
		body          []byte
		action        string
	}{
		{"1.0 send, message not an object", "1.0", req("SendMessage", notAMessage), "a2a:SendMessage"},
		{"1.0 stream, message not an object", "1.0", req("SendStreamingMessage", notAMessage), "a2a:SendStreamingMessage"},
		{"1.0 get, id not a string", "1.0", req("GetTask", `{"id":5}`), "a2a:GetTask"},
		{"1.0 send without a message id", "1.0", req("SendMessage", noMessageID), "a2a:receive:search.web"},
		{"1.0 stream without a message id", "1.0", req("SendStreamingMessage", noMessageID), "a2a:receive:search.web"},
		{"1.0 list, page size out of range", "1.0", req("ListTasks", `{"pageSize":1000}`), "a2a:ListTasks"},
		{"0.3 send, parts not an array", "0.3", req("message/send", partsNotArr), "a2a:SendMessage"},
		{"0.3 stream without a message id", "0.3", req("message/stream", noID03), "a2a:SendStreamingMessage"},
		{"0.3 get without an id", "0.3", req("tasks/get", `{}`), "a2a:GetTask"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			turns, records := f.agent.Turns(), f.recordCount()
			status, out := f.post(f.goodClient(), tc.version, tc.body)
			if f.agent.Turns() != turns {
				t.Fatalf("the agent was reached: %d %s", status, out)
			}
			// The client's answer is the binding's own invalid-params error.
			if status != 200 || !strings.Contains(out, `"code":-32602`) {
				t.Fatalf("answer %d %s", status, out)
			}
			if f.recordCount() != records+1 {
				t.Fatalf("%d new records", f.recordCount()-records)
			}
			rec := f.lastRecord()
			if rec.Decision != "refused" || rec.Attrs["refusal"] != "kars_bad_params" || rec.Rule != "" || rec.Reason == "" || rec.Action != tc.action {
				t.Fatalf("audited as %+v", rec)
			}
		})
	}
}

// TestEntryBeforeFirstByte: whichever binding answers and whether the
// answer is one response or a stream, the call's entry is durable before
// the answer's first byte reaches the caller (here the append takes
// 100 ms, and the first byte must come after it returned), and an entry
// that cannot be written turns the answer into a 503.
func TestEntryBeforeFirstByte(t *testing.T) {
	f := newFixture(t, nil)
	send := `{"message":{"messageId":"m1","role":"ROLE_USER","parts":[{"text":"x"}],"metadata":{"skill":"search.web"}}}`
	send03 := `{"message":{"kind":"message","messageId":"m1","role":"user","parts":[{"kind":"text","text":"x"}],"metadata":{"skill":"search.web"}}}`
	for _, tc := range []struct{ version, method, params string }{
		{"1.0", "SendMessage", send},
		{"1.0", "SendStreamingMessage", send},
		{"0.3", "message/send", send03},
		{"0.3", "message/stream", send03},
	} {
		body := []byte(`{"jsonrpc":"2.0","id":1,"method":"` + tc.method + `","params":` + tc.params + `}`)
		t.Run(tc.method, func(t *testing.T) {
			var appended atomic.Int64 // when the append returned, in ns since the epoch
			slow := func() error {
				time.Sleep(100 * time.Millisecond)
				appended.Store(time.Now().UnixNano())
				return nil
			}
			f.beforeAudit.Store(&slow)
			defer f.beforeAudit.Store(nil)
			var firstByte time.Time
			req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/", bytes.NewReader(body))
			req.Header.Set(rpc.HeaderVersion, tc.version)
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
				GotFirstResponseByte: func() { firstByte = time.Now() },
			}))
			resp, err := f.goodClient().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			out, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(out), "echo: x") || resp.Header.Get(rpc.HeaderDecision) != "allow" {
				t.Fatalf("answer %d %v %s", resp.StatusCode, resp.Header, out)
			}
			if at := appended.Load(); at == 0 || firstByte.UnixNano() < at {
				t.Fatalf("the first byte came %s before the entry was appended", time.Unix(0, at).Sub(firstByte))
			}
			if rec := f.lastRecord(); rec.Decision != "allow" || rec.Action != "a2a:receive:search.web" {
				t.Fatalf("audited as %+v", rec)
			}

			failing := func() error { return errors.New("disk full") }
			f.beforeAudit.Store(&failing)
			status, answer := f.post(f.goodClient(), tc.version, body)
			if status != http.StatusServiceUnavailable || !strings.Contains(answer, "kars_audit_unavailable") || strings.Contains(answer, "echo") {
				t.Fatalf("with the audit log failing: %d %s", status, answer)
			}
		})
	}
}

// TestCallerGoneWhileDeciding: a stream whose caller leaves while
// governance decides it is recorded with the decision, once it is made,
// not as allowed before it.
func TestCallerGoneWhileDeciding(t *testing.T) {
	f := newFixture(t, nil)
	entered, release := make(chan struct{}), make(chan struct{})
	hold := func() { entered <- struct{}{}; <-release }
	f.beforeDecide.Store(&hold)
	body := []byte(`{"jsonrpc":"2.0","id":1,"method":"SendStreamingMessage","params":{"message":{"messageId":"m1","role":"ROLE_USER",` +
		`"parts":[{"text":"x"}],"metadata":{"skill":"forbidden"}}}}`)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.srv.URL+"/", bytes.NewReader(body))
	req.Header.Set(rpc.HeaderVersion, "1.0")
	done := make(chan error, 1)
	go func() {
		resp, err := f.goodClient().Do(req)
		if err == nil {
			resp.Body.Close()
			err = errors.New("answered while governance was deciding")
		}
		done <- err
	}()
	<-entered
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	// The caller is gone; the binding's handler has returned or will.
	time.Sleep(50 * time.Millisecond)
	if n := f.recordCount(); n != 0 {
		t.Fatalf("%d entries before the decision: %+v", n, f.lastRecord())
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for f.recordCount() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if rec := f.lastRecord(); rec.Decision != "deny" || rec.Action != "a2a:receive:forbidden" || rec.Attrs["refusal"] != "kars_policy_deny" {
		t.Fatalf("audited as %+v", rec)
	}
	if f.agent.Turns() != 0 {
		t.Fatal("the agent was reached")
	}
}

// TestTaskOwnership: a task is visible only to the caller that created it.
func TestTaskOwnership(t *testing.T) {
	other := a2atest.NewIdentity(t, "other")
	f := newFixture(t, nil)
	cfg := *f.cfg.Load()
	cfg.Callers = append(cfg.Callers, routerconfig.A2ACaller{Thumbprint: other.Thumbprint(t)})
	f.cfg.Store(&cfg)
	ctx := context.Background()
	a := f.sdk(rpc.V10, f.goodClient())
	b := f.sdk(rpc.V10, f.client(f.gateway, other, a2atest.CallerCard(t, other, "other"), 700))
	res, err := a.SendMessage(ctx, background(msg("search.web", "mine")))
	if err != nil {
		t.Fatal(err)
	}
	task := awaitTask(t, a, taskOf(t, res).ID)
	if _, err := b.GetTask(ctx, &a2a.GetTaskRequest{ID: task.ID}); !errors.Is(err, a2a.ErrTaskNotFound) {
		t.Fatalf("another caller got the task: %v", err)
	}
	if _, err := b.CancelTask(ctx, &a2a.CancelTaskRequest{ID: task.ID}); err == nil {
		t.Fatal("another caller canceled the task")
	}
	if list, err := b.ListTasks(ctx, &a2a.ListTasksRequest{}); err != nil || len(list.Tasks) != 0 {
		t.Fatalf("another caller listed %+v %v", list, err)
	}
	follow := msg("search.web", "continue")
	follow.Message.TaskID = task.ID
	turns := f.agent.Turns()
	if _, err := b.SendMessage(ctx, follow); err == nil || f.agent.Turns() != turns {
		t.Fatalf("another caller continued the task: %v", err)
	}
}

// TestSessionMax: a context runs no longer than sessionMaxSeconds.
func TestSessionMax(t *testing.T) {
	f := newFixture(t, func(c *routerconfig.A2A) { c.SessionMaxSeconds = 1 })
	c := f.sdk(rpc.V10, f.goodClient())
	ctx := context.Background()
	res, err := c.SendMessage(ctx, msg("search.web", "one"))
	if err != nil {
		t.Fatal(err)
	}
	_, contextID := messageText(t, res)
	// A turn that would outlast the session fails when the session ends.
	f.agent.Delay.Store(int64(10 * time.Second))
	start := time.Now()
	m := msg("search.web", "slow")
	m.Message.ContextID = contextID
	if _, err = c.SendMessage(ctx, m); err == nil || !strings.Contains(err.Error(), "sessionMaxSeconds") || time.Since(start) > 5*time.Second {
		t.Fatalf("slow turn: %v after %s", err, time.Since(start))
	}
	f.agent.Delay.Store(0)
	// Later messages to the context are refused.
	m = msg("search.web", "again")
	m.Message.ContextID = contextID
	turns := f.agent.Turns()
	if _, err := c.SendMessage(ctx, m); err == nil || !strings.Contains(err.Error(), "sessionMaxSeconds") || f.agent.Turns() != turns {
		t.Fatalf("expired session: %v", err)
	}
	if rec := f.lastRecord(); rec.Attrs["refusal"] != "kars_session_expired" {
		t.Fatalf("audit %+v", rec)
	}
}

// TestCardsAreSigned: both cards verify under the router's card key, and
// the JWKS publishes it.
func TestCardsAreSigned(t *testing.T) {
	f := newFixture(t, nil)
	hc := f.goodClient()
	want, _ := card.KeyThumbprint(f.cardKey.Public())
	for _, p := range []string{PathCard, PathCardV03} {
		resp, err := hc.Get(f.srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		v, err := card.VerifyCard(b, card.FromJWK)
		if err != nil || v.Thumbprint != want || v.Name != "research-bot" {
			t.Fatalf("%s: %+v %v\n%s", p, v, err, b)
		}
	}
	resp, err := hc.Get(f.srv.URL + PathJWKS)
	if err != nil {
		t.Fatal(err)
	}
	var set card.JWKS
	json.NewDecoder(resp.Body).Decode(&set)
	resp.Body.Close()
	if len(set.Keys) != 1 || set.Keys[0].Kid != want {
		t.Fatalf("jwks %+v", set)
	}
}

// TestImportsNoCredential: the ingress cannot reach a credential, whatever
// its code does, because nothing that holds one is linked into it.
func TestImportsNoCredential(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		switch {
		case strings.HasPrefix(dep, "github.com/kars-io/kars/") && strings.Contains(dep, "credential"),
			dep == "github.com/kars-io/kars/internal/router",
			strings.HasPrefix(dep, "github.com/kars-io/kars/internal/inference"),
			strings.HasPrefix(dep, "github.com/Azure/"),
			strings.HasPrefix(dep, "golang.org/x/oauth2"):
			t.Errorf("the A2A ingress depends on %s", dep)
		}
	}
}
