package router

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/kars-io/kars/internal/credential"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
	"github.com/openai/openai-go/v3"
)

// TestWorkloadIdentityEndToEnd: the router exchanges the projected token at
// the authority (read from the AZURE_* environment like Azure's SDKs), and
// 50 concurrent calls cost one exchange.
func TestWorkloadIdentityEndToEnd(t *testing.T) {
	var tokenFile string
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		tokenFile = filepath.Join(h.dir, "azure-identity-token")
		if err := os.WriteFile(tokenFile, []byte(h.fake.FederatedToken), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv(credential.EnvAuthorityHost, h.fake.URL()+"/")
		t.Setenv(credential.EnvTenantID, h.fake.TenantID)
		t.Setenv(credential.EnvClientID, h.fake.ClientID)
		t.Setenv(credential.EnvFederatedTokenFile, tokenFile)
		c.Models.Primary.Auth = &routerconfig.Auth{Mode: routerconfig.AuthWorkloadIdentity}
	})
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if _, err := h.client().Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("wi")}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := h.fake.TokenRequests.Load(); n != 1 {
		t.Fatalf("%d token exchanges for 50 concurrent calls, want 1", n)
	}
	for _, hd := range h.fake.Headers() {
		if hd.Get("Authorization") != "Bearer "+h.fake.EntraToken || hd.Get("Api-Key") != "" {
			t.Fatalf("upstream saw auth headers %v", hd)
		}
	}
}

func TestManagedIdentityEndToEnd(t *testing.T) {
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		c.Models.Primary.Auth = &routerconfig.Auth{Mode: routerconfig.AuthManagedIdentity, IMDSEndpoint: h.fake.URL(), ClientID: h.fake.ClientID}
	})
	for range 3 {
		if _, err := h.client().Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("mi")}); err != nil {
			t.Fatal(err)
		}
	}
	if n := h.fake.TokenRequests.Load(); n != 1 {
		t.Fatalf("%d IMDS calls for 3 requests, want 1 (cached)", n)
	}
}

// TestOfflineToolLoop drives the offline model through a tool call and the
// follow-up answer with the official SDK, streaming and not.
func TestOfflineToolLoop(t *testing.T) {
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		c.Models.Primary = routerconfigtest.OfflineTarget()
		c.Budget = &routerconfig.Budget{Daily: 1_000_000}
	})
	ctx := context.Background()
	tools := []openai.ChatCompletionToolUnionParam{openai.ChatCompletionFunctionTool(openai.FunctionDefinitionParam{
		Name: "get_weather",
		Parameters: openai.FunctionParameters{"type": "object",
			"properties": map[string]any{"city": map[string]any{"type": "string"}}, "required": []string{"city"}},
	})}
	msgs := userMsg("Please use get_weather for Paris")
	first, err := h.client().Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "kars-offline", Messages: msgs, Tools: tools})
	if err != nil {
		t.Fatal(err)
	}
	calls := first.Choices[0].Message.ToolCalls
	if first.Choices[0].FinishReason != "tool_calls" || len(calls) != 1 || calls[0].Function.Name != "get_weather" {
		t.Fatalf("want a get_weather tool call, got %+v", first.Choices[0])
	}
	msgs = append(msgs, first.Choices[0].Message.ToParam(), openai.ToolMessage("18°C and sunny", calls[0].ID))
	second, err := h.client().Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "kars-offline", Messages: msgs, Tools: tools})
	if err != nil {
		t.Fatal(err)
	}
	want := "[kars-offline] The tool get_weather returned: 18°C and sunny"
	if got := second.Choices[0].Message.Content; got != want {
		t.Fatalf("answer %q, want %q", got, want)
	}
	// Streaming: the accumulated text equals the non-streamed answer.
	stream := h.client().Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "kars-offline", Messages: msgs, Tools: tools})
	acc := openai.ChatCompletionAccumulator{}
	for stream.Next() {
		acc.AddChunk(stream.Current())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if got := acc.Choices[0].Message.Content; got != want {
		t.Fatalf("streamed answer %q", got)
	}
	// The stream's usage (which the router requested and withheld, as the
	// agent did not ask for it) equals the non-streamed call's.
	st := h.ledgerState()
	if want := first.Usage.TotalTokens + 2*second.Usage.TotalTokens; st.DayUsed != want || second.Usage.TotalTokens == 0 {
		t.Fatalf("offline usage not metered: ledger %d, want %d", st.DayUsed, want)
	}
}
