package devenv

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// Provider is the inference provider the dev environment gives new
// sandboxes, with the secret the router needs (never the agent).
type Provider struct {
	// Name says where the choice came from, for the progress report.
	Name   string
	Target karsv1.ModelTarget
	// Key is the API key, stored in a Secret mounted into the router only.
	Key string `json:"-"`
}

// Offline reports whether this is the built-in offline model.
func (p Provider) Offline() bool { return p.Target.Provider == karsv1.ProviderOffline }

// Credentials are what `kars credentials set` (without a sandbox name)
// saves for the dev environment, in <home>/credentials.json, mode 0600.
type Credentials struct {
	Provider   karsv1.ModelProvider `json:"provider"`
	Model      string               `json:"model,omitempty"`
	Endpoint   string               `json:"endpoint,omitempty"`
	Deployment string               `json:"deployment,omitempty"`
	APIVersion string               `json:"apiVersion,omitempty"`
	APIKey     string               `json:"apiKey,omitempty"`
}

// CredentialsPath is where the dev credentials live.
func CredentialsPath() string { return filepath.Join(Home(), "credentials.json") }

// SaveCredentials writes c for later dev sandboxes.
func SaveCredentials(c Credentials) error {
	if err := os.MkdirAll(Home(), 0o700); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	tmp := CredentialsPath() + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, CredentialsPath())
}

// DetectProvider chooses the dev environment's provider: saved credentials
// first, then the usual environment variables (OPENAI_API_KEY; AZURE_OPENAI_ENDPOINT
// with AZURE_OPENAI_API_KEY; GITHUB_TOKEN for GitHub Models; OLLAMA_HOST),
// else the built-in offline model.
func DetectProvider(getenv func(string) string) (Provider, error) {
	if raw, err := os.ReadFile(CredentialsPath()); err == nil {
		var c Credentials
		if err := json.Unmarshal(raw, &c); err != nil {
			return Provider{}, fmt.Errorf("%s is not valid JSON: %w (fix it or run `kars credentials set` again)", CredentialsPath(), err)
		}
		return fromCredentials(c, "saved credentials ("+CredentialsPath()+")")
	} else if !errors.Is(err, os.ErrNotExist) {
		return Provider{}, err
	}
	switch {
	case getenv("OPENAI_API_KEY") != "":
		return fromCredentials(Credentials{Provider: karsv1.ProviderOpenAI, APIKey: getenv("OPENAI_API_KEY"),
			Model: getenv("OPENAI_MODEL"), Endpoint: getenv("OPENAI_BASE_URL")}, "OPENAI_API_KEY")
	case getenv("AZURE_OPENAI_ENDPOINT") != "" && getenv("AZURE_OPENAI_API_KEY") != "":
		return fromCredentials(Credentials{Provider: karsv1.ProviderAzureOpenAI, APIKey: getenv("AZURE_OPENAI_API_KEY"),
			Endpoint: getenv("AZURE_OPENAI_ENDPOINT"), Deployment: getenv("AZURE_OPENAI_DEPLOYMENT"),
			APIVersion: getenv("OPENAI_API_VERSION")}, "AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY")
	case getenv("GITHUB_TOKEN") != "":
		return fromCredentials(Credentials{Provider: karsv1.ProviderGitHubModels, APIKey: getenv("GITHUB_TOKEN")}, "GITHUB_TOKEN (GitHub Models)")
	case getenv("OLLAMA_HOST") != "":
		host := getenv("OLLAMA_HOST")
		if !strings.Contains(host, "://") {
			host = "http://" + host
		}
		return fromCredentials(Credentials{Provider: karsv1.ProviderOpenAICompatible, Endpoint: strings.TrimRight(host, "/") + "/v1",
			Model: getenv("OLLAMA_MODEL")}, "OLLAMA_HOST (Ollama)")
	}
	return fromCredentials(Credentials{Provider: karsv1.ProviderOffline}, "no credentials found")
}

// DetectProviderFrom validates explicit credentials and fills their
// defaults (model, API version), as DetectProvider does for saved ones.
func DetectProviderFrom(c Credentials) (Provider, error) { return fromCredentials(c, "command line") }

func fromCredentials(c Credentials, source string) (Provider, error) {
	p := Provider{Name: source, Key: c.APIKey, Target: karsv1.ModelTarget{
		Provider: c.Provider, Model: c.Model, Endpoint: c.Endpoint, Deployment: c.Deployment, APIVersion: c.APIVersion,
	}}
	t := &p.Target
	switch c.Provider {
	case karsv1.ProviderOffline:
		t.Model = "kars-offline"
	case karsv1.ProviderOpenAI:
		t.Model = or(t.Model, "gpt-4.1-mini")
	case karsv1.ProviderAzureOpenAI, karsv1.ProviderAzureAIFoundry:
		if t.Endpoint == "" {
			return Provider{}, fmt.Errorf("%s needs an endpoint", c.Provider)
		}
		t.Model = or(t.Model, or(t.Deployment, "gpt-4.1"))
		t.Deployment = or(t.Deployment, t.Model)
		t.APIVersion = or(t.APIVersion, "2024-10-21")
	case karsv1.ProviderGitHubModels:
		t.Model = or(t.Model, "openai/gpt-4.1-mini")
	case karsv1.ProviderAnthropic:
		t.Model = or(t.Model, "claude-sonnet-4-5")
	case karsv1.ProviderOpenAICompatible:
		if t.Endpoint == "" {
			return Provider{}, errors.New("OpenAICompatible needs an endpoint")
		}
		t.Model = or(t.Model, "llama3.2")
	default:
		return Provider{}, fmt.Errorf("unknown provider %q", c.Provider)
	}
	if p.Key != "" {
		t.Auth = &karsv1.ProviderAuth{Mode: karsv1.AuthAPIKey}
	} else if c.Provider != karsv1.ProviderOffline && c.Provider != karsv1.ProviderOpenAICompatible {
		return Provider{}, fmt.Errorf("%s needs an API key", c.Provider)
	}
	return p, nil
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
