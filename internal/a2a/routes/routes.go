// Package routes is the kars-a2a-gateway's routing table: one route per
// exposed sandbox, written by the controller into a ConfigMap in the
// system namespace and watched by the gateway. A sandbox is reachable
// through the gateway exactly while its route is in the table; the
// controller removes the route when the exposure is disabled, expires or
// the sandbox is deleted, and the gateway drops calls (in-flight streams
// included) within moments of the ConfigMap changing.
//
// The package is pure: the table's JSON form, its parser and lookups.
package routes

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ConfigMap layout.
const (
	// ConfigMapName is the table's ConfigMap in the system namespace.
	ConfigMapName = "kars-a2a-routes"
	// Key holds the table's JSON.
	Key = "routes.json"
)

// Table is the routing table.
type Table struct {
	// Routes, sorted by Sandbox.
	Routes []Route `json:"routes"`
}

// Route is one exposed sandbox.
type Route struct {
	// Sandbox is "<namespace>/<name>"; the public path is
	// /a2a/<namespace>/<name>.
	Sandbox string `json:"sandbox"`
	// Router is the router's A2A ingress, host:port.
	Router string `json:"router"`
	// ServerName is the name the router's certificate is checked against.
	ServerName string `json:"serverName"`
	// RouterCertPEM is the router's certificate, pinned: the gateway
	// trusts it and nothing else for this route.
	RouterCertPEM string `json:"routerCertPEM"`
	// Callers may call, by the thumbprint of their card-signing key.
	Callers []Caller `json:"callers"`
	// Skills are the advertised skills.
	Skills []string `json:"skills"`
	// MinimumTrustScore a caller needs.
	MinimumTrustScore int `json:"minimumTrustScore,omitempty"`
	// RateLimit per caller.
	RateLimit RateLimit `json:"rateLimit"`
	// BodyCapBytes caps request bodies.
	BodyCapBytes int64 `json:"bodyCapBytes"`
	// AllowStreaming permits the streaming methods.
	AllowStreaming bool `json:"allowStreaming,omitempty"`
	// ExpiresAt ends the route even if the controller has not removed it.
	ExpiresAt time.Time `json:"expiresAt"`
}

// Caller is an allowed caller.
type Caller struct {
	Thumbprint  string `json:"thumbprint"`
	DisplayName string `json:"displayName,omitempty"`
}

// RateLimit is per caller: RPM sustained, Burst at once.
type RateLimit struct {
	RPM   int `json:"rpm"`
	Burst int `json:"burst,omitempty"`
}

// Marshal returns the table's JSON with routes sorted, so that an
// unchanged table is an unchanged ConfigMap.
func Marshal(t *Table) ([]byte, error) {
	c := Table{Routes: slices.Clone(t.Routes)}
	slices.SortFunc(c.Routes, func(a, b Route) int { return strings.Compare(a.Sandbox, b.Sandbox) })
	if c.Routes == nil {
		c.Routes = []Route{}
	}
	return json.MarshalIndent(c, "", "  ")
}

// Parse reads a table, refusing unknown members and incomplete routes: a
// gateway that cannot read its table routes nothing.
func Parse(b []byte) (*Table, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var t Table
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("routes: %w", err)
	}
	seen := map[string]bool{}
	var errs []error
	for i, r := range t.Routes {
		switch {
		case r.Sandbox == "" || r.Router == "" || r.ServerName == "" || r.RouterCertPEM == "":
			errs = append(errs, fmt.Errorf("routes[%d]: sandbox, router, serverName and routerCertPEM are required", i))
		case seen[r.Sandbox]:
			errs = append(errs, fmt.Errorf("routes[%d]: sandbox %s appears twice", i, r.Sandbox))
		case len(r.Callers) == 0 || len(r.Skills) == 0 || r.BodyCapBytes <= 0 || r.RateLimit.RPM <= 0 || r.ExpiresAt.IsZero():
			errs = append(errs, fmt.Errorf("routes[%d] (%s): callers, skills, bodyCapBytes, rateLimit.rpm and expiresAt are required", i, r.Sandbox))
		}
		seen[r.Sandbox] = true
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &t, nil
}

// Lookup returns the route of sandbox ("<namespace>/<name>") if it is in
// the table and open at now.
func (t *Table) Lookup(sandbox string, now time.Time) (*Route, bool) {
	if t == nil {
		return nil, false
	}
	i, ok := slices.BinarySearchFunc(t.Routes, sandbox, func(r Route, s string) int { return strings.Compare(r.Sandbox, s) })
	if !ok {
		// Tables written by hand may be unsorted.
		i = slices.IndexFunc(t.Routes, func(r Route) bool { return r.Sandbox == sandbox })
		if i < 0 {
			return nil, false
		}
	}
	r := &t.Routes[i]
	if !now.Before(r.ExpiresAt) {
		return nil, false
	}
	return r, true
}

// Allows reports whether the caller with thumbprint may call the route.
func (r *Route) Allows(thumbprint string) bool {
	return slices.ContainsFunc(r.Callers, func(c Caller) bool { return c.Thumbprint == thumbprint })
}
