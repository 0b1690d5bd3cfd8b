// Package credbind is the router's credential broker for tools and chat
// channels: a credential kars holds for a sandbox is bound to the endpoints
// where it may be used (scheme, host, port, path prefix) and to the place
// in a request where it goes (a header, HTTP basic auth, the URL path, a
// query parameter). The agent holds only a placeholder; Inspect replaces a
// placeholder with the real value on a request to a bound endpoint, in the
// bound place, and refuses the request — a Finding — when a placeholder
// appears anywhere else: another host, port or path, another header, a
// query parameter of another name, the body (ScanReader).
//
// Paths are compared in one canonical form (CanonicalPath): a request
// whose path could be read two ways — dot segments in any spelling (also
// "..;x", the parameter form some servers strip, which is how a
// path-allowlist bypass with ";." sequences works), percent-encoded
// separators or dots, backslashes, empty segments — never gets a
// credential.
//
// The package is pure: no I/O. The secret values come from a function the
// router supplies (Binding.Value); nothing here logs, and a Finding never
// carries a secret.
package credbind

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"

	"github.com/kars-io/kars/internal/egress/dest"
)

// Marker is part of every placeholder. A request carrying it where no
// binding allows — also a placeholder of a binding that no longer exists —
// is refused.
const Marker = "kars_placeholder_"

// In is where a credential goes in a request.
type In string

// The placements.
const (
	// InHeader: the named header's value holds the placeholder (exactly
	// ValuePrefix+placeholder when ValuePrefix is set).
	InHeader In = "Header"
	// InBasicAuth: the user name or the password of an
	// "Authorization: Basic" header is the placeholder.
	InBasicAuth In = "BasicAuth"
	// InPath: the path continues the endpoint's path prefix with the
	// placeholder, followed by "/" or the end of the path (Telegram's
	// /bot<token>/method).
	InPath In = "Path"
	// InQuery: the named query parameter's value is the placeholder.
	InQuery In = "Query"
)

// Placement says where in a request the credential goes.
type Placement struct {
	In In
	// Name is the header (InHeader) or query parameter (InQuery).
	Name string
	// ValuePrefix, for InHeader, is what precedes the credential in the
	// header's value ("Bearer ", "token "); when set the value must be
	// exactly ValuePrefix followed by the placeholder.
	ValuePrefix string
}

// Endpoint is a URL prefix a credential may be sent to.
type Endpoint struct {
	Scheme string // "https" or "http"
	Host   string // canonical (dest.Host)
	Port   uint16
	// PathPrefix is canonical and starts with "/".
	PathPrefix string
}

// String is the endpoint as a URL prefix.
func (e Endpoint) String() string {
	h := e.Host
	if strings.IndexByte(h, ':') >= 0 {
		h = "[" + h + "]"
	}
	if (e.Scheme == "https" && e.Port != 443) || (e.Scheme == "http" && e.Port != 80) {
		h += ":" + strconv.Itoa(int(e.Port))
	}
	return e.Scheme + "://" + h + e.PathPrefix
}

// ParseEndpoint reads an endpoint URL prefix: "https://host[:port]/prefix".
// Only http and https, no user info, query or fragment, a canonical path.
// The host must be a name or address without wildcards: a credential goes
// to hosts named one by one.
func ParseEndpoint(raw string) (Endpoint, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %q: %v", raw, err)
	}
	var e Endpoint
	switch u.Scheme {
	case "https":
		e.Scheme, e.Port = "https", 443
	case "http":
		e.Scheme, e.Port = "http", 80
	default:
		return Endpoint{}, fmt.Errorf("endpoint %q: the scheme must be https or http", raw)
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Opaque != "" || strings.ContainsAny(raw, "#?") {
		return Endpoint{}, fmt.Errorf("endpoint %q: want scheme://host[:port]/path, without user info, query or fragment", raw)
	}
	hostname := u.Hostname()
	if strings.Contains(hostname, "*") {
		return Endpoint{}, fmt.Errorf("endpoint %q: wildcards are not allowed: bind a credential to hosts one by one", raw)
	}
	if hostname != "" && strings.IndexByte(hostname, ':') >= 0 {
		hostname = "[" + hostname + "]"
	}
	h, _, err := dest.Host(hostname)
	if err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %q: host: %v", raw, err)
	}
	e.Host = h
	if p := u.Port(); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 || p[0] == '0' {
			return Endpoint{}, fmt.Errorf("endpoint %q: bad port", raw)
		}
		e.Port = uint16(n)
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	cp, err := CanonicalPath(path)
	if err != nil || cp != path {
		return Endpoint{}, fmt.Errorf("endpoint %q: the path must be canonical (no dot segments, empty segments, percent-encoding or ';'): %v", raw, err)
	}
	if strings.IndexByte(path, ';') >= 0 {
		return Endpoint{}, fmt.Errorf("endpoint %q: the path may not contain ';'", raw)
	}
	e.PathPrefix = path
	return e, nil
}

// Binding is one credential and where it may be used.
type Binding struct {
	// Name identifies the binding in findings and audit entries.
	Name string
	// Placeholder is what the agent holds; it contains Marker.
	Placeholder string
	Endpoints   []Endpoint
	Placement   Placement
	// Value returns the credential. It is called only when a request is
	// about to be sent to a bound endpoint.
	Value func() ([]byte, error)
}

// Placeholder is the placeholder of a binding: the marker, the binding's
// name and a digest of the sandbox and binding, so that two sandboxes'
// placeholders differ. It is not a secret.
func Placeholder(namespace, sandbox, binding string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + sandbox + "/" + binding))
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, binding)
	return Marker + name + "_" + hex.EncodeToString(sum[:8])
}

// ValidValue reports whether v can be placed as a credential: 8 to 4,096
// visible ASCII bytes. Anything else — a newline above all, which would
// split a header — is refused, and the binding is unusable.
func ValidValue(v []byte, in In) error {
	if len(v) < 8 || len(v) > 4096 {
		return errors.New("a credential must be 8 to 4096 bytes long")
	}
	for _, c := range v {
		if c < 0x21 || c > 0x7e {
			return errors.New("a credential may hold only visible ASCII characters (no spaces, control characters or newlines)")
		}
		// In a path the value must need no escaping (RFC 3986 pchar).
		if in == InPath && !isPchar(c) {
			return errors.New("a credential placed in the URL path may hold only letters, digits and -._~!$&'()*+,=:@")
		}
	}
	return nil
}

func isPchar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~!$&'()*+,=:@", c) >= 0
}

// Validate checks a binding's shape.
func (b *Binding) Validate() error {
	if b.Name == "" {
		return errors.New("binding without a name")
	}
	if strings.Count(b.Placeholder, Marker) != 1 || len(b.Placeholder) > 256 {
		return fmt.Errorf("binding %s: the placeholder must contain %q once and be at most 256 bytes", b.Name, Marker)
	}
	for _, c := range []byte(b.Placeholder) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == ':') {
			return fmt.Errorf("binding %s: the placeholder may hold only letters, digits, '-', '_' and ':'", b.Name)
		}
	}
	if len(b.Endpoints) == 0 {
		return fmt.Errorf("binding %s: no endpoints", b.Name)
	}
	switch b.Placement.In {
	case InHeader:
		n := b.Placement.Name
		if n == "" || !validToken(n) {
			return fmt.Errorf("binding %s: header placement needs a valid header name", b.Name)
		}
		switch textproto.CanonicalMIMEHeaderKey(n) {
		case "Host", "Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "Te", "Trailer", "Proxy-Authorization", "Proxy-Connection":
			return fmt.Errorf("binding %s: a credential may not be placed in the %s header", b.Name, n)
		}
		for _, c := range []byte(b.Placement.ValuePrefix) {
			if c < 0x20 || c > 0x7e {
				return fmt.Errorf("binding %s: the header value prefix must be printable ASCII", b.Name)
			}
		}
	case InQuery:
		if b.Placement.Name == "" || url.QueryEscape(b.Placement.Name) != b.Placement.Name {
			return fmt.Errorf("binding %s: query placement needs a parameter name that needs no escaping", b.Name)
		}
	case InBasicAuth, InPath:
		if b.Placement.Name != "" || b.Placement.ValuePrefix != "" {
			return fmt.Errorf("binding %s: %s placement takes no name or value prefix", b.Name, b.Placement.In)
		}
	default:
		return fmt.Errorf("binding %s: placement %q is not Header, BasicAuth, Path or Query", b.Name, b.Placement.In)
	}
	return nil
}

// validToken reports whether s is an HTTP field name (RFC 9110 §5.1).
func validToken(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return s != ""
}

// hostPort keys the endpoints of a set.
type hostPort struct {
	host string
	port uint16
}

// Set is the bindings of one router configuration, compiled. The zero
// value and nil hold none.
type Set struct {
	bindings []*Binding
	byHost   map[hostPort][]*Binding
	// byPlaceholder finds a binding by its placeholder.
	byPlaceholder map[string]*Binding
}

// Compile validates bindings and indexes them. Placeholders must be
// unique.
func Compile(bindings []Binding) (*Set, error) {
	s := &Set{byHost: map[hostPort][]*Binding{}, byPlaceholder: map[string]*Binding{}}
	for i := range bindings {
		b := &bindings[i]
		if err := b.Validate(); err != nil {
			return nil, err
		}
		if _, dup := s.byPlaceholder[b.Placeholder]; dup {
			return nil, fmt.Errorf("binding %s: placeholder used twice", b.Name)
		}
		for _, o := range s.bindings {
			if strings.Contains(o.Placeholder, b.Placeholder) || strings.Contains(b.Placeholder, o.Placeholder) {
				return nil, fmt.Errorf("bindings %s and %s: one placeholder contains the other", o.Name, b.Name)
			}
		}
		s.byPlaceholder[b.Placeholder] = b
		s.bindings = append(s.bindings, b)
		seen := map[hostPort]bool{}
		for _, e := range b.Endpoints {
			k := hostPort{e.Host, e.Port}
			if !seen[k] {
				seen[k] = true
				s.byHost[k] = append(s.byHost[k], b)
			}
		}
	}
	return s, nil
}

// Bindings returns the compiled bindings, in configuration order.
func (s *Set) Bindings() []*Binding {
	if s == nil {
		return nil
	}
	return s.bindings
}

// Terminates reports whether the router terminates TLS for host:port:
// some binding has an https endpoint there. Only these hosts ever get a
// certificate from the sandbox's CA.
func (s *Set) Terminates(host string, port uint16) bool {
	if s == nil {
		return false
	}
	for _, b := range s.byHost[hostPort{host, port}] {
		for _, e := range b.Endpoints {
			if e.Scheme == "https" && e.Host == host && e.Port == port {
				return true
			}
		}
	}
	return false
}

// TLSHosts returns the host names the router terminates TLS for.
func (s *Set) TLSHosts() []string {
	if s == nil {
		return nil
	}
	var out []string
	seen := map[string]bool{}
	for _, b := range s.bindings {
		for _, e := range b.Endpoints {
			if e.Scheme == "https" && !seen[e.Host] {
				seen[e.Host] = true
				out = append(out, e.Host)
			}
		}
	}
	return out
}
