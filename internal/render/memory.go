package render

import (
	"path"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/routerconfig"
)

// RouterMemoryDir holds a KarsMemory's API key in the router container.
const RouterMemoryDir = "/var/run/secrets/kars/memory"

// memoryConfig compiles a sandbox's KarsMemory: the Foundry store, the
// scope and the sandbox's partition of it, retention and read-only, and
// the router's identity toward Foundry (workload identity unless the
// KarsMemory names another).
func memoryConfig(sb *karsv1.KarsSandbox, m *karsv1.KarsMemory) *routerconfig.Memory {
	if m == nil {
		return nil
	}
	scope := m.Spec.Scope
	if scope == "" {
		scope = routerconfig.MemoryScopeAgent
	}
	out := &routerconfig.Memory{Endpoint: m.Spec.Foundry.Endpoint, Store: m.Spec.Foundry.StoreName, Scope: scope,
		Partition: sb.Namespace + "/" + sb.Name, RetentionDays: m.Spec.RetentionDays, ReadOnly: m.Spec.ReadOnly,
		Auth: &routerconfig.Auth{Mode: routerconfig.AuthWorkloadIdentity, FederatedTokenFile: WorkloadIdentityTokenFile}}
	if a := m.Spec.Foundry.Auth; a != nil {
		ra := &routerconfig.Auth{Mode: routerconfig.AuthMode(a.Mode), ClientID: a.ClientID, TenantID: a.TenantID, Scope: a.Scope}
		switch a.Mode {
		case karsv1.AuthWorkloadIdentity:
			ra.FederatedTokenFile = WorkloadIdentityTokenFile
		case karsv1.AuthAPIKey:
			if a.SecretRef != nil {
				ra.KeyFile = path.Join(RouterMemoryDir, a.SecretRef.Name, a.SecretRef.Key)
			}
		}
		out.Auth = ra
	}
	return out
}

// memoryUsesWorkloadIdentity reports whether the router needs the
// projected ServiceAccount token for Foundry.
func memoryUsesWorkloadIdentity(m *karsv1.KarsMemory) bool {
	return m != nil && (m.Spec.Foundry.Auth == nil || m.Spec.Foundry.Auth.Mode == karsv1.AuthWorkloadIdentity)
}

// memorySecret is the Secret key of a KarsMemory's API key, if any.
func memorySecret(m *karsv1.KarsMemory) *karsv1.SecretKeyReference {
	if m == nil || m.Spec.Foundry.Auth == nil || m.Spec.Foundry.Auth.Mode != karsv1.AuthAPIKey {
		return nil
	}
	return m.Spec.Foundry.Auth.SecretRef
}
