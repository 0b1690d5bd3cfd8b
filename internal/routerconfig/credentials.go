package routerconfig

import (
	"fmt"
	"path/filepath"

	"github.com/kars-io/kars/internal/egress/credbind"
)

// Credential is one credential binding (docs/credentials.md): the router
// replaces Placeholder with the content of ValueFile on requests to one of
// Endpoints, in Placement, and nowhere else; a placeholder anywhere else is
// refused and audited. The value is referenced by file, never inlined.
type Credential struct {
	// Name identifies the binding in findings and audit entries (the
	// CredentialBinding's name).
	Name string `json:"name"`
	// Placeholder is what the agent holds instead of the value.
	Placeholder string `json:"placeholder"`
	// ValueFile holds the credential, mounted readable by the router
	// only; re-read when it changes.
	ValueFile string `json:"valueFile"`
	// Endpoints are URL prefixes (https://host[:port]/path).
	Endpoints []string `json:"endpoints"`
	// Placement says where in a request the credential goes.
	Placement CredentialPlacement `json:"placement"`
}

// CredentialPlacement is credbind.Placement in the config's form.
type CredentialPlacement struct {
	// In is Header, BasicAuth, Path or Query.
	In string `json:"in"`
	// Name is the header or query parameter.
	Name string `json:"name,omitempty"`
	// ValuePrefix precedes the credential in a header's value ("Bearer ").
	ValuePrefix string `json:"valuePrefix,omitempty"`
}

// MaxCredentials bounds the credential bindings of one router.
const MaxCredentials = 32

// Bindings converts the credentials to credbind bindings, with value
// read by value(file).
func Bindings(creds []Credential, value func(file string) func() ([]byte, error)) ([]credbind.Binding, error) {
	out := make([]credbind.Binding, 0, len(creds))
	for i, c := range creds {
		b := credbind.Binding{Name: c.Name, Placeholder: c.Placeholder,
			Placement: credbind.Placement{In: credbind.In(c.Placement.In), Name: c.Placement.Name, ValuePrefix: c.Placement.ValuePrefix}}
		for j, raw := range c.Endpoints {
			e, err := credbind.ParseEndpoint(raw)
			if err != nil {
				return nil, fmt.Errorf("credentials[%d].endpoints[%d]: %v", i, j, err)
			}
			b.Endpoints = append(b.Endpoints, e)
		}
		if value != nil {
			b.Value = value(c.ValueFile)
		}
		out = append(out, b)
	}
	return out, nil
}

func validateCredentials(creds []Credential, bad func(field, format string, args ...any)) {
	if len(creds) > MaxCredentials {
		bad("credentials", "has %d entries, at most %d", len(creds), MaxCredentials)
	}
	names := map[string]bool{}
	for i, c := range creds {
		f := fmt.Sprintf("credentials[%d]", i)
		if names[c.Name] {
			bad(f+".name", "%q is used twice", c.Name)
		}
		names[c.Name] = true
		if c.ValueFile == "" || !filepath.IsAbs(c.ValueFile) {
			bad(f+".valueFile", "%q must be an absolute path: credentials are referenced by file, never inlined", c.ValueFile)
		}
	}
	bs, err := Bindings(creds, nil)
	if err != nil {
		bad("credentials", "%v", err)
		return
	}
	if _, err := credbind.Compile(bs); err != nil {
		bad("credentials", "%v", err)
	}
}

func underCredentials(root string, creds []Credential) []Credential {
	if len(creds) == 0 {
		return creds
	}
	out := make([]Credential, len(creds))
	for i, c := range creds {
		c.ValueFile = UnderRoot(root, c.ValueFile)
		out[i] = c
	}
	return out
}
