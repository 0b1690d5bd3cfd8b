package router

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
)

const agentKey = "sk-agent-should-never-leave-the-sandbox"

// client is the official OpenAI Go SDK pointed at the router, holding a key
// the router must drop.
func (h *harness) client(opts ...option.RequestOption) *openai.Client {
	base := []option.RequestOption{option.WithBaseURL(h.agent.URL + "/v1"), option.WithAPIKey(agentKey), option.WithMaxRetries(0)}
	c := openai.NewClient(append(base, opts...)...)
	return &c
}

// assertNoLeaks checks both directions of the credential boundary: the
// upstream never saw the agent's key, and nothing the agent received
// carries the upstream's credential.
func (h *harness) assertNoLeaks(respHeaders http.Header, body string) {
	h.t.Helper()
	for _, hd := range h.fake.Headers() {
		for k, vs := range hd {
			for _, v := range vs {
				if strings.Contains(v, agentKey) {
					h.t.Fatalf("upstream received the agent's credential in header %s", k)
				}
			}
		}
	}
	for _, secret := range []string{h.fake.APIKey, h.fake.EntraToken} {
		if strings.Contains(body, secret) {
			h.t.Fatalf("agent received the upstream credential in the body: %q", body)
		}
		for k, vs := range respHeaders {
			for _, v := range vs {
				if strings.Contains(v, secret) {
					h.t.Fatalf("agent received the upstream credential in header %s", k)
				}
			}
		}
	}
}

func userMsg(s string) []openai.ChatCompletionMessageParamUnion {
	return []openai.ChatCompletionMessageParamUnion{openai.UserMessage(s)}
}

func TestSDKChatNonStreaming(t *testing.T) {
	h := newHarness(t, nil)
	var raw *http.Response
	resp, err := h.client().Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model: "whatever-the-agent-thinks", Messages: userMsg("hello #fake:echo-auth"), MaxTokens: openai.Int(50),
	}, option.WithResponseInto(&raw))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Usage.TotalTokens == 0 || resp.Choices[0].Message.Content == "" {
		t.Fatalf("unexpected reply: %+v", resp)
	}
	if !strings.Contains(resp.Choices[0].Message.Content, "[redacted by kars-router]") {
		t.Fatalf("echoed upstream credential was not redacted: %q", resp.Choices[0].Message.Content)
	}
	h.assertNoLeaks(raw.Header, resp.RawJSON())
	if raw.Header.Get("X-Echo-Auth") != "" {
		t.Fatal("an upstream header outside the allowlist reached the agent")
	}
	st := h.ledgerState()
	if st.DayUsed != resp.Usage.TotalTokens || st.DayReserved != 0 {
		t.Fatalf("ledger %+v, want used %d and nothing reserved", st, resp.Usage.TotalTokens)
	}
	recs := h.auditRecords()
	if len(recs) != 1 || recs[0].Action != "inference:chat:gpt-4.1" || recs[0].Decision != "allow" || recs[0].PayloadSHA256 == "" {
		t.Fatalf("audit records: %+v", recs)
	}
	if recs[0].Attrs["completion_tokens"] == "" || strings.Contains(recs[0].Reason+recs[0].PayloadSHA256, "hello") {
		t.Fatalf("audit record must carry tokens and never the prompt: %+v", recs[0])
	}
}

func TestSDKChatStreamingSettlesToUpstreamUsage(t *testing.T) {
	h := newHarness(t, nil)
	var raw *http.Response
	stream := h.client().Chat.Completions.NewStreaming(context.Background(), openai.ChatCompletionNewParams{
		Model: "gpt-4.1", Messages: userMsg("stream please #fake:echo-auth"),
	}, option.WithResponseInto(&raw))
	var text strings.Builder
	for stream.Next() {
		c := stream.Current()
		if len(c.Choices) == 0 && c.Usage.TotalTokens > 0 {
			t.Fatal("the usage chunk reached an agent that did not ask for it")
		}
		for _, ch := range c.Choices {
			text.WriteString(ch.Delta.Content)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	h.assertNoLeaks(raw.Header, text.String())
	want := h.fake.PromptTokensSum.Load() + h.fake.CompletionTokensSum.Load()
	if got := h.ledgerState().DayUsed; got != want || want == 0 {
		t.Fatalf("ledger after stream = %d, upstream reported %d", got, want)
	}
	// The router asked upstream for the usage chunk on the agent's behalf.
	if !strings.Contains(text.String(), "tok") {
		t.Fatalf("streamed text %q", text.String())
	}
}

func TestSDKStreamingUsageWhenAgentAsks(t *testing.T) {
	h := newHarness(t, nil)
	stream := h.client().Chat.Completions.NewStreaming(context.Background(), openai.ChatCompletionNewParams{
		Model: "gpt-4.1", Messages: userMsg("count me"),
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	var usage int64
	for stream.Next() {
		if u := stream.Current().Usage.TotalTokens; u > 0 {
			usage = u
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if usage == 0 || usage != h.ledgerState().DayUsed {
		t.Fatalf("agent saw usage %d, ledger %d", usage, h.ledgerState().DayUsed)
	}
}

func TestSDKAzureClientEmbeddingsCompletionsResponses(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	az := openai.NewClient(azure.WithEndpoint(h.agent.URL, "2024-10-21"), azure.WithAPIKey(agentKey),
		azure.WithUnsafeAllowHTTP(), option.WithMaxRetries(0))
	chat, err := az.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "my-deployment", Messages: userMsg("via azure sdk path")})
	if err != nil {
		t.Fatal(err)
	}
	if chat.Usage.TotalTokens == 0 {
		t.Fatal("no usage through the Azure path")
	}
	emb, err := h.client().Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "text-embedding-3-small",
		Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("embed me")}})
	if err != nil {
		t.Fatal(err)
	}
	if len(emb.Data) != 1 || emb.Usage.PromptTokens == 0 {
		t.Fatalf("embeddings: %+v", emb)
	}
	comp, err := h.client().Completions.New(ctx, openai.CompletionNewParams{Model: "gpt-35-turbo-instruct",
		Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("once upon")}, MaxTokens: openai.Int(5)})
	if err != nil {
		t.Fatal(err)
	}
	if comp.Usage.CompletionTokens != 5 {
		t.Fatalf("completions usage %+v", comp.Usage)
	}
	rs := h.client().Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: "gpt-4.1",
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("respond")}})
	var done bool
	for rs.Next() {
		if rs.Current().Type == "response.completed" {
			done = true
		}
	}
	if err := rs.Err(); err != nil || !done {
		t.Fatalf("responses stream: done=%v err=%v", done, err)
	}
	want := h.fake.PromptTokensSum.Load() + h.fake.CompletionTokensSum.Load()
	if got := h.ledgerState().DayUsed; got != want {
		t.Fatalf("every endpoint is metered: ledger %d, upstream reported %d", got, want)
	}
	ops := map[string]bool{}
	for _, r := range h.auditRecords() {
		ops[r.Action] = true
	}
	for _, a := range []string{"inference:chat:gpt-4.1", "inference:embeddings:gpt-4.1", "inference:completions:gpt-4.1", "inference:responses:gpt-4.1"} {
		if !ops[a] {
			t.Errorf("no audit record for %s (have %v)", a, ops)
		}
	}
}

func TestSDKModelsAndUnknownPath(t *testing.T) {
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		c.Models.Fallbacks = []routerconfig.Target{routerconfigtest.OfflineTarget()}
	})
	page, err := h.client().Models.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range page.Data {
		ids = append(ids, m.ID+"="+string(m.OwnedBy))
	}
	if len(ids) != 2 || !strings.HasPrefix(ids[0], "gpt-4.1=") || !strings.Contains(ids[1], "kars-offline=kars-offline (no inference credentials") {
		t.Fatalf("models: %v", ids)
	}
	resp, err := http.Post(h.agent.URL+"/v1/images/generations", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(b), `"code":"kars_unknown_endpoint"`) {
		t.Fatalf("unknown path: %d %s", resp.StatusCode, b)
	}
}

func TestSDKBudgetExceededNamesBudget(t *testing.T) {
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		c.Budget = &routerconfig.Budget{Daily: 1000, DefaultReserve: 900}
		h.fake.CompletionTokens = 500 // the first call spends half the day
	})
	_, err := h.client().Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("hi")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.client().Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("again")})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusTooManyRequests || apiErr.Code != "kars_budget_daily" ||
		!strings.Contains(apiErr.Message, "daily token budget") {
		t.Fatalf("want 429 naming the daily budget, got %v", err)
	}
	if apiErr.Response.Header.Get("X-Should-Retry") != "false" || apiErr.Response.Header.Get("Retry-After") == "" {
		t.Fatalf("budget refusal headers: %v", apiErr.Response.Header)
	}
}
