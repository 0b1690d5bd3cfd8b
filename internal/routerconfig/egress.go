package routerconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/kars-io/kars/internal/egress/allowlist"
)

// Egress configures the agent's egress through the router: the forward
// proxy (on the agent port, and transparent behind the egress guard), the
// DNS stub, and the lists they decide by (docs/egress.md). Nil means
// Strict with empty lists — nothing but the model is reachable — and no
// transparent or DNS listener.
//
// What changes without the sandbox's policy changing — the verified
// allowlist, the active approvals, the blocklist's sources — lives in a
// second file beside router.json, EgressStateFile (EgressState), so that
// an approval or a blocklist refresh never changes the config digest the
// RouterEnforcing handshake compares. The fields of the same name here are
// for a router run without that file (tests, a hand-written config); the
// state file's, when present, take their place.
type Egress struct {
	// Mode is Strict (default) or Learn.
	Mode string `json:"mode,omitempty"`
	// AllowedHosts are spec.networkPolicy.allowedHosts, as allowlist
	// entries (host, "*." wildcard, optional ":port"; no port means 443).
	AllowedHosts []string `json:"allowedHosts,omitempty"`
	// Allowlist is the verified allowlist artifact, when the sandbox
	// references one.
	Allowlist *EgressAllowlist `json:"allowlist,omitempty"`
	// Approvals are the sandbox's active EgressApprovals. The router
	// enforces their expiry itself.
	Approvals []EgressApproval `json:"approvals,omitempty"`
	// Blocklist is where the blocklist comes from; nil means none.
	Blocklist *Blocklist `json:"blocklist,omitempty"`
	// TransparentListen is where the egress guard redirects the agent's
	// TCP connections (loopback; e.g. 127.0.0.1:15001). Empty: no
	// transparent proxy.
	TransparentListen string `json:"transparentListen,omitempty"`
	// DNSListen is where the egress guard redirects the agent's DNS, UDP
	// and TCP (loopback; e.g. 127.0.0.1:15053). Empty: no DNS stub.
	DNSListen string `json:"dnsListen,omitempty"`
	// Resolvers the router asks ("ip:port"); empty means those of
	// /etc/resolv.conf. Listen addresses and resolvers take effect on
	// restart.
	Resolvers []string `json:"resolvers,omitempty"`
}

// EgressAllowlist is a verified allowlist artifact's content.
type EgressAllowlist struct {
	// Ref is the artifact's reference, registry/repository@digest.
	Ref string `json:"ref"`
	// Digest is the artifact manifest's digest, as verified.
	Digest string `json:"digest"`
	// Hosts are the document's entries.
	Hosts []string `json:"hosts"`
}

// EgressApproval is one active EgressApproval.
type EgressApproval struct {
	// Name and UID identify the EgressApproval object; the router echoes
	// them on its admin API so the controller can confirm enforcement.
	Name      string    `json:"name"`
	UID       string    `json:"uid,omitempty"`
	Hosts     []string  `json:"hosts"`
	Ports     []int32   `json:"ports,omitempty"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// Blocklist configures the blocklist's sources.
type Blocklist struct {
	Sources []BlocklistSource `json:"sources"`
	// Refresh is how often the sources are fetched again (a Go duration);
	// empty means 6h.
	Refresh string `json:"refresh,omitempty"`
}

// BlocklistSource is exactly one of a file (a mounted ConfigMap key is a
// file), an HTTPS URL, or an OCI artifact reference.
type BlocklistSource struct {
	File string `json:"file,omitempty"`
	URL  string `json:"url,omitempty"`
	OCI  string `json:"oci,omitempty"`
	// Name labels a file source in status (e.g. "configmap:ns/name").
	Name string `json:"name,omitempty"`
}

// Egress modes.
const (
	EgressStrict = "Strict"
	EgressLearn  = "Learn"
)

// MaxEgressApprovals bounds the approvals one router enforces.
const MaxEgressApprovals = 64

// RefreshInterval returns the blocklist refresh interval, applying the
// default.
func (b *Blocklist) RefreshInterval() time.Duration {
	if b == nil || b.Refresh == "" {
		return 6 * time.Hour
	}
	d, _ := time.ParseDuration(b.Refresh)
	return d
}

func (e *Egress) validate(bad func(field, format string, args ...any)) {
	if e == nil {
		return
	}
	switch e.Mode {
	case "", EgressStrict, EgressLearn:
	default:
		bad("egress.mode", "%q is not Strict or Learn", e.Mode)
	}
	for i, h := range e.AllowedHosts {
		if _, err := allowlist.ParseEntry(h); err != nil {
			bad(fmt.Sprintf("egress.allowedHosts[%d]", i), "%v", err)
		}
	}
	if a := e.Allowlist; a != nil {
		if !strings.HasPrefix(a.Digest, "sha256:") || len(a.Digest) != len("sha256:")+64 {
			bad("egress.allowlist.digest", "%q is not a sha256 digest", a.Digest)
		}
		if len(a.Hosts) > allowlist.MaxEntries {
			bad("egress.allowlist.hosts", "has %d entries, at most %d", len(a.Hosts), allowlist.MaxEntries)
		}
		for i, h := range a.Hosts {
			if _, err := allowlist.ParseEntry(h); err != nil {
				bad(fmt.Sprintf("egress.allowlist.hosts[%d]", i), "%v", err)
			}
		}
	}
	if len(e.Approvals) > MaxEgressApprovals {
		bad("egress.approvals", "has %d entries, at most %d", len(e.Approvals), MaxEgressApprovals)
	}
	for i, a := range e.Approvals {
		f := fmt.Sprintf("egress.approvals[%d]", i)
		if a.Name == "" {
			bad(f+".name", "is required")
		}
		if a.ExpiresAt.IsZero() {
			bad(f+".expiresAt", "is required: approvals always expire")
		}
		if len(a.Hosts) == 0 {
			bad(f+".hosts", "is required")
		}
		for j, h := range a.Hosts {
			if _, err := allowlist.ParseEntry(h); err != nil {
				bad(fmt.Sprintf("%s.hosts[%d]", f, j), "%v", err)
			}
		}
		for j, p := range a.Ports {
			if p < 1 || p > 65535 {
				bad(fmt.Sprintf("%s.ports[%d]", f, j), "%d is not a port", p)
			}
		}
	}
	if b := e.Blocklist; b != nil {
		if b.Refresh != "" {
			if d, err := time.ParseDuration(b.Refresh); err != nil || d < time.Minute {
				bad("egress.blocklist.refresh", "%q must be a duration of at least 1m", b.Refresh)
			}
		}
		for i, s := range b.Sources {
			f := fmt.Sprintf("egress.blocklist.sources[%d]", i)
			n := 0
			for _, v := range []string{s.File, s.URL, s.OCI} {
				if v != "" {
					n++
				}
			}
			if n != 1 {
				bad(f, "set exactly one of file, url, oci")
			}
			if s.URL != "" && !strings.HasPrefix(s.URL, "https://") {
				bad(f+".url", "%q must be an https:// URL", s.URL)
			}
		}
	}
	for field, addr := range map[string]string{"egress.transparentListen": e.TransparentListen, "egress.dnsListen": e.DNSListen} {
		if addr == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || !ap.Addr().IsLoopback() || ap.Port() == 0 {
			bad(field, "%q must be a loopback ip:port", addr)
		}
	}
	for i, r := range e.Resolvers {
		if _, err := netip.ParseAddrPort(r); err != nil {
			bad(fmt.Sprintf("egress.resolvers[%d]", i), "%q is not ip:port", r)
		}
	}
}

// under resolves file sources under root (Snapshot.Under).
func (e *Egress) under(root string) *Egress {
	if e == nil || e.Blocklist == nil {
		return e
	}
	c := *e
	bl := *e.Blocklist
	bl.Sources = append([]BlocklistSource(nil), bl.Sources...)
	for i := range bl.Sources {
		bl.Sources[i].File = UnderRoot(root, bl.Sources[i].File)
	}
	c.Blocklist = &bl
	return &c
}

// EgressStateFile is the key of the router ConfigMap (and so the file
// beside router.json) holding the EgressState.
const EgressStateFile = "egress.json"

// EgressState is the egress configuration the controller keeps current
// apart from router.json: the verified allowlist, the active approvals and
// the blocklist's sources.
type EgressState struct {
	Allowlist *EgressAllowlist `json:"allowlist,omitempty"`
	Approvals []EgressApproval `json:"approvals,omitempty"`
	Blocklist *Blocklist       `json:"blocklist,omitempty"`
}

// Validate reports every problem with s.
func (s *EgressState) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	(&Egress{Allowlist: s.Allowlist, Approvals: s.Approvals, Blocklist: s.Blocklist}).validate(bad)
	return errors.Join(errs...)
}

// ParseEgressState reads and validates an egress state file's content.
func ParseEgressState(raw []byte) (*EgressState, error) {
	var s EgressState
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%s: %w", EgressStateFile, err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", EgressStateFile, err)
	}
	return &s, nil
}

// Under resolves the blocklist's file sources under root.
func (s *EgressState) Under(root string) *EgressState {
	if s == nil || root == "" {
		return s
	}
	c := *s
	if e := (&Egress{Blocklist: s.Blocklist}).under(root); e != nil {
		c.Blocklist = e.Blocklist
	}
	return &c
}
