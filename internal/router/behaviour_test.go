package router

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
	"github.com/kars-io/kars/internal/trust"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// TestConcurrentBudgetNeverOverspends fires 500 concurrent calls at a daily
// budget that fits 100 worst-case reservations. Reserve-before-forward
// means the ledger can never pass the budget, every refusal is a 429 naming
// it, and the ledger equals exactly what the upstream reported.
func TestConcurrentBudgetNeverOverspends(t *testing.T) {
	body := func(i int) []byte {
		// Fixed-size bodies so every call reserves the same amount.
		return []byte(fmt.Sprintf(`{"model":"gpt-4.1","max_tokens":150,"messages":[{"role":"user","content":"call %05d"}]}`, i))
	}
	est := int64(len(body(0))+3) / 4
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		c.Budget = &routerconfig.Budget{Daily: 100 * (est + 150)}
		h.fake.CompletionTokens = 150 // spend the whole reservation's completion
	})
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	start := make(chan struct{})
	for i := range 500 {
		wg.Go(func() {
			<-start
			resp, err := http.Post(h.agent.URL+"/v1/chat/completions", "application/json", bytes.NewReader(body(i)))
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusTooManyRequests && !strings.Contains(string(b), "kars_budget_daily") {
				t.Errorf("429 without naming the budget: %s", b)
			}
			mu.Lock()
			codes[resp.StatusCode]++
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	st := h.ledgerState()
	reported := h.fake.PromptTokensSum.Load() + h.fake.CompletionTokensSum.Load()
	t.Logf("codes %v, ledger %d of %d, upstream reported %d", codes, st.DayUsed, st.Limits.Daily, reported)
	if codes[200]+codes[429] != 500 || codes[200] == 0 || codes[429] == 0 {
		t.Fatalf("status codes %v", codes)
	}
	if st.DayUsed > st.Limits.Daily {
		t.Fatalf("overspent: ledger %d > budget %d", st.DayUsed, st.Limits.Daily)
	}
	if st.DayUsed != reported || st.DayReserved != 0 {
		t.Fatalf("ledger %d (reserved %d) != upstream usage %d", st.DayUsed, st.DayReserved, reported)
	}
	if int64(codes[200]) != h.fake.Requests.Load() {
		t.Fatalf("%d successes but the upstream served %d", codes[200], h.fake.Requests.Load())
	}
}

// TestSafetyFloors: each harm category above its floor blocks; at or below
// it passes.
func TestSafetyFloors(t *testing.T) {
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		c.ContentSafety = &routerconfig.ContentSafety{Hate: "Low", SelfHarm: "Safe", Sexual: "Medium", Violence: "Low"}
	})
	cases := []struct {
		directive string
		blocked   bool
	}{
		{"hate=low", false}, {"hate=medium", true},
		{"self_harm=low", true},
		{"sexual=medium", false}, {"sexual=high", true},
		{"violence=low", false}, {"violence=medium", true},
		{"jailbreak", true}, {"indirect", true},
	}
	for _, tc := range cases {
		_, err := h.client().Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
			Model: "gpt-4.1", Messages: userMsg("probe #fake:" + tc.directive)})
		var apiErr *openai.Error
		blocked := errors.As(err, &apiErr) && apiErr.StatusCode == 400 && apiErr.Code == "content_filter"
		if blocked != tc.blocked {
			t.Errorf("%s: blocked=%v, want %v (err %v)", tc.directive, blocked, tc.blocked, err)
		}
	}
	// Blocked calls still spent tokens upstream: they are metered.
	if got, want := h.ledgerState().DayUsed, h.fake.PromptTokensSum.Load()+h.fake.CompletionTokensSum.Load(); got != want {
		t.Fatalf("ledger %d, upstream %d", got, want)
	}
}

func TestSafetyJailbreakMidStreamCutsStream(t *testing.T) {
	h := newHarness(t, nil)
	stream := h.client().Chat.Completions.NewStreaming(context.Background(), openai.ChatCompletionNewParams{
		Model: "gpt-4.1", Messages: userMsg("tell me #fake:midstream-jailbreak")})
	var got []string
	for stream.Next() {
		for _, c := range stream.Current().Choices {
			if c.Delta.Content != "" {
				got = append(got, c.Delta.Content)
			}
		}
	}
	err := stream.Err()
	if err == nil || !strings.Contains(err.Error(), "jailbreak") {
		t.Fatalf("stream error = %v, want a content-safety error naming the jailbreak", err)
	}
	// The fake sends the jailbreak annotation after two content chunks.
	if len(got) != 2 {
		t.Fatalf("agent received %d content chunks (%v), want exactly the 2 before the annotation", len(got), got)
	}
	recs := h.auditRecords()
	if last := recs[len(recs)-1]; last.Attrs["safety_block"] != "prompt:jailbreak" || last.Attrs["refusal"] != "content_filter" {
		t.Fatalf("audit record does not show the safety block: %+v", last.Attrs)
	}
	// The finding lowered the agent's trust score.
	if score := h.trust.Score(h.cfg.Sandbox.AgentID); score >= trust.DefaultConfig().Initial {
		t.Fatalf("trust score %d after a jailbreak, want below the initial %d", score, trust.DefaultConfig().Initial)
	}
}

func TestRequirePromptShields(t *testing.T) {
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		c.ContentSafety = &routerconfig.ContentSafety{RequirePromptShields: true}
	})
	ctx := context.Background()
	if _, err := h.client().Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("shielded")}); err != nil {
		t.Fatalf("annotated response refused: %v", err)
	}
	_, err := h.client().Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("#fake:noshields")})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || !strings.Contains(apiErr.Message, "Prompt Shields") {
		t.Fatalf("unshielded response: %v", err)
	}
	stream := h.client().Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("#fake:noshields")})
	for stream.Next() {
		for _, c := range stream.Current().Choices {
			if c.Delta.Content != "" {
				t.Fatal("content reached the agent before any shield annotation")
			}
		}
	}
	if stream.Err() == nil {
		t.Fatal("unshielded stream was not cut")
	}
}

func TestAzureRefusalPassesThroughAndIsRecorded(t *testing.T) {
	h := newHarness(t, nil)
	_, err := h.client().Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("#fake:refuse")})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Code != "content_filter" {
		t.Fatalf("want Azure's content_filter error, got %v", err)
	}
	if recs := h.auditRecords(); recs[len(recs)-1].Attrs["safety_block"] != "prompt:hate" {
		t.Fatalf("Azure's innererror finding was not recorded: %+v", recs[len(recs)-1].Attrs)
	}
}

func TestFailoverOn429And5xx(t *testing.T) {
	for _, status := range []string{"429", "503"} {
		t.Run(status, func(t *testing.T) {
			h := newHarness(t, func(h *harness, c *routerconfig.Config) {
				fb := h.azureTarget("gpt-4.1-mini")
				c.Models.Fallbacks = []routerconfig.Target{fb}
			})
			h.fake.FailDeployment("gpt-4.1-dep", status)
			resp, err := h.client().Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("hi")})
			if err != nil {
				t.Fatal(err)
			}
			if resp.Usage.TotalTokens == 0 {
				t.Fatal("no usage from the fallback")
			}
			recs := h.auditRecords()
			if m := recs[len(recs)-1].Attrs["model"]; m != "AzureOpenAI/gpt-4.1-mini@gpt-4.1-mini-dep" {
				t.Fatalf("answered by %q", m)
			}
			// The primary is now cooling down: the next call goes straight
			// to the fallback without trying it.
			before := h.fake.Requests.Load()
			if _, err := h.client().Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("again")}); err != nil {
				t.Fatal(err)
			}
			if n := h.fake.Requests.Load() - before; n != 1 {
				t.Fatalf("second call made %d upstream requests, want 1 (primary skipped while unhealthy)", n)
			}
		})
	}
}

func TestGovernanceDeniesBeforeForwarding(t *testing.T) {
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		c.Governance = &governance.Policy{Name: "deny-chat", Rules: []governance.Rule{
			{Name: "no-chat", Effect: governance.EffectDeny, Actions: []string{"inference:chat:*"}},
			{Name: "embeddings", Effect: governance.EffectAllow, Actions: []string{"inference:embeddings:*"}},
		}}
	})
	_, err := h.client().Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("hi")})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 403 || apiErr.Code != "kars_policy_denied" || !strings.Contains(apiErr.Message, "no-chat") {
		t.Fatalf("want 403 naming the rule, got %v", err)
	}
	if h.fake.Requests.Load() != 0 {
		t.Fatal("a denied call reached the upstream")
	}
	recs := h.auditRecords()
	if len(recs) != 1 || recs[0].Decision != "deny" || recs[0].Rule != "no-chat" {
		t.Fatalf("audit: %+v", recs)
	}
}

func TestAnthropicMessagesStreamingAndNot(t *testing.T) {
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		c.Models.Primary = routerconfig.Target{Provider: routerconfig.ProviderAnthropic, Model: "claude-sonnet-4-5",
			Endpoint: h.fake.URL(), Auth: &routerconfig.Auth{Mode: routerconfig.AuthAPIKey, KeyFile: h.keyFile}}
	})
	post := func(stream bool) (*http.Response, string) {
		body := fmt.Sprintf(`{"model":"claude","max_tokens":64,"stream":%v,"messages":[{"role":"user","content":"hi #fake:echo-auth"}]}`, stream)
		req, _ := http.NewRequest("POST", h.agent.URL+"/v1/messages", strings.NewReader(body))
		req.Header.Set("X-Api-Key", agentKey)
		req.Header.Set("Anthropic-Version", "2023-06-01")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}
	resp, body := post(false)
	if resp.StatusCode != 200 || !strings.Contains(body, `"type":"message"`) {
		t.Fatalf("messages: %d %s", resp.StatusCode, body)
	}
	h.assertNoLeaks(resp.Header, body)
	resp, body = post(true)
	if resp.StatusCode != 200 || !strings.Contains(body, "event: message_stop") {
		t.Fatalf("messages stream: %d %s", resp.StatusCode, body)
	}
	h.assertNoLeaks(resp.Header, body)
	if got, want := h.ledgerState().DayUsed, h.fake.PromptTokensSum.Load()+h.fake.CompletionTokensSum.Load(); got != want {
		t.Fatalf("ledger %d, upstream %d", got, want)
	}
	// An OpenAI call cannot be served by an Anthropic-only sandbox.
	r2, err := http.Post(h.agent.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"messages":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r2.Body)
	r2.Body.Close()
	if r2.StatusCode != 400 || !strings.Contains(string(b), "kars_no_target") {
		t.Fatalf("cross-dialect call: %d %s", r2.StatusCode, b)
	}
}

func TestBrokenStreamIsMetered(t *testing.T) {
	h := newHarness(t, nil)
	resp, err := http.Post(h.agent.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"#fake:break"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "kars_upstream_stream_broken") {
		t.Fatalf("agent was not told the stream broke: %s", b)
	}
	st := h.ledgerState()
	if st.DayUsed == 0 || st.DayReserved != 0 {
		t.Fatalf("broken stream not metered: %+v", st)
	}
	recs := h.auditRecords()
	if recs[len(recs)-1].Attrs["usage_reported"] != "false" {
		t.Fatalf("metered usage must be marked as estimated: %+v", recs[len(recs)-1].Attrs)
	}
}

// TestAuditFailureFailsClosed: an answer whose audit entry cannot be
// written is withheld, and once the log is known to fail nothing is
// forwarded.
func TestAuditFailureFailsClosed(t *testing.T) {
	h := newHarness(t, nil)
	h.sink.Close() // every later append fails, as after a failed fsync
	c := h.client()
	for i, msg := range []string{"one", "two"} {
		_, err := c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg(msg)})
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 503 || apiErr.Code != "kars_audit_unavailable" {
			t.Fatalf("call %d: want 503 while the audit log fails, got %v", i+1, err)
		}
	}
	// The first call reached the upstream (the failure showed only when
	// its entry was written); the second was refused before forwarding.
	if n := h.fake.Requests.Load(); n != 1 {
		t.Fatalf("%d calls forwarded, want 1", n)
	}
}

// TestAuditFailureEndsStreamWithError: a stream whose entry cannot be
// written ends with an error event instead of [DONE], so the SDK raises.
func TestAuditFailureEndsStreamWithError(t *testing.T) {
	h := newHarness(t, nil)
	h.sink.Close()
	stream := h.client().Chat.Completions.NewStreaming(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("stream")})
	n := 0
	for stream.Next() {
		n++
	}
	if err := stream.Err(); err == nil || !strings.Contains(err.Error(), "kars_audit_unavailable") && !strings.Contains(err.Error(), "audit log") {
		t.Fatalf("stream ended with %v after %d chunks; want the audit error", err, n)
	}
}

func TestAdminAPI(t *testing.T) {
	h := newHarness(t, nil)
	srv := h.router.AdminHandler(h.cfg.Admin.TokenFile, AdminBackends{})
	get := func(path, token string) (int, map[string]any) {
		req, _ := http.NewRequest("GET", path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		var v map[string]any
		json.Unmarshal(rec.Body.Bytes(), &v)
		return rec.Code, v
	}
	if code, _ := get("/healthz", ""); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	for _, tok := range []string{"", "wrong", "admin-secret-token-longer"} {
		if code, _ := get("/admin/v1/policy/digest", tok); code != 401 {
			t.Fatalf("token %q: %d", tok, code)
		}
	}
	code, v := get("/admin/v1/policy/digest", "admin-secret-token")
	want, _ := routerconfig.Digest(h.cfg)
	if code != 200 || v["digest"] != want {
		t.Fatalf("digest %d %v, want %s", code, v, want)
	}
	// Rotating the token file takes effect without a restart.
	if err := os.WriteFile(filepath.Join(h.dir, "admin-token"), []byte("rotated-token-value"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The key file is re-checked at most once a second.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, _ := get("/admin/v1/model", "rotated-token-value"); c == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("rotated admin token not accepted")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, _ := get("/admin/v1/trust", "rotated-token-value"); code != 501 {
		t.Fatalf("trust without a backend: %d", code)
	}
	srv = h.router.AdminHandler(h.cfg.Admin.TokenFile, AdminBackends{Trust: TrustStore{Store: h.trust}.View})
	if code, v := get("/admin/v1/trust", "rotated-token-value"); code != 200 || v["score"] != float64(500) || v["tier"] == "" {
		t.Fatalf("trust view: %d %v", code, v)
	}
}

func TestMalformedRequestIsRefusedAndAudited(t *testing.T) {
	h := newHarness(t, nil)
	resp, err := http.Post(h.agent.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":7}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), "kars_bad_request") {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	recs := h.auditRecords()
	if len(recs) != 1 || recs[0].Action != "inference:chat" || recs[0].Decision != "refused" || h.fake.Requests.Load() != 0 {
		t.Fatalf("audit %+v, upstream calls %d", recs, h.fake.Requests.Load())
	}
}

// slowSink makes each append take a while and counts the appends that
// have returned, i.e. that the log reported durable.
type slowSink struct {
	inner   audit.Sink
	delay   time.Duration
	durable atomic.Int64
}

func (s *slowSink) Append(ctx context.Context, r audit.Record) (audit.Receipt, error) {
	time.Sleep(s.delay)
	rc, err := s.inner.Append(ctx, r)
	if err == nil {
		s.durable.Add(1)
	}
	return rc, err
}

// TestAuditDurableBeforeAnswerCompletes: the agent never holds a complete
// answer — whole, streamed, or a refusal — whose audit entry is not yet
// durable, however slow the log is.
func TestAuditDurableBeforeAnswerCompletes(t *testing.T) {
	h := newHarness(t, nil)
	sink := &slowSink{inner: h.sink, delay: 50 * time.Millisecond}
	r, err := New(routerconfigtest.Snapshot(t, h.cfg), Options{Audit: sink, Ledger: h.router.Ledger(), Logger: h.router.log})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r.AgentHandler())
	defer srv.Close()
	c := openai.NewClient(option.WithBaseURL(srv.URL+"/v1"), option.WithAPIKey("x"), option.WithMaxRetries(0))
	if _, err := c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("whole")}); err != nil {
		t.Fatal(err)
	}
	if n := sink.durable.Load(); n != 1 {
		t.Fatalf("whole answer received with %d durable entries, want 1", n)
	}
	stream := c.Chat.Completions.NewStreaming(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("streamed")})
	for stream.Next() {
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	// [DONE] was held until the entry was durable.
	if n := sink.durable.Load(); n != 2 {
		t.Fatalf("stream completed with %d durable entries, want 2", n)
	}
	resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":7}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n := sink.durable.Load(); resp.StatusCode != 400 || n != 3 {
		t.Fatalf("refusal %d received with %d durable entries, want 3", resp.StatusCode, n)
	}
}
