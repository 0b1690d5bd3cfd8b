// Package client is the Go client of an AgentMesh registry and relay
// (Wire Protocol 1.0 §11–§13): registration with proof of possession,
// prekey upload, bundle fetch, and a relay connection that keeps frames
// flowing across reconnects. It moves frames; sessions (X3DH, the
// ratchet) are the caller's, through internal/mesh/session.
package client

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/mesh/x3dh"
)

// Client talks to one registry for one identity.
type Client struct {
	// Registry is the registry's base URL, e.g. http://127.0.0.1:18080.
	Registry string
	// Relay is the relay's WebSocket URL, e.g. ws://127.0.0.1:18765/ws.
	Relay string
	ID    *identity.Identity
	HTTP  *http.Client
	Now   func() time.Time
	// NoReceipts is for relays that confirm nothing, such as the
	// toolkit's: Send then returns once the frame is written, and a
	// frame lost in a disconnect is lost.
	NoReceipts bool
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// StatusError is a registry answer other than success.
type StatusError struct {
	Op     string
	Status int
	Detail string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("mesh registry: %s: %d %s", e.Op, e.Status, e.Detail)
}

func (c *Client) do(ctx context.Context, op, method, path string, body any, auth bool, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.Registry, "/")+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth {
		req.Header.Set("Authorization", wire.AuthHeader(c.ID, c.now()))
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return fmt.Errorf("mesh registry: %s: %w", op, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, wire.MaxFrameBytes))
	if err != nil {
		return fmt.Errorf("mesh registry: %s: %w", op, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Detail any `json:"detail"`
		}
		json.Unmarshal(raw, &e)
		return &StatusError{Op: op, Status: resp.StatusCode, Detail: fmt.Sprint(e.Detail)}
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("mesh registry: %s: decoding answer: %w", op, err)
		}
	}
	return nil
}

// Register registers the identity with proof of possession, in the
// toolkit's body form (which both its registry and ours accept). An
// agent already registered under this key is not an error.
func (c *Client) Register(ctx context.Context, capabilities []string, metadata map[string]string) (string, error) {
	pub := wire.B64(c.ID.PublicKey())
	// The toolkit's registry parses proof_timestamp with Python's
	// fromisoformat: RFC 3339 with a numeric offset, microseconds.
	ts := c.now().UTC().Format("2006-01-02T15:04:05.000000+00:00")
	body := map[string]any{
		"public_key": pub, "proof": wire.B64(c.ID.Sign([]byte(pub + ts))), "proof_timestamp": ts,
		"capabilities": nonNil(capabilities), "metadata": nonNilMap(metadata),
	}
	var out struct {
		DID string `json:"did"`
	}
	err := c.do(ctx, "register", http.MethodPost, "/v1/agents", body, false, &out)
	if se, ok := err.(*StatusError); ok && se.Status == http.StatusConflict {
		return c.ID.DID(), nil
	}
	if err != nil {
		return "", err
	}
	if out.DID != c.ID.DID() {
		return "", fmt.Errorf("mesh registry: registered as %q, want %q", out.DID, c.ID.DID())
	}
	return out.DID, nil
}

// UploadPrekeys publishes keys' current signed prekey and unused
// one-time prekeys, replacing what the registry held.
func (c *Client) UploadPrekeys(ctx context.Context, keys *x3dh.Keys) error {
	u := wire.UploadFor(keys)
	u.Timestamp = c.now().UTC().Format(time.RFC3339)
	return c.do(ctx, "upload prekeys", http.MethodPut, "/v1/agents/"+url.PathEscape(c.ID.DID())+"/prekeys", u, true, nil)
}

// FetchBundle fetches did's prekey bundle (consuming one of its
// one-time prekeys) and verifies it belongs to did.
func (c *Client) FetchBundle(ctx context.Context, did string) (x3dh.Bundle, error) {
	var raw json.RawMessage
	if err := c.do(ctx, "fetch bundle", http.MethodGet, "/v1/agents/"+url.PathEscape(did)+"/prekeys", nil, true, &raw); err != nil {
		return x3dh.Bundle{}, err
	}
	b, err := wire.ParseBundleResponse(raw)
	if err != nil {
		return b, err
	}
	if err := identity.CheckDID(did, b.IdentityKeyEd); err != nil {
		return b, fmt.Errorf("mesh registry: bundle for %s: %w", did, err)
	}
	return b, b.Verify()
}

// PublicKey asks the registry for did's Ed25519 key (kars registries
// return it; the toolkit's does not) and checks that did names it.
func (c *Client) PublicKey(ctx context.Context, did string) (ed25519.PublicKey, error) {
	var out struct {
		PublicKey string `json:"public_key"`
	}
	if err := c.do(ctx, "get agent", http.MethodGet, "/v1/agents/"+url.PathEscape(did), nil, false, &out); err != nil {
		return nil, err
	}
	k, err := wire.DecodeB64(out.PublicKey)
	if err != nil || len(k) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("mesh registry: %s has no usable public_key", did)
	}
	if err := identity.CheckDID(did, k); err != nil {
		return nil, err
	}
	return k, nil
}

// Deregister removes the identity from the registry.
func (c *Client) Deregister(ctx context.Context) error {
	return c.do(ctx, "deregister", http.MethodDelete, "/v1/agents/"+url.PathEscape(c.ID.DID()), nil, true, nil)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}
