// Package foundry is the client of Azure AI Foundry's memory store REST API
// that kars-router uses for a sandbox's KarsMemory. kars is not a memory
// backend: memories live in the Foundry project's store, and the router
// reaches it with its own Microsoft Entra identity.
//
// The wire format followed is the Memory Store API (preview) as Microsoft
// documents it in "Manage memory in Foundry Agent Service" with
// api-version 2025-11-15-preview — GET /memory_stores/{name},
// POST /memory_stores/{name}:search_memories and :delete_scope — together
// with the memory item operations of the same preview that the
// azure-ai-projects SDKs send with the header
// "foundry-features: MemoryStores=V1Preview": POST
// /memory_stores/{name}/items (create), GET and DELETE
// /memory_stores/{name}/items/{memory_id}, and POST
// /memory_stores/{name}/items:list. Items carry memory_id, updated_at
// (Unix seconds), scope, content and kind (user_profile, chat_summary).
//
// This package does I/O only through the http.Client it is given and must
// not log memory content or credentials.
package foundry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/kars-io/kars/internal/credential"
)

// APIVersion is the api-version query parameter sent.
const APIVersion = "2025-11-15-preview"

// FeatureHeader opts in to the preview's memory item operations.
const (
	FeatureHeader = "foundry-features"
	FeatureValue  = "MemoryStores=V1Preview"
)

// Scope is the Entra scope of tokens for Foundry project endpoints.
const Scope = "https://ai.azure.com/.default"

// Kinds of memory items.
const (
	KindUserProfile = "user_profile"
	KindChatSummary = "chat_summary"
)

// Item is a memory item as the store returns it.
type Item struct {
	ID        string `json:"memory_id"`
	UpdatedAt int64  `json:"updated_at"`
	Scope     string `json:"scope"`
	Content   string `json:"content"`
	Kind      string `json:"kind"`
}

// Client calls one memory store.
type Client struct {
	// Endpoint is the project endpoint,
	// https://<account>.services.ai.azure.com/api/projects/<project>.
	Endpoint string
	Store    string
	// Cred yields the bearer token (Entra) or API key.
	Cred credential.Source
	HTTP *http.Client
}

// Error is a failed call, with the store's error when it sent one.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("Foundry memory store answered %d %s: %s", e.Status, e.Code, e.Message)
}

// IsNotFound reports whether err is a 404 from the store.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

// IsAuth reports whether err is a 401 or 403 from the store: the router's
// identity is not allowed.
func IsAuth(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden)
}

func (c *Client) url(path string, q url.Values) string {
	if q == nil {
		q = url.Values{}
	}
	q.Set("api-version", APIVersion)
	return strings.TrimRight(c.Endpoint, "/") + "/memory_stores/" + url.PathEscape(c.Store) + path + "?" + q.Encode()
}

func (c *Client) do(ctx context.Context, method, u string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	cred, err := c.Cred.Credential(ctx)
	if err != nil {
		return fmt.Errorf("credential for the Foundry memory store: %w", err)
	}
	if cred.Entra {
		req.Header.Set("Authorization", "Bearer "+cred.Secret)
	} else if cred.Secret != "" {
		req.Header.Set("api-key", cred.Secret)
	}
	req.Header.Set(FeatureHeader, FeatureValue)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("the Foundry memory store: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("the Foundry memory store: read answer: %w", err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		_ = json.Unmarshal(raw, &e)
		return &Error{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("the Foundry memory store: decode answer: %w", err)
	}
	return nil
}

// Store is the memory store's description.
type Store struct {
	Object string `json:"object"`
	ID     string `json:"id"`
	Name   string `json:"name"`
}

// GetStore reads the store: a 404 means it does not exist.
func (c *Client) GetStore(ctx context.Context) (Store, error) {
	var s Store
	return s, c.do(ctx, http.MethodGet, c.url("", nil), nil, &s)
}

// Create stores content in scope as a user profile memory.
func (c *Client) Create(ctx context.Context, scope, content string) (Item, error) {
	var it Item
	err := c.do(ctx, http.MethodPost, c.url("/items", nil), map[string]string{"scope": scope, "content": content, "kind": KindUserProfile}, &it)
	return it, err
}

// Get reads one item.
func (c *Client) Get(ctx context.Context, id string) (Item, error) {
	var it Item
	return it, c.do(ctx, http.MethodGet, c.url("/items/"+url.PathEscape(id), nil), nil, &it)
}

// Delete removes one item.
func (c *Client) Delete(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, c.url("/items/"+url.PathEscape(id), nil), nil, nil)
}

// Search returns the memories of scope most relevant to query, at most
// max (search_memories with one user message as the context).
func (c *Client) Search(ctx context.Context, scope, query string, max int) ([]Item, error) {
	body := map[string]any{"scope": scope, "options": map[string]int{"max_memories": max}}
	if query != "" {
		body["items"] = []any{map[string]any{"type": "message", "role": "user",
			"content": []any{map[string]string{"type": "input_text", "text": query}}}}
	}
	var resp struct {
		SearchID string `json:"search_id"`
		Memories []struct {
			Item Item `json:"memory_item"`
		} `json:"memories"`
	}
	if err := c.do(ctx, http.MethodPost, c.url(":search_memories", nil), body, &resp); err != nil {
		return nil, err
	}
	out := make([]Item, 0, len(resp.Memories))
	for _, m := range resp.Memories {
		out = append(out, m.Item)
	}
	return out, nil
}

// List returns every item of scope, page by page (items:list).
func (c *Client) List(ctx context.Context, scope string) ([]Item, error) {
	var out []Item
	after := ""
	for page := 0; page < 1000; page++ {
		q := url.Values{"limit": {"100"}, "order": {"asc"}}
		if after != "" {
			q.Set("after", after)
		}
		var resp struct {
			Data    []Item `json:"data"`
			HasMore bool   `json:"has_more"`
			LastID  string `json:"last_id"`
		}
		if err := c.do(ctx, http.MethodPost, c.url("/items:list", q), map[string]string{"scope": scope}, &resp); err != nil {
			return nil, err
		}
		out = append(out, resp.Data...)
		if !resp.HasMore || resp.LastID == "" {
			return out, nil
		}
		after = resp.LastID
	}
	return out, errors.New("the Foundry memory store: too many pages")
}

// DeleteScope forgets every memory of scope.
func (c *Client) DeleteScope(ctx context.Context, scope string) error {
	return c.do(ctx, http.MethodPost, c.url(":delete_scope", nil), map[string]string{"scope": scope}, nil)
}
