// Package foundryfake is a local stand-in for an Azure AI Foundry project's
// memory store API, which cannot be reached from here. It speaks the wire
// format package foundry follows (api-version 2025-11-15-preview, the
// "foundry-features: MemoryStores=V1Preview" item operations): JSON
// bodies, snake_case fields, errors as {"error":{"code","message"}}, a
// bearer token required on every call. Search ranks a scope's items by the
// words they share with the query; the real service ranks by embeddings,
// which no test here depends on.
package foundryfake

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Server is a fake Foundry project with memory stores.
type Server struct {
	// Token is the bearer token (or api-key) every call must carry.
	Token string
	// Now is the clock for updated_at; nil means time.Now.
	Now func() time.Time

	mu     sync.Mutex
	stores map[string][]item // by store name, in creation order
	next   int
	srv    *httptest.Server
	// Calls counts requests by "<method> <operation>".
	calls map[string]int
}

type item struct {
	ID        string `json:"memory_id"`
	UpdatedAt int64  `json:"updated_at"`
	Scope     string `json:"scope"`
	Content   string `json:"content"`
	Kind      string `json:"kind"`
}

// New returns a fake with the named stores.
func New(token string, stores ...string) *Server {
	s := &Server{Token: token, stores: map[string][]item{}, calls: map[string]int{}}
	for _, n := range stores {
		s.stores[n] = nil
	}
	return s
}

// Start serves on loopback and returns the project endpoint.
func (s *Server) Start() string {
	s.srv = httptest.NewServer(s)
	return s.srv.URL + "/api/projects/kars-fake"
}

// Close stops serving.
func (s *Server) Close() { s.srv.Close() }

// Plant stores an item directly, as if written at t.
func (s *Server) Plant(store, scope, content string, t time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	id := "mem_" + strconv.Itoa(s.next)
	s.stores[store] = append(s.stores[store], item{ID: id, UpdatedAt: t.Unix(), Scope: scope, Content: content, Kind: "user_profile"})
	return id
}

// Items returns a store's items of scope (every scope when empty).
func (s *Server) Items(store, scope string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, it := range s.stores[store] {
		if scope == "" || it.Scope == scope {
			out = append(out, it.Scope+"|"+it.Content)
		}
	}
	return out
}

// Calls returns how often an operation was called.
func (s *Server) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func fail(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// ServeHTTP implements the memory store routes under
// /api/projects/<project>/memory_stores.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// A Microsoft Entra token, or the resource's key as Azure AI Services
	// accept it.
	if r.Header.Get("Authorization") != "Bearer "+s.Token && r.Header.Get("api-key") != s.Token {
		fail(w, http.StatusUnauthorized, "PermissionDenied", "Authentication failed: a valid bearer token for https://ai.azure.com is required")
		return
	}
	if v := r.URL.Query().Get("api-version"); v != "2025-11-15-preview" {
		fail(w, http.StatusBadRequest, "invalid_request_error", fmt.Sprintf("unsupported api-version %q", v))
		return
	}
	_, rest, ok := strings.Cut(r.URL.Path, "/memory_stores/")
	if !ok {
		fail(w, http.StatusNotFound, "not_found", "no such route")
		return
	}
	name, op := rest, ""
	if i := strings.IndexAny(rest, ":/"); i >= 0 {
		name, op = rest[:i], rest[i:]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[r.Method+" "+opName(op)]++
	items, exists := s.stores[name]
	if !exists {
		fail(w, http.StatusNotFound, "not_found", fmt.Sprintf("memory store %q not found", name))
		return
	}
	if strings.HasPrefix(op, "/items") && r.Header.Get("foundry-features") != "MemoryStores=V1Preview" {
		fail(w, http.StatusBadRequest, "preview_feature_required", "memory item operations need the foundry-features: MemoryStores=V1Preview header")
		return
	}
	var body map[string]any
	if r.Body != nil && (r.Method == http.MethodPost) {
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			fail(w, http.StatusBadRequest, "invalid_request_error", "the body is not JSON: "+err.Error())
			return
		}
	}
	str := func(k string) string { v, _ := body[k].(string); return v }
	switch {
	case op == "" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, map[string]any{"object": "memory_store", "id": "memstore_" + name, "name": name,
			"definition": map[string]any{"kind": "default", "chat_model": "gpt-4.1", "embedding_model": "text-embedding-3-small"}})
	case op == "/items" && r.Method == http.MethodPost:
		if str("scope") == "" || str("content") == "" {
			fail(w, http.StatusBadRequest, "invalid_request_error", "scope and content are required")
			return
		}
		s.next++
		it := item{ID: "mem_" + strconv.Itoa(s.next), UpdatedAt: s.now().Unix(), Scope: str("scope"), Content: str("content"), Kind: str("kind")}
		s.stores[name] = append(items, it)
		writeJSON(w, http.StatusOK, it)
	case strings.HasPrefix(op, "/items/") && (r.Method == http.MethodGet || r.Method == http.MethodDelete):
		id := strings.TrimPrefix(op, "/items/")
		for i, it := range items {
			if it.ID == id {
				if r.Method == http.MethodGet {
					writeJSON(w, http.StatusOK, it)
					return
				}
				s.stores[name] = append(items[:i:i], items[i+1:]...)
				writeJSON(w, http.StatusOK, map[string]any{"object": "memory_store.item.deleted", "memory_id": id, "deleted": true})
				return
			}
		}
		fail(w, http.StatusNotFound, "not_found", fmt.Sprintf("memory item %q not found", id))
	case op == "/items:list" && r.Method == http.MethodPost:
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		if limit <= 0 || limit > 100 {
			limit = 20
		}
		after := r.URL.Query().Get("after")
		var page []item
		started := after == ""
		more := false
		for _, it := range items {
			if it.Scope != str("scope") {
				continue
			}
			if !started {
				started = it.ID == after
				continue
			}
			if len(page) == limit {
				more = true
				break
			}
			page = append(page, it)
		}
		resp := map[string]any{"object": "list", "data": page, "has_more": more}
		if len(page) > 0 {
			resp["first_id"], resp["last_id"] = page[0].ID, page[len(page)-1].ID
		}
		writeJSON(w, http.StatusOK, resp)
	case op == ":search_memories" && r.Method == http.MethodPost:
		max := 10
		if o, ok := body["options"].(map[string]any); ok {
			if m, ok := o["max_memories"].(float64); ok && m > 0 {
				max = int(m)
			}
		}
		query := queryText(body["items"])
		type scored struct {
			it    item
			score int
		}
		var hits []scored
		for _, it := range items {
			if it.Scope != str("scope") {
				continue
			}
			sc := overlap(query, it.Content)
			if query == "" {
				sc = 1 // static memories: the scope's profile
			}
			if sc > 0 {
				hits = append(hits, scored{it, sc})
			}
		}
		sort.SliceStable(hits, func(i, j int) bool { return hits[i].score > hits[j].score })
		mems := []any{}
		for i, h := range hits {
			if i == max {
				break
			}
			mems = append(mems, map[string]any{"memory_item": h.it})
		}
		writeJSON(w, http.StatusOK, map[string]any{"search_id": fmt.Sprintf("search_%d", s.next), "memories": mems,
			"usage": map[string]int{"embedding_tokens": len(strings.Fields(query)), "input_tokens": 0, "output_tokens": 0}})
	case op == ":delete_scope" && r.Method == http.MethodPost:
		kept := items[:0:0]
		for _, it := range items {
			if it.Scope != str("scope") {
				kept = append(kept, it)
			}
		}
		s.stores[name] = kept
		writeJSON(w, http.StatusOK, map[string]any{"object": "memory_store.scope.deleted", "name": name, "scope": str("scope"), "deleted": true})
	default:
		fail(w, http.StatusNotFound, "not_found", "no such operation "+r.Method+" "+op)
	}
}

func opName(op string) string {
	if strings.HasPrefix(op, "/items/") {
		return "/items/{id}"
	}
	return op
}

// queryText joins the text of the search items (messages with
// input_text parts, or a plain string content).
func queryText(items any) string {
	list, _ := items.([]any)
	var b strings.Builder
	for _, raw := range list {
		m, _ := raw.(map[string]any)
		switch c := m["content"].(type) {
		case string:
			b.WriteString(c + " ")
		case []any:
			for _, p := range c {
				if pm, ok := p.(map[string]any); ok {
					if t, ok := pm["text"].(string); ok {
						b.WriteString(t + " ")
					}
				}
			}
		}
	}
	return strings.TrimSpace(b.String())
}

// overlap counts the query's words (three letters or more) found in
// content, case-insensitively.
func overlap(query, content string) int {
	c := strings.ToLower(content)
	n := 0
	for _, w := range strings.Fields(strings.ToLower(query)) {
		w = strings.Trim(w, ".,;:!?\"'()")
		if len(w) >= 3 && strings.Contains(c, w) {
			n++
		}
	}
	return n
}
