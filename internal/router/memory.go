package router

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/credential"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/inference"
	"github.com/kars-io/kars/internal/memory/foundry"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/strictjson"
)

// The memory API (KarsMemory) on the agent port:
//
//	GET    /kars/v1/memory                  the binding: store, scope, readOnly, retentionDays (404 without one)
//	POST   /kars/v1/memory/memories         {"content","principal"?} → {"id","content","updatedAt"}   memory:write
//	POST   /kars/v1/memory/search           {"query","principal"?,"limit"?} → {"memories":[…]}       memory:search
//	DELETE /kars/v1/memory/memories/{id}?principal=                                                  memory:delete
//
// The router calls the Foundry memory store with its own identity and
// fixes the partition: every Foundry scope it uses starts with the
// sandbox's (kars/<namespace>/<name>), followed for user and session
// scopes by the principal the agent names — so the agent chooses among
// its own users' memories, never another sandbox's. Each call is decided
// as memory:<op> and its audit entry is durable before the store is
// called; read-only bindings refuse writes and deletes; memories older
// than the retention are never returned and are deleted when met.

// MemoryPath is the memory API's root on the agent port.
const MemoryPath = "/kars/v1/memory"

// Memory API bounds.
const (
	maxMemoryBody    = 64 << 10
	maxMemoryContent = 16 << 10
	maxMemoryResults = 50
)

var principalPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// memoryBinding is a generation's KarsMemory.
type memoryBinding struct {
	cfg    routerconfig.Memory
	client *foundry.Client
}

// newMemoryBinding builds the store client, with the Foundry scope for
// Entra tokens unless the config names another.
func (r *Router) newMemoryBinding(m *routerconfig.Memory) (*memoryBinding, error) {
	if m == nil {
		return nil, nil
	}
	auth := routerconfig.Auth{Mode: routerconfig.AuthWorkloadIdentity}
	if m.Auth != nil {
		auth = *m.Auth
	}
	if auth.Scope == "" && auth.Mode != routerconfig.AuthAPIKey {
		auth.Scope = foundry.Scope
	}
	key, _ := json.Marshal(struct {
		Memory bool
		A      routerconfig.Auth
	}{true, auth})
	r.mu.Lock()
	cred, ok := r.creds[string(key)]
	r.mu.Unlock()
	if !ok {
		var err error
		if cred, err = credential.New(&auth, r.tokenClient, r.opts.Root); err != nil {
			return nil, fmt.Errorf("memory: %w", err)
		}
		r.mu.Lock()
		r.creds[string(key)] = cred
		r.mu.Unlock()
	}
	return &memoryBinding{cfg: *m, client: &foundry.Client{Endpoint: m.Endpoint, Store: m.Store, Cred: cred, HTTP: r.upstreamClient}}, nil
}

// scope is the Foundry scope for principal, or an error a person can act
// on when the principal does not fit the binding.
func (b *memoryBinding) scope(principal string) (string, error) {
	base := "kars/" + b.cfg.Partition
	switch b.cfg.Scope {
	case routerconfig.MemoryScopeAgent:
		if principal != "" {
			return "", errors.New(`this sandbox's memory is scoped to the agent: send no "principal"`)
		}
		return base, nil
	default:
		if !principalPattern.MatchString(principal) {
			return "", fmt.Errorf(`this sandbox's memory is scoped per %s: "principal" (1-128 letters, digits, '.', '_' or '-') is required`, b.cfg.Scope)
		}
		return base + "/" + b.cfg.Scope + "/" + principal, nil
	}
}

// expired reports whether an item is past the retention.
func (b *memoryBinding) expired(it foundry.Item, now time.Time) bool {
	return b.cfg.RetentionDays > 0 && it.UpdatedAt > 0 &&
		now.Sub(time.Unix(it.UpdatedAt, 0)) > time.Duration(b.cfg.RetentionDays)*24*time.Hour
}

type memoryView struct {
	ID        string    `json:"id"`
	Content   string    `json:"content"`
	UpdatedAt time.Time `json:"updatedAt"`
}

func viewOf(it foundry.Item) memoryView {
	return memoryView{ID: it.ID, Content: it.Content, UpdatedAt: time.Unix(it.UpdatedAt, 0).UTC()}
}

// serveMemory routes the memory API.
func (r *Router) serveMemory(w http.ResponseWriter, req *http.Request) {
	done, ok := r.admit(w, inference.DialectOpenAI)
	if !ok {
		return
	}
	defer done()
	start := time.Now()
	g := r.gen.Load()
	b := g.memory
	if b == nil {
		memoryError(w, http.StatusNotFound, "kars_no_memory", "this sandbox has no KarsMemory: bind a Foundry memory store to it to use the memory API")
		return
	}
	rest := strings.TrimPrefix(req.URL.Path, MemoryPath)
	switch {
	case rest == "" && req.Method == http.MethodGet:
		writeJSONCompact(w, http.StatusOK, map[string]any{"store": b.cfg.Store, "scope": b.cfg.Scope, "readOnly": b.cfg.ReadOnly, "retentionDays": b.cfg.RetentionDays})
	case rest == "/memories" && req.Method == http.MethodPost:
		r.memoryWrite(w, req, g, b, start)
	case rest == "/search" && req.Method == http.MethodPost:
		r.memorySearch(w, req, g, b, start)
	case strings.HasPrefix(rest, "/memories/") && req.Method == http.MethodDelete:
		r.memoryDelete(w, req, g, b, strings.TrimPrefix(rest, "/memories/"), start)
	default:
		memoryError(w, http.StatusNotFound, "kars_unknown_endpoint", "the memory API serves GET "+MemoryPath+", POST "+MemoryPath+"/memories, POST "+MemoryPath+"/search and DELETE "+MemoryPath+"/memories/{id}")
	}
}

// readMemoryBody reads a strict JSON object into v.
func readMemoryBody(w http.ResponseWriter, req *http.Request, v any) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxMemoryBody))
	if err != nil {
		return nil, fmt.Errorf("could not read the body (at most %d bytes): %w", maxMemoryBody, err)
	}
	if err := strictjson.Validate(body); err != nil {
		return body, fmt.Errorf("the body must be a JSON object in strict JSON: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return body, fmt.Errorf("the body does not fit the memory API: %w", err)
	}
	return body, nil
}

// decideMemory decides op for the agent and writes the audit entry,
// durably, before anything reaches the store. It answers the agent itself
// when the call must not proceed, and returns false then.
func (r *Router) decideMemory(w http.ResponseWriter, req *http.Request, g *generation, b *memoryBinding, op string, body []byte, refusal *governance.Decision, start time.Time) bool {
	action := "memory:" + op
	rec := audit.Record{Sandbox: g.sandbox, Agent: g.agent, Action: action, Attrs: map[string]string{"op": "memory", "store": b.cfg.Store}}
	if len(body) > 0 {
		rec.PayloadSHA256 = payloadHash(body)
	}
	if r.auditFailing.Load() {
		rec.Decision, rec.Reason, rec.Latency = "refused", "kars-router cannot write its audit log", time.Since(start)
		r.appendAudit(req.Context(), rec)
		memoryError(w, http.StatusServiceUnavailable, "kars_audit_unavailable", "kars-router cannot write its audit log, so it decides nothing until it can")
		return false
	}
	var d governance.Decision
	if refusal != nil {
		d = *refusal
		g.monitor.ObserveDecision(g.agent, d)
	} else {
		d = g.gov.Decide(&governance.Request{Agent: g.agent, Action: action})
	}
	verdict := d.Verdict.String()
	r.metrics.decisions.WithLabelValues(verdict).Inc()
	rec.Decision, rec.Rule, rec.Reason, rec.Latency = verdict, d.Rule, d.Reason, time.Since(start)
	if err := r.appendAudit(req.Context(), rec); err != nil {
		memoryError(w, http.StatusServiceUnavailable, "kars_audit_unavailable", "kars-router could not write the call to its audit log: "+err.Error())
		return false
	}
	if !d.Allowed() {
		status, code := http.StatusForbidden, "kars_policy_denied"
		switch {
		case d.Rule == ruleMemoryReadOnly:
			code = "kars_memory_read_only"
		case d.Rule == ruleMemoryRequest:
			status, code = http.StatusBadRequest, "kars_bad_request"
		case d.Verdict == governance.RateLimited:
			status, code = http.StatusTooManyRequests, "kars_policy_rate_limited"
		case d.Verdict == governance.RequireApproval:
			code = "kars_policy_requires_approval"
		}
		memoryError(w, status, code, fmt.Sprintf("%s is %s (rule %s): %s", action, verdict, ruleName(d), d.Reason))
		r.memoryObserved(req, action, verdict, status, start)
		return false
	}
	return true
}

// Pseudo-rules of memory calls refused before policy.
const (
	ruleMemoryReadOnly = "memory-read-only"
	ruleMemoryRequest  = "memory-request"
)

func (r *Router) memoryWrite(w http.ResponseWriter, req *http.Request, g *generation, b *memoryBinding, start time.Time) {
	var in struct {
		Content   string `json:"content"`
		Principal string `json:"principal"`
	}
	body, err := readMemoryBody(w, req, &in)
	var refusal *governance.Decision
	scope, serr := b.scope(in.Principal)
	switch {
	case err != nil:
		refusal = &governance.Decision{Rule: ruleMemoryRequest, Reason: err.Error()}
	case in.Content == "" || len(in.Content) > maxMemoryContent:
		refusal = &governance.Decision{Rule: ruleMemoryRequest, Reason: fmt.Sprintf(`"content" must hold 1 to %d bytes`, maxMemoryContent)}
	case serr != nil:
		refusal = &governance.Decision{Rule: ruleMemoryRequest, Reason: serr.Error()}
	case b.cfg.ReadOnly:
		refusal = &governance.Decision{Rule: ruleMemoryReadOnly, Reason: "the KarsMemory is read-only: the agent may recall, not store"}
	}
	if !r.decideMemory(w, req, g, b, "write", body, refusal, start) {
		return
	}
	it, err := b.client.Create(req.Context(), scope, in.Content)
	if err != nil {
		r.memoryUpstreamError(w, req, "memory:write", err, start)
		return
	}
	if b.cfg.Scope != routerconfig.MemoryScopeAgent {
		r.notePrincipal(g, scope)
	}
	writeJSONCompact(w, http.StatusOK, viewOf(it))
	r.memoryObserved(req, "memory:write", "allow", http.StatusOK, start)
}

func (r *Router) memorySearch(w http.ResponseWriter, req *http.Request, g *generation, b *memoryBinding, start time.Time) {
	var in struct {
		Query     string `json:"query"`
		Principal string `json:"principal"`
		Limit     int    `json:"limit"`
	}
	body, err := readMemoryBody(w, req, &in)
	var refusal *governance.Decision
	scope, serr := b.scope(in.Principal)
	switch {
	case err != nil:
		refusal = &governance.Decision{Rule: ruleMemoryRequest, Reason: err.Error()}
	case len(in.Query) > maxMemoryContent || in.Limit < 0:
		refusal = &governance.Decision{Rule: ruleMemoryRequest, Reason: fmt.Sprintf(`"query" holds at most %d bytes and "limit" is not negative`, maxMemoryContent)}
	case serr != nil:
		refusal = &governance.Decision{Rule: ruleMemoryRequest, Reason: serr.Error()}
	}
	if !r.decideMemory(w, req, g, b, "search", body, refusal, start) {
		return
	}
	limit := in.Limit
	if limit == 0 || limit > maxMemoryResults {
		limit = 10
	}
	items, err := b.client.Search(req.Context(), scope, in.Query, limit)
	if err != nil {
		r.memoryUpstreamError(w, req, "memory:search", err, start)
		return
	}
	now := time.Now()
	out := []memoryView{}
	var expired []string
	for _, it := range items {
		if it.Scope != scope {
			continue // never another partition's, whatever the store returns
		}
		if b.expired(it, now) {
			expired = append(expired, it.ID)
			continue
		}
		out = append(out, viewOf(it))
	}
	if len(expired) > 0 && !b.cfg.ReadOnly {
		r.forgetExpired(b, expired)
	}
	writeJSONCompact(w, http.StatusOK, map[string]any{"memories": out})
	r.memoryObserved(req, "memory:search", "allow", http.StatusOK, start)
}

func (r *Router) memoryDelete(w http.ResponseWriter, req *http.Request, g *generation, b *memoryBinding, id string, start time.Time) {
	principal := req.URL.Query().Get("principal")
	scope, serr := b.scope(principal)
	var refusal *governance.Decision
	switch {
	case !principalPattern.MatchString(id):
		refusal = &governance.Decision{Rule: ruleMemoryRequest, Reason: "the memory id is malformed"}
	case serr != nil:
		refusal = &governance.Decision{Rule: ruleMemoryRequest, Reason: serr.Error()}
	case b.cfg.ReadOnly:
		refusal = &governance.Decision{Rule: ruleMemoryReadOnly, Reason: "the KarsMemory is read-only: the agent may recall, not delete"}
	}
	if !r.decideMemory(w, req, g, b, "delete", []byte(id), refusal, start) {
		return
	}
	// The store deletes by id alone: the router checks that the item is
	// in the caller's partition first, and answers "not found" otherwise.
	it, err := b.client.Get(req.Context(), id)
	if err == nil && it.Scope != scope {
		err = &foundry.Error{Status: http.StatusNotFound, Code: "not_found", Message: "no such memory"}
	}
	if err == nil {
		err = b.client.Delete(req.Context(), id)
	}
	if err != nil {
		r.memoryUpstreamError(w, req, "memory:delete", err, start)
		return
	}
	writeJSONCompact(w, http.StatusOK, map[string]any{"id": id, "deleted": true})
	r.memoryObserved(req, "memory:delete", "allow", http.StatusOK, start)
}

// forgetExpired deletes memories past the retention, after the answer.
func (r *Router) forgetExpired(b *memoryBinding, ids []string) {
	r.pending.Add(1)
	go func() {
		defer r.pending.Done()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, id := range ids {
			if err := b.client.Delete(ctx, id); err != nil && !foundry.IsNotFound(err) {
				r.log.Warn("could not delete an expired memory", "store", b.cfg.Store, "err", err)
			}
		}
	}()
}

func (r *Router) memoryUpstreamError(w http.ResponseWriter, req *http.Request, action string, err error, start time.Time) {
	status, code := http.StatusBadGateway, "kars_memory_unavailable"
	switch {
	case foundry.IsNotFound(err):
		status, code = http.StatusNotFound, "kars_memory_not_found"
	case foundry.IsAuth(err):
		code = "kars_memory_auth"
	}
	memoryError(w, status, code, "the Foundry memory store: "+err.Error())
	r.memoryObserved(req, action, "allow", status, start)
}

func (r *Router) memoryObserved(req *http.Request, action, verdict string, status int, start time.Time) {
	lat := time.Since(start)
	r.metrics.requests.WithLabelValues("memory", "", strconv.Itoa(status), verdict).Inc()
	r.metrics.duration.WithLabelValues("memory").Observe(lat.Seconds())
	r.log.LogAttrs(req.Context(), slog.LevelInfo, "memory", slog.String("action", action), slog.String("decision", verdict),
		slog.Int("status", status), slog.Duration("latency", lat))
}

func memoryError(w http.ResponseWriter, status int, code, msg string) {
	typ := "invalid_request_error"
	if status >= 500 {
		typ = "server_error"
	}
	(&inference.APIError{Status: status, Type: typ, Code: code, Message: msg}).Write(w, inference.DialectOpenAI)
}

func writeJSONCompact(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// MemoryPrincipalsFile in the state directory lists the per-principal
// scopes the router wrote to, so that deleting the sandbox's memories
// (deleteOnSandboxDelete) can reach them: the store cannot list scopes.
const MemoryPrincipalsFile = "memory-scopes.json"

var principalsMu sync.Mutex

// notePrincipal records a per-principal scope the router wrote to.
func (r *Router) notePrincipal(g *generation, scope string) {
	principalsMu.Lock()
	defer principalsMu.Unlock()
	path := filepath.Join(g.snap.Config.StateDir, MemoryPrincipalsFile)
	scopes, _ := readScopes(path)
	if slices.Contains(scopes, scope) {
		return
	}
	scopes = append(scopes, scope)
	b, _ := json.Marshal(scopes)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		err = os.Rename(tmp, path)
		if err != nil {
			r.log.Warn("could not record a memory scope", "err", err)
		}
	}
}

func readScopes(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s []string
	return s, json.Unmarshal(b, &s)
}

// MemoryStatus is the admin view of the binding: whether the store is
// reachable with the router's identity.
type MemoryStatus struct {
	Store     string `json:"store"`
	Scope     string `json:"scope"`
	Reachable bool   `json:"reachable"`
	// Problem is "", "StoreMissing", "AuthMisconfigured" or "Unreachable".
	Problem string `json:"problem,omitempty"`
	Error   string `json:"error,omitempty"`
}

// memoryStatus asks the store whether it exists and admits the router.
func (r *Router) memoryStatus(ctx context.Context) (*MemoryStatus, bool) {
	b := r.gen.Load().memory
	if b == nil {
		return nil, false
	}
	st := &MemoryStatus{Store: b.cfg.Store, Scope: b.cfg.Scope}
	_, err := b.client.GetStore(ctx)
	switch {
	case err == nil:
		st.Reachable = true
	case foundry.IsNotFound(err):
		st.Problem, st.Error = "StoreMissing", err.Error()
	case foundry.IsAuth(err) || strings.Contains(err.Error(), "credential"):
		st.Problem, st.Error = "AuthMisconfigured", err.Error()
	default:
		st.Problem, st.Error = "Unreachable", err.Error()
	}
	return st, true
}

// forgetMemory deletes every memory of the sandbox: its partition (agent
// scope) and every per-principal scope it wrote to.
func (r *Router) forgetMemory(ctx context.Context) (any, error) {
	g := r.gen.Load()
	b := g.memory
	if b == nil {
		return nil, errors.New("this sandbox has no KarsMemory")
	}
	scopes := []string{"kars/" + b.cfg.Partition}
	principalsMu.Lock()
	more, _ := readScopes(filepath.Join(g.snap.Config.StateDir, MemoryPrincipalsFile))
	principalsMu.Unlock()
	scopes = append(scopes, more...)
	for _, s := range scopes {
		if err := b.client.DeleteScope(ctx, s); err != nil && !foundry.IsNotFound(err) {
			return nil, fmt.Errorf("delete scope %s: %w", s, err)
		}
	}
	return map[string]any{"deletedScopes": len(scopes)}, nil
}
