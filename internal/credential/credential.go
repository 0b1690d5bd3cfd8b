// Package credential brokers upstream credentials for the router: Microsoft
// Entra tokens from workload identity (a federated ServiceAccount token
// exchanged at the authority's token endpoint) or from managed identity
// (IMDS), and static API keys read from mounted files.
//
// Credentials live only in the router's memory (UID 1001) and in files the
// agent cannot read. Tokens are cached and refreshed before they expire by
// one caller at a time (single flight), so a burst of requests costs one
// token exchange. This package must not log credential values.
package credential

import (
	"context"
	"time"
)

// Credential is a secret to present upstream.
type Credential struct {
	// Secret is the bearer token or API key.
	Secret string
	// Entra is true for a Microsoft Entra access token (sent as
	// "Authorization: Bearer"), false for a provider API key (whose header
	// depends on the provider).
	Entra bool
	// ExpiresAt is the token's expiry; zero for keys that do not expire.
	ExpiresAt time.Time
}

// Source yields the current credential. Implementations are safe for
// concurrent use.
type Source interface {
	Credential(ctx context.Context) (Credential, error)
}

// None is the Source for upstreams that take no credential (a local
// OpenAI-compatible server such as Ollama).
type None struct{}

// Credential returns the empty credential.
func (None) Credential(context.Context) (Credential, error) { return Credential{}, nil }
