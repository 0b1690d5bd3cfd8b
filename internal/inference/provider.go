package inference

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/kars-io/kars/internal/credential"
	"github.com/kars-io/kars/internal/routerconfig"
)

// Default API versions, used when a target sets none.
const (
	// DefaultAzureAPIVersion is the GA Azure OpenAI data-plane version
	// that serves chat completions, completions and embeddings.
	DefaultAzureAPIVersion = "2024-10-21"
	// DefaultAzureResponsesAPIVersion serves the Responses API.
	DefaultAzureResponsesAPIVersion = "2025-04-01-preview"
	// DefaultAnthropicVersion is the anthropic-version header.
	DefaultAnthropicVersion = "2023-06-01"
)

// Public endpoints used when a target names none.
const (
	OpenAIEndpoint       = "https://api.openai.com/v1"
	GitHubModelsEndpoint = "https://models.github.ai/inference"
	AnthropicEndpoint    = "https://api.anthropic.com"
)

// Upstream is one configured target made callable: it knows the target's
// URL scheme, its credential and which operations it serves.
type Upstream struct {
	Target routerconfig.Target
	Cred   credential.Source
}

// ID names the upstream in metrics, logs and health state:
// "<provider>/<model>" plus the deployment for Azure.
func (u *Upstream) ID() string {
	id := string(u.Target.Provider) + "/" + u.Target.Model
	if u.Target.Deployment != "" {
		id += "@" + u.Target.Deployment
	}
	return id
}

// Serves reports whether the upstream can answer op as asked in dialect d.
// The router forwards bodies rather than translating them, so an Anthropic
// target serves Messages and the OpenAI family serves the OpenAI operations.
func (u *Upstream) Serves(d Dialect, op Op) bool {
	switch u.Target.Provider {
	case routerconfig.ProviderAnthropic:
		return d == DialectAnthropic
	case routerconfig.ProviderOffline:
		return op == OpChat || op == OpEmbeddings || op == OpMessages
	default:
		return d != DialectAnthropic && op != OpMessages
	}
}

// forwardedRequestHeaders are the only agent headers passed upstream.
// Everything else, in particular Authorization, api-key and x-api-key, is
// dropped: the agent holds no credential worth forwarding and must not be
// able to smuggle one.
var forwardedRequestHeaders = []string{
	"Content-Type", "Accept", "User-Agent", "Openai-Beta", "Anthropic-Version", "Anthropic-Beta",
}

// NewRequest builds the upstream HTTP request for op with body (already
// rewritten by UpstreamBody), copying only allowlisted agent headers and
// injecting the upstream credential.
func (u *Upstream) NewRequest(ctx context.Context, op Op, body []byte, agent http.Header) (*http.Request, error) {
	target, err := u.url(op)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for _, k := range forwardedRequestHeaders {
		if v := agent.Values(k); len(v) > 0 {
			req.Header[k] = v
		}
	}
	if req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	cred, err := u.Cred.Credential(ctx)
	if err != nil {
		return nil, fmt.Errorf("credential for %s: %w", u.ID(), err)
	}
	switch {
	case cred.Secret == "":
	case u.Target.Provider == routerconfig.ProviderAnthropic:
		req.Header.Set("X-Api-Key", cred.Secret)
	case isAzure(u.Target.Provider) && !cred.Entra:
		req.Header.Set("Api-Key", cred.Secret)
	default:
		req.Header.Set("Authorization", "Bearer "+cred.Secret)
	}
	if u.Target.Provider == routerconfig.ProviderAnthropic {
		if v := u.Target.APIVersion; v != "" {
			req.Header.Set("Anthropic-Version", v)
		} else if req.Header.Get("Anthropic-Version") == "" {
			req.Header.Set("Anthropic-Version", DefaultAnthropicVersion)
		}
	}
	return req, nil
}

// BodyModel is the model name to write into the upstream body, or "" to
// leave the agent's value (Azure deployment URLs ignore it).
func (u *Upstream) BodyModel(op Op) string {
	switch {
	case isAzure(u.Target.Provider) && op == OpResponses:
		return u.Target.Deployment
	case isAzure(u.Target.Provider):
		return ""
	}
	return u.Target.Model
}

func (u *Upstream) url(op Op) (string, error) {
	t := u.Target
	base := strings.TrimRight(t.Endpoint, "/")
	switch t.Provider {
	case routerconfig.ProviderAzureOpenAI, routerconfig.ProviderAzureAIFoundry:
		v := t.APIVersion
		if op == OpResponses {
			if v == "" {
				v = DefaultAzureResponsesAPIVersion
			}
			return base + "/openai/responses?api-version=" + url.QueryEscape(v), nil
		}
		if v == "" {
			v = DefaultAzureAPIVersion
		}
		return base + "/openai/deployments/" + url.PathEscape(t.Deployment) + openAIPath[op] + "?api-version=" + url.QueryEscape(v), nil
	case routerconfig.ProviderAnthropic:
		if base == "" {
			base = AnthropicEndpoint
		}
		return base + "/v1/messages", nil
	case routerconfig.ProviderOpenAI:
		if base == "" {
			base = OpenAIEndpoint
		}
	case routerconfig.ProviderGitHubModels:
		if base == "" {
			base = GitHubModelsEndpoint
		}
	case routerconfig.ProviderOffline:
		base = OfflineBaseURL
		if op == OpMessages {
			return base + "/messages", nil
		}
	}
	p, ok := openAIPath[op]
	if !ok || base == "" {
		return "", fmt.Errorf("%s does not serve %s", u.ID(), op)
	}
	return base + p, nil
}

func isAzure(p routerconfig.Provider) bool {
	return p == routerconfig.ProviderAzureOpenAI || p == routerconfig.ProviderAzureAIFoundry
}

// PassResponseHeader reports whether an upstream response header may reach
// the agent. Only content metadata, request ids for support tickets and
// rate-limit hints pass; nothing that could carry a credential or a cookie.
func PassResponseHeader(name string) bool {
	switch http.CanonicalHeaderKey(name) {
	case "Content-Type", "Retry-After", "Retry-After-Ms", "X-Request-Id", "Request-Id", "Apim-Request-Id",
		"Openai-Processing-Ms", "Openai-Version", "Openai-Model", "X-Ms-Region", "Azureml-Model-Session":
		return true
	}
	l := strings.ToLower(name)
	return strings.HasPrefix(l, "x-ratelimit-") || strings.HasPrefix(l, "anthropic-ratelimit-")
}
