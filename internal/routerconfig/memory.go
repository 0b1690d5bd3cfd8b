package routerconfig

import (
	"net/url"
	"regexp"
)

// Memory binds the sandbox to a memory store in an Azure AI Foundry
// project (a KarsMemory). The router offers the agent a small memory API
// on its agent port and calls the store with its own identity; the
// partition of the store the agent reaches (its Foundry scope) is fixed
// by the router, never chosen by the agent.
type Memory struct {
	// Endpoint is the Foundry project endpoint.
	Endpoint string `json:"endpoint"`
	// Store is the memory store's name.
	Store string `json:"store"`
	// Scope partitions memories: "agent" (one partition for the
	// sandbox), "user" or "session" (one per principal the agent names,
	// inside the sandbox's).
	Scope string `json:"scope"`
	// Partition is the sandbox's prefix of every Foundry scope the router
	// uses: its namespace and name.
	Partition string `json:"partition"`
	// RetentionDays forgets memories older than that; 0 keeps them.
	RetentionDays int32 `json:"retentionDays,omitempty"`
	// ReadOnly lets the agent search but not write or delete.
	ReadOnly bool `json:"readOnly,omitempty"`
	// Auth is how the router authenticates to Foundry; nil means the
	// workload identity environment with the Foundry scope.
	Auth *Auth `json:"auth,omitempty"`
}

// Memory scopes.
const (
	MemoryScopeAgent   = "agent"
	MemoryScopeUser    = "user"
	MemoryScopeSession = "session"
)

var storeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$`)

func validateMemory(m *Memory, bad func(field, format string, args ...any)) {
	if m == nil {
		return
	}
	if u, err := url.Parse(m.Endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		bad("memory.endpoint", "%q is not an http(s) URL", m.Endpoint)
	}
	if !storeName.MatchString(m.Store) {
		bad("memory.store", "%q is not a memory store name", m.Store)
	}
	switch m.Scope {
	case MemoryScopeAgent, MemoryScopeUser, MemoryScopeSession:
	default:
		bad("memory.scope", "%q is not agent, user or session", m.Scope)
	}
	if m.Partition == "" {
		bad("memory.partition", "is required: it keeps sandboxes' memories apart")
	}
	if m.RetentionDays < 0 {
		bad("memory.retentionDays", "must not be negative")
	}
	if a := m.Auth; a != nil {
		switch a.Mode {
		case AuthWorkloadIdentity, AuthManagedIdentity:
		case AuthAPIKey:
			if a.KeyFile == "" {
				bad("memory.auth.keyFile", "is required for APIKey")
			}
		default:
			bad("memory.auth.mode", "%q is not WorkloadIdentity, ManagedIdentity or APIKey", a.Mode)
		}
	}
}
