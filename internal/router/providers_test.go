package router

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/openai/openai-go/v3"
)

// TestOpenAIFamilyProviders: OpenAI, GitHub Models and OpenAI-compatible
// targets get the upstream key as a bearer token on the OpenAI paths, and
// the body's model is the target's, whatever the agent asked for.
func TestOpenAIFamilyProviders(t *testing.T) {
	for _, p := range []routerconfig.Provider{routerconfig.ProviderOpenAI, routerconfig.ProviderGitHubModels, routerconfig.ProviderOpenAICompatible} {
		t.Run(string(p), func(t *testing.T) {
			h := newHarness(t, func(h *harness, c *routerconfig.Config) {
				c.Models.Primary = routerconfig.Target{Provider: p, Model: "openai/gpt-4.1", Endpoint: h.fake.OpenAIBaseURL(),
					Auth: &routerconfig.Auth{Mode: routerconfig.AuthAPIKey, KeyFile: h.keyFile}}
			})
			resp, err := h.client().Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
				Model: "gpt-3.5-turbo", Messages: userMsg("hi")})
			if err != nil {
				t.Fatal(err)
			}
			if resp.Model != "openai/gpt-4.1" {
				t.Fatalf("upstream saw model %q, want the target's", resp.Model)
			}
			hd := h.fake.Headers()
			if len(hd) != 1 || hd[0].Get("Authorization") != "Bearer "+h.fake.APIKey {
				t.Fatalf("upstream headers %v", hd)
			}
		})
	}
}

func TestRequestsPerMinute(t *testing.T) {
	h := newHarness(t, func(h *harness, c *routerconfig.Config) {
		c.RateLimit = &routerconfig.RateLimit{RPM: 2}
	})
	for i := range 3 {
		_, err := h.client().Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4.1", Messages: userMsg("hi")})
		var apiErr *openai.Error
		switch {
		case i < 2 && err != nil:
			t.Fatalf("call %d: %v", i, err)
		case i == 2 && (!errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusTooManyRequests || apiErr.Code != "kars_budget_rpm" ||
			apiErr.Response.Header.Get("Retry-After") == ""):
			t.Fatalf("third call: want 429 kars_budget_rpm with Retry-After, got %v", err)
		}
	}
}
