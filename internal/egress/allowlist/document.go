package allowlist

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// DocumentMediaType is the artifact type of a published allowlist (the
// KarsSandbox allowlistRef's default artifactType) and the media type of
// its one layer.
const DocumentMediaType = "application/vnd.kars.egress-allowlist.v1+yaml"

// Document limits: an allowlist is a reviewed list of destinations, not a
// crawl; the bounds keep a hostile artifact from costing the controller
// or the router memory.
const (
	MaxDocumentBytes = 1 << 20
	MaxEntries       = 10000
)

// Document is the allowlist artifact's content:
//
//	apiVersion: kars.azure.com/v1alpha1
//	kind: EgressAllowlist
//	sandbox: kars-research-bot/research-bot
//	hosts:
//	- api.github.com:443
//	- "*.githubusercontent.com"
//
// Each host is an entry as ParseEntry reads it.
type Document struct {
	APIVersion string `json:"apiVersion" yaml:"apiVersion"`
	Kind       string `json:"kind" yaml:"kind"`
	// Sandbox the list was built for ("namespace/name"); informational.
	Sandbox string   `json:"sandbox,omitempty" yaml:"sandbox,omitempty"`
	Hosts   []string `json:"hosts" yaml:"hosts"`
}

// Document identity.
const (
	DocumentAPIVersion = "kars.azure.com/v1alpha1"
	DocumentKind       = "EgressAllowlist"
)

// Parse reads a document (YAML or JSON) strictly — unknown or repeated
// fields are errors — and returns its entries in canonical form.
func Parse(data []byte) (*Document, []Entry, error) {
	if len(data) > MaxDocumentBytes {
		return nil, nil, fmt.Errorf("allowlist: %d bytes, more than the %d allowed", len(data), MaxDocumentBytes)
	}
	var d Document
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true) // unknown fields are errors; yaml.v3 refuses repeated keys itself
	if err := dec.Decode(&d); err != nil {
		return nil, nil, fmt.Errorf("allowlist: %w", err)
	}
	var extra any
	if dec.Decode(&extra) != io.EOF {
		return nil, nil, fmt.Errorf("allowlist: more than one YAML document")
	}
	if d.APIVersion != DocumentAPIVersion || d.Kind != DocumentKind {
		return nil, nil, fmt.Errorf("allowlist: apiVersion %q kind %q, want %s %s", d.APIVersion, d.Kind, DocumentAPIVersion, DocumentKind)
	}
	if len(d.Hosts) > MaxEntries {
		return nil, nil, fmt.Errorf("allowlist: %d hosts, more than the %d allowed", len(d.Hosts), MaxEntries)
	}
	entries := make([]Entry, 0, len(d.Hosts))
	for i, h := range d.Hosts {
		e, err := ParseEntry(h)
		if err != nil {
			return nil, nil, fmt.Errorf("allowlist: hosts[%d]: %w", i, err)
		}
		entries = append(entries, e)
	}
	return &d, entries, nil
}

// NewDocument builds the document of entries for a sandbox, one host line
// per entry and port, sorted, without duplicates.
func NewDocument(sandbox string, entries []Entry) (*Document, error) {
	var hosts []string
	for _, e := range entries {
		c, err := e.Canonical()
		if err != nil {
			return nil, err
		}
		if len(c.Ports) == 0 {
			c.Ports = []uint16{DefaultPort}
		}
		for _, p := range c.Ports {
			hosts = append(hosts, joinHostPort(c.Host, p))
		}
	}
	slices.Sort(hosts)
	hosts = slices.Compact(hosts)
	if len(hosts) > MaxEntries {
		return nil, fmt.Errorf("allowlist: %d hosts, more than the %d allowed", len(hosts), MaxEntries)
	}
	return &Document{APIVersion: DocumentAPIVersion, Kind: DocumentKind, Sandbox: sandbox, Hosts: hosts}, nil
}

// Marshal renders the document as YAML, deterministically, so that the
// same list always has the same digest.
func (d *Document) Marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "apiVersion: %s\nkind: %s\n", d.APIVersion, d.Kind)
	if d.Sandbox != "" {
		fmt.Fprintf(&b, "sandbox: %s\n", yamlString(d.Sandbox))
	}
	if len(d.Hosts) == 0 {
		b.WriteString("hosts: []\n")
		return b.Bytes()
	}
	b.WriteString("hosts:\n")
	for _, h := range d.Hosts {
		fmt.Fprintf(&b, "- %s\n", yamlString(h))
	}
	return b.Bytes()
}

// yamlString quotes s when YAML would otherwise read it as something else
// ("*" starts an alias, ":" and "[" are syntax).
func yamlString(s string) string {
	if strings.ContainsAny(s, "*[]{}#&!|>'\"%@`,") || strings.HasPrefix(s, "-") {
		return `"` + s + `"`
	}
	return s
}
