// Package registry is the AgentMesh registry (Wire Protocol 1.0 §11):
// agent registration with proof of possession, prekey bundles whose
// one-time prekeys are handed out at most once, presence and discovery,
// over HTTP with Ed25519-Timestamp authorization (§13.1).
//
// It holds public keys only; it never sees a private key or a message.
package registry

import (
	"context"
	"crypto/ed25519"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/ratelimit"
)

// OfflineAfter is when an agent without a heartbeat counts as offline
// (§12.4: three missed 30-second heartbeats).
const OfflineAfter = 90 * time.Second

// Options configure a Server.
type Options struct {
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Logger receives one line per refused request.
	Logger *slog.Logger
	// PrekeyUploads bounds PUT …/prekeys per agent (§16.4); zero means
	// 30 per minute.
	PrekeyUploads ratelimit.Limit
	// BundleFetches bounds GET …/prekeys per caller, so no one drains
	// another agent's one-time prekeys; zero means 120 per minute.
	BundleFetches ratelimit.Limit
	// Registrations bounds POST /v1/agents across all callers: anyone
	// with a key may register, so this is what bounds the registry's
	// growth; zero means 600 per minute, burst 600.
	Registrations ratelimit.Limit
	// Remote, when set, answers for agents of federated meshes.
	Remote Remote
}

// Remote answers for agents of federated meshes
// (internal/mesh/federation): the key of an agent this registry does not
// know, and its prekey bundle, which the agent's own registry hands out
// (consuming a one-time prekey there).
type Remote interface {
	PublicKey(did string) (ed25519.PublicKey, bool)
	Bundle(ctx context.Context, did string) (*wire.BundleResponse, error)
}

// Server serves the registry API.
type Server struct {
	store  *Store
	opt    Options
	replay wire.ReplayGuard
	mux    *http.ServeMux
	clock  ratelimit.Clock

	mu      sync.Mutex
	buckets map[string]*ratelimit.Bucket
}

// New makes a registry over store.
func New(store *Store, opt Options) *Server {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.PrekeyUploads.Unlimited() {
		opt.PrekeyUploads = ratelimit.Limit{Events: 30, Per: time.Minute}
	}
	if opt.BundleFetches.Unlimited() {
		opt.BundleFetches = ratelimit.Limit{Events: 120, Per: time.Minute}
	}
	if opt.Registrations.Unlimited() {
		opt.Registrations = ratelimit.Limit{Events: 600, Per: time.Minute}
	}
	s := &Server{store: store, opt: opt, mux: http.NewServeMux(), clock: ratelimit.NewClock(), buckets: map[string]*ratelimit.Bucket{}}
	s.mux.HandleFunc("POST /v1/agents", s.register)
	s.mux.HandleFunc("GET /v1/agents/{did}", s.get)
	s.mux.HandleFunc("DELETE /v1/agents/{did}", s.deregister)
	s.mux.HandleFunc("PUT /v1/agents/{did}/prekeys", s.putPrekeys)
	s.mux.HandleFunc("GET /v1/agents/{did}/prekeys", s.fetchPrekeys)
	s.mux.HandleFunc("GET /v1/agents/{did}/presence", s.presence)
	s.mux.HandleFunc("POST /v1/agents/{did}/heartbeat", s.heartbeat)
	s.mux.HandleFunc("GET /v1/discover", s.discover)
	s.mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "healthy", "service": "kars-mesh-registry"})
	})
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Store returns the server's store (the relay shares it for keys and
// presence).
func (s *Server) Store() *Store { return s.store }

// maxBody bounds request bodies.
const maxBody = 1 << 20

type registerRequest struct {
	DID            string            `json:"did"`
	PublicKey      string            `json:"public_key"`
	Proof          string            `json:"proof"`
	ProofTimestamp string            `json:"proof_timestamp"`
	Capabilities   []string          `json:"capabilities"`
	Metadata       map[string]string `json:"metadata"`
}

// register is POST /v1/agents. Proof of possession comes in either
// shape: the toolkit's proof (Ed25519 over the public_key text followed
// by proof_timestamp) or the spec's Ed25519-Timestamp header (§11.2)
// signed by the key in the body.
func (s *Server) register(w http.ResponseWriter, r *http.Request) {
	if !s.allow("register", s.opt.Registrations, w, r) {
		return
	}
	var req registerRequest
	if !s.decode(w, r, &req) {
		return
	}
	pub, err := wire.DecodeB64(req.PublicKey)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		s.fail(w, r, http.StatusBadRequest, "public_key must be a base64url 32-byte Ed25519 key")
		return
	}
	now := s.opt.Now()
	switch {
	case req.Proof != "":
		a := wire.Auth{DID: identity.MeshDID(pub), Timestamp: req.ProofTimestamp}
		t, err := time.Parse(time.RFC3339Nano, req.ProofTimestamp)
		sig, serr := wire.DecodeB64(req.Proof)
		if err != nil || serr != nil || len(sig) != ed25519.SignatureSize {
			s.fail(w, r, http.StatusBadRequest, "proof must be a base64url Ed25519 signature and proof_timestamp RFC 3339 with an offset")
			return
		}
		if d := now.Sub(t); d > wire.Window || d < -wire.Window {
			s.fail(w, r, http.StatusUnauthorized, "proof_timestamp is outside the ±5 minute window")
			return
		}
		if !ed25519.Verify(pub, []byte(req.PublicKey+req.ProofTimestamp), sig) {
			s.fail(w, r, http.StatusUnauthorized, "invalid proof of possession")
			return
		}
		a.Time = t
		if err := s.replay.Use(a, now); err != nil {
			s.fail(w, r, http.StatusUnauthorized, err.Error())
			return
		}
	case r.Header.Get("Authorization") != "":
		a, err := wire.ParseAuthHeader(r.Header.Get("Authorization"))
		if err == nil {
			err = a.Verify(pub, now)
		}
		if err == nil {
			err = s.replay.Use(a, now)
		}
		if err != nil {
			s.fail(w, r, http.StatusUnauthorized, err.Error())
			return
		}
	default:
		s.fail(w, r, http.StatusUnauthorized, "registration needs proof of possession: a proof with proof_timestamp, or an Ed25519-Timestamp Authorization header")
		return
	}
	if req.DID != "" {
		if err := identity.CheckDID(req.DID, pub); err != nil {
			s.fail(w, r, http.StatusBadRequest, "did does not name public_key")
			return
		}
	}
	if len(req.Capabilities) > 64 || len(req.Metadata) > 64 {
		s.fail(w, r, http.StatusBadRequest, "at most 64 capabilities and 64 metadata entries")
		return
	}
	a, err := s.store.Register(pub, req.Capabilities, req.Metadata, now)
	if errors.Is(err, ErrExists) {
		s.fail(w, r, http.StatusConflict, "agent already registered")
		return
	}
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"did": a.DID, "status": "registered"})
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	a, ok := s.store.Get(r.PathValue("did"))
	if !ok && s.opt.Remote != nil {
		if pub, remote := s.opt.Remote.PublicKey(r.PathValue("did")); remote {
			writeJSON(w, http.StatusOK, map[string]any{"did": identity.MeshDID(pub), "did_agentmesh": identity.AgentMeshDID(pub),
				"public_key": wire.B64(pub), "capabilities": []string{}, "metadata": map[string]string{"federated": "true"}})
			return
		}
	}
	if !ok {
		s.fail(w, r, http.StatusNotFound, "agent not found")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"did": a.DID, "did_agentmesh": identity.AgentMeshDID(a.PublicKey),
		"public_key": wire.B64(a.PublicKey), "capabilities": nonNil(a.Capabilities), "metadata": a.Metadata,
		"registered_at": a.RegisteredAt.Format(time.RFC3339Nano), "last_seen": a.lastSeen.UTC().Format(time.RFC3339Nano),
	})
}

// authorize checks the Ed25519-Timestamp header and that it names did.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, did string) (string, bool) {
	a, err := wire.ParseAuthHeader(r.Header.Get("Authorization"))
	if err != nil {
		s.fail(w, r, http.StatusUnauthorized, err.Error())
		return "", false
	}
	pub, ok := s.store.PublicKey(a.DID)
	if !ok {
		s.fail(w, r, http.StatusUnauthorized, "agent not registered")
		return "", false
	}
	now := s.opt.Now()
	if err := a.Verify(pub, now); err != nil {
		s.fail(w, r, http.StatusUnauthorized, err.Error())
		return "", false
	}
	if err := s.replay.Use(a, now); err != nil {
		s.fail(w, r, http.StatusUnauthorized, err.Error())
		return "", false
	}
	caller := identity.MeshDID(pub)
	if did != "" && !sameAgent(did, pub) {
		s.fail(w, r, http.StatusForbidden, "authorization is for another agent")
		return "", false
	}
	return caller, true
}

func sameAgent(did string, pub ed25519.PublicKey) bool {
	return identity.CheckDID(did, pub) == nil
}

func (s *Server) deregister(w http.ResponseWriter, r *http.Request) {
	did := r.PathValue("did")
	if _, ok := s.authorize(w, r, did); !ok {
		return
	}
	if err := s.store.Delete(did); err != nil {
		s.fail(w, r, http.StatusNotFound, "agent not found")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) putPrekeys(w http.ResponseWriter, r *http.Request) {
	did := r.PathValue("did")
	caller, ok := s.authorize(w, r, did)
	if !ok {
		return
	}
	if !s.allow("up:"+caller, s.opt.PrekeyUploads, w, r) {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		s.fail(w, r, http.StatusRequestEntityTooLarge, "bundle too large")
		return
	}
	u, err := wire.ParseBundleUpload(body)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	a, _ := s.store.Get(did)
	// The bundle must be the registered agent's: identity_key_ed is the
	// registered key (filled in when absent), identity_key its X25519
	// image, the signed prekey signed by it.
	if u.IdentityKeyEd == "" {
		u.IdentityKeyEd = wire.B64(a.PublicKey)
	}
	ed, _ := wire.DecodeB64(u.IdentityKeyEd)
	if subtle.ConstantTimeCompare(ed, a.PublicKey) != 1 {
		s.fail(w, r, http.StatusBadRequest, "identity_key_ed is not the registered public key")
		return
	}
	x, err := identity.X25519FromEd25519(a.PublicKey)
	ik, _ := wire.DecodeB64(u.IdentityKey)
	if err != nil || subtle.ConstantTimeCompare(x.Bytes(), ik) != 1 {
		s.fail(w, r, http.StatusBadRequest, "identity_key is not the X25519 form of the registered Ed25519 key (AgentMesh §4.4)")
		return
	}
	spk, _ := wire.DecodeB64(u.SignedPreKey.PublicKey)
	sig, _ := wire.DecodeB64(u.SignedPreKey.Signature)
	if !ed25519.Verify(a.PublicKey, spk, sig) {
		s.fail(w, r, http.StatusBadRequest, "signed_pre_key signature does not verify under the registered key")
		return
	}
	// Store keys in one canonical encoding.
	u.IdentityKey, u.IdentityKeyEd = wire.B64(ik), wire.B64(ed)
	u.SignedPreKey.PublicKey, u.SignedPreKey.Signature = wire.B64(spk), wire.B64(sig)
	for i, o := range u.OneTimePreKeys {
		k, _ := wire.DecodeB64(o.PublicKey)
		u.OneTimePreKeys[i].PublicKey = wire.B64(k)
	}
	u.AgentDID, u.Timestamp = a.DID, ""
	if err := s.store.PutPrekeys(a.DID, u); err != nil {
		s.fail(w, r, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"did": a.DID, "otk_count": len(u.OneTimePreKeys)})
}

// fetchPrekeys is GET …/prekeys: the caller must be a registered agent
// (§11.3 shows the header; the toolkit does not ask for it), which
// bounds how fast anyone can drain one-time prekeys.
func (s *Server) fetchPrekeys(w http.ResponseWriter, r *http.Request) {
	caller, ok := s.authorize(w, r, "")
	if !ok {
		return
	}
	if !s.allow("get:"+caller, s.opt.BundleFetches, w, r) {
		return
	}
	b, err := s.store.TakeBundle(r.PathValue("did"))
	if errors.Is(err, ErrNotFound) && s.opt.Remote != nil {
		if _, remote := s.opt.Remote.PublicKey(r.PathValue("did")); remote {
			b, err = s.opt.Remote.Bundle(r.Context(), r.PathValue("did"))
		}
	}
	if errors.Is(err, ErrNotFound) {
		s.fail(w, r, http.StatusNotFound, "pre-key bundle not found")
		return
	}
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, b)
}

func (s *Server) presence(w http.ResponseWriter, r *http.Request) {
	a, ok := s.store.Get(r.PathValue("did"))
	if !ok {
		s.fail(w, r, http.StatusNotFound, "agent not found")
		return
	}
	seen, _ := s.store.LastSeen(a.DID)
	writeJSON(w, http.StatusOK, map[string]any{"did": a.DID, "last_seen": seen.UTC().Format(time.RFC3339Nano), "online": s.opt.Now().Sub(seen) < OfflineAfter})
}

func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request) {
	did := r.PathValue("did")
	if _, ok := s.authorize(w, r, did); !ok {
		return
	}
	now := s.opt.Now()
	s.store.Seen(did, now)
	writeJSON(w, http.StatusOK, map[string]string{"did": did, "last_seen": now.UTC().Format(time.RFC3339Nano)})
}

func (s *Server) discover(w http.ResponseWriter, r *http.Request) {
	capability := r.URL.Query().Get("capability")
	if capability == "" {
		s.fail(w, r, http.StatusBadRequest, "capability is required")
		return
	}
	limit := 50
	if l := r.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 200 {
			s.fail(w, r, http.StatusBadRequest, "limit must be 1–200")
			return
		}
		limit = n
	}
	found := s.store.Discover(capability, limit)
	results := make([]map[string]any, 0, len(found))
	for _, a := range found {
		results = append(results, map[string]any{"did": a.DID, "capabilities": a.Capabilities, "last_seen": a.lastSeen.UTC().Format(time.RFC3339Nano)})
	}
	writeJSON(w, http.StatusOK, map[string]any{"results": results, "total": len(results)})
}

func (s *Server) allow(key string, l ratelimit.Limit, w http.ResponseWriter, r *http.Request) bool {
	s.mu.Lock()
	b := s.buckets[key]
	if b == nil {
		b = ratelimit.NewBucket(l)
		s.buckets[key] = b
	}
	s.mu.Unlock()
	ok, retry := b.Allow(s.clock.Now())
	if !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(retry.Seconds())+1))
		s.fail(w, r, http.StatusTooManyRequests, "rate limit exceeded")
	}
	return ok
}

func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	d := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	if err := d.Decode(v); err != nil {
		s.fail(w, r, http.StatusBadRequest, "request body: "+err.Error())
		return false
	}
	return true
}

// fail writes the toolkit's error shape, {"detail": …}.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, code int, detail string) {
	s.opt.Logger.Info("registry request refused", "method", r.Method, "path", r.URL.Path, "status", code, "detail", detail)
	writeJSON(w, code, map[string]string{"detail": detail})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
