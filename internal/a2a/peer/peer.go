// Package peer fetches and verifies the AgentCard of a foreign A2A agent
// that a sandbox may call (an A2AAgent): the card at its https URL must be
// signed (detached JWS over the RFC 8785 canonical card) by the key the
// registration pins, and must name a JSON-RPC endpoint for the protocol
// version the registration asks for.
//
// Fetching a URL a tenant wrote is a request the controller makes on the
// tenant's behalf, from inside the cluster: the Fetcher speaks https only,
// follows no redirect, reads at most card.MaxCardBytes, and (unless told
// otherwise, for tests and `kars dev`) refuses to connect to loopback,
// private, link-local and other non-public addresses, so that a
// registration cannot make the controller probe the cluster's network.
package peer

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/kars-io/kars/internal/a2a/card"
)

// Fetcher gets cards and key sets over https.
type Fetcher struct {
	// AllowPrivate lets it connect to non-public addresses (tests, `kars
	// dev`).
	AllowPrivate bool
	// RootCAs, when set, replaces the system roots (tests).
	RootCAs *x509.CertPool
	// Timeout bounds one fetch; zero means 10 s.
	Timeout time.Duration
}

// ErrNotPublic: the URL's host resolves to an address the Fetcher does not
// connect to.
var ErrNotPublic = errors.New("the address is not public (loopback, private, link-local or reserved)")

func (f *Fetcher) client() *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if !f.AllowPrivate {
		// Checked on the address actually dialled, after resolution, so
		// that a name resolving to an internal address is refused too.
		d.Control = func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return err
			}
			a := ap.Addr().Unmap()
			if !a.IsGlobalUnicast() || a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast() {
				return fmt.Errorf("%s: %w", a, ErrNotPublic)
			}
			return nil
		}
	}
	timeout := f.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{Proxy: nil, DialContext: d.DialContext, ForceAttemptHTTP2: true,
			TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: f.RootCAs}},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("the card URL redirects; register the final URL")
		},
	}
}

// get fetches an https URL, at most card.MaxCardBytes.
func (f *Fetcher) get(ctx context.Context, raw string) ([]byte, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("%q is not an https:// URL", raw)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := f.client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s answered %d", u.Redacted(), resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, card.MaxCardBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > card.MaxCardBytes {
		return nil, fmt.Errorf("GET %s: larger than %d bytes", u.Redacted(), card.MaxCardBytes)
	}
	return b, nil
}

// Verified is what a verified card tells the router.
type Verified struct {
	Name string
	// Endpoint is the JSON-RPC URL for the asked protocol version.
	Endpoint string
	// Skills are the card's skill ids.
	Skills []string
	// CardDigest is "sha256:<hex>" of the canonical card.
	CardDigest string
}

// Fetch gets the card at cardURL and verifies it: a signature by the key
// pinned by thumbprint (the key from the signature's protected jwk, or
// from its jku key set by kid), and a JSON-RPC endpoint for version ("1.0"
// or "0.3").
func (f *Fetcher) Fetch(ctx context.Context, cardURL, thumbprint, version string) (*Verified, error) {
	raw, err := f.get(ctx, cardURL)
	if err != nil {
		return nil, err
	}
	resolve := func(h card.Header) (crypto.PublicKey, error) {
		if h.JWK != nil {
			return h.JWK.PublicKey()
		}
		if h.Jku == "" {
			return nil, errors.New(`the signature names no key (no "jwk" and no "jku")`)
		}
		b, err := f.get(ctx, h.Jku)
		if err != nil {
			return nil, fmt.Errorf("key set %s: %w", h.Jku, err)
		}
		var set card.JWKS
		if err := json.Unmarshal(b, &set); err != nil {
			return nil, fmt.Errorf("key set %s: %w", h.Jku, err)
		}
		for _, k := range set.Keys {
			if k.Kid == h.Kid {
				return k.PublicKey()
			}
		}
		return nil, fmt.Errorf("key set %s has no key %q", h.Jku, h.Kid)
	}
	v, err := card.VerifyCard(raw, resolve)
	if err != nil {
		return nil, err
	}
	if v.Thumbprint != thumbprint {
		return nil, fmt.Errorf("the card is signed by %s, not by the pinned %s", v.Thumbprint, thumbprint)
	}
	out, err := describe(raw, version)
	if err != nil {
		return nil, err
	}
	out.Name = v.Name
	return out, nil
}

// describe reads what kars needs from a verified card: its digest (over
// the RFC 8785 form), its skills, and the JSON-RPC endpoint for version —
// a 1.0 card's supportedInterfaces entry, else a 0.3 card's url — which
// must be https.
func describe(raw []byte, version string) (*Verified, error) {
	out := &Verified{}
	canon, err := card.Canonical(raw)
	if err != nil {
		return nil, fmt.Errorf("card: %w", err)
	}
	sum := sha256.Sum256(canon)
	out.CardDigest = "sha256:" + hex.EncodeToString(sum[:])
	var c struct {
		URL                 string `json:"url"`
		PreferredTransport  string `json:"preferredTransport"`
		ProtocolVersion     string `json:"protocolVersion"`
		SupportedInterfaces []struct {
			URL             string `json:"url"`
			ProtocolBinding string `json:"protocolBinding"`
			ProtocolVersion string `json:"protocolVersion"`
		} `json:"supportedInterfaces"`
		Skills []struct {
			ID string `json:"id"`
		} `json:"skills"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("card: %w", err)
	}
	for _, s := range c.Skills {
		out.Skills = append(out.Skills, s.ID)
	}
	for _, i := range c.SupportedInterfaces {
		if i.ProtocolBinding == "JSONRPC" && sameMinor(i.ProtocolVersion, version) {
			out.Endpoint = i.URL
			break
		}
	}
	if out.Endpoint == "" && c.URL != "" && (c.PreferredTransport == "" || c.PreferredTransport == "JSONRPC") &&
		sameMinor(orDefault(c.ProtocolVersion, "0.3"), version) {
		out.Endpoint = c.URL
	}
	if u, err := url.Parse(out.Endpoint); out.Endpoint == "" || err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("the card names no https JSON-RPC endpoint for A2A %s", version)
	}
	return out, nil
}

func sameMinor(have, want string) bool {
	h := strings.SplitN(have, ".", 3)
	w := strings.SplitN(want, ".", 3)
	return len(h) >= 2 && len(w) >= 2 && h[0] == w[0] && h[1] == w[1]
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
