package credential

import (
	"fmt"
	"net/http"

	"github.com/kars-io/kars/internal/routerconfig"
)

// New returns the Source that a target's auth section describes. Entra
// sources are wrapped in a Cache. client is used for token requests. root
// (routerconfig.EnvRoot) prefixes a federated token file taken from
// AZURE_FEDERATED_TOKEN_FILE; paths in auth are expected already resolved
// (routerconfig.Snapshot.Under).
func New(auth *routerconfig.Auth, client *http.Client, root string) (Source, error) {
	if auth == nil {
		return None{}, nil
	}
	scope := auth.Scope
	if scope == "" {
		scope = routerconfig.DefaultEntraScope
	}
	switch auth.Mode {
	case routerconfig.AuthNone, "":
		return None{}, nil
	case routerconfig.AuthAPIKey:
		return &KeyFile{Path: auth.KeyFile}, nil
	case routerconfig.AuthWorkloadIdentity:
		w, err := WorkloadIdentityFromEnv(WorkloadIdentity{
			AuthorityHost: auth.AuthorityHost, TenantID: auth.TenantID, ClientID: auth.ClientID,
			TokenFile: auth.FederatedTokenFile, Scope: scope, Client: client, Root: root,
		})
		if err != nil {
			return nil, err
		}
		return NewCache(w), nil
	case routerconfig.AuthManagedIdentity:
		return NewCache(&ManagedIdentity{Endpoint: auth.IMDSEndpoint, ClientID: auth.ClientID, Scope: scope, Client: client}), nil
	}
	return nil, fmt.Errorf("unknown auth mode %q", auth.Mode)
}
