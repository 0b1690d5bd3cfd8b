// Package outbound lets a sandbox's agent call registered foreign A2A
// agents (A2AAgents whose cards the controller verified) through its
// router: POST http://127.0.0.1:8443/kars/v1/a2a/<agent> with the JSON-RPC
// request the agent's A2A client would send. The router decides the action
// a2a:call:<agent>, checks the skill against the registration's allowed
// skills and the call against its rate limit and expiry, forwards it to the
// agent's endpoint over TLS with the sandbox's own identity — a client
// certificate of its card key and its signed card in the
// Kars-A2A-Caller-Card header, the same proof kars's own gateway asks of
// callers — and audits it like an inference call.
//
// The agent never holds that key: it lives on the router's state volume.
package outbound

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"

	"github.com/kars-io/kars/internal/a2a/card"
	"github.com/kars-io/kars/internal/a2a/rpc"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/ratelimit"
	"github.com/kars-io/kars/internal/routerconfig"
)

// Prefix is where the agent reaches registered agents on the router.
const Prefix = "/kars/v1/a2a/"

// MaxBodyBytes bounds an outbound request body.
const MaxBodyBytes = 4 << 20

// Options are the handler's collaborators.
type Options struct {
	// Sandbox ("<namespace>/<name>") and Agent (governance identity).
	Sandbox, Agent string
	// Config returns the live config (peers, exposure).
	Config func() *routerconfig.Config
	// Decide decides an action for the agent (the behaviour monitor
	// counts it: the call is the agent's).
	Decide func(action string, args map[string]any) governance.Decision
	// Audit appends one record durably.
	Audit func(ctx context.Context, rec audit.Record) error
	// CardKey is the sandbox's identity towards peers.
	CardKey ed25519.PrivateKey
	// Version is the agent version its card states.
	Version string
	// Transport reaches peers; nil means one with the system roots.
	Transport *http.Transport
	Logger    *slog.Logger
	Now       func() time.Time
}

// Handler serves Prefix on the agent API.
type Handler struct {
	o      Options
	client *http.Client
	clock  ratelimit.Clock
	cert   tls.Certificate

	buckets ratelimit.Keyed // per peer
	mu      sync.Mutex
	cards   map[string]string // card URL → header value
}

// New returns a handler; it makes the TLS client certificate of the card
// key (self-signed: peers pin the key, not a CA).
func New(o Options) (*Handler, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	cert, err := selfSigned(o.CardKey, o.Sandbox, o.Now())
	if err != nil {
		return nil, err
	}
	tr := o.Transport
	if tr == nil {
		tr = &http.Transport{Proxy: nil, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 16, IdleConnTimeout: 90 * time.Second,
			TLSHandshakeTimeout: 10 * time.Second, ResponseHeaderTimeout: 10 * time.Minute}
	} else {
		tr = tr.Clone()
	}
	tc := tr.TLSClientConfig
	if tc == nil {
		tc = &tls.Config{}
	} else {
		tc = tc.Clone()
	}
	tc.MinVersion = tls.VersionTLS12
	tc.Certificates = []tls.Certificate{cert}
	tr.TLSClientConfig = tc
	return &Handler{o: o, client: &http.Client{Transport: tr}, clock: ratelimit.NewClock(), cert: cert,
		cards: map[string]string{}}, nil
}

func selfSigned(key ed25519.PrivateKey, sandbox string, now time.Time) (tls.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()), Subject: pkix.Name{CommonName: sandbox, Organization: []string{"kars sandbox"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// callerCard is the sandbox's card as the header carries it.
func (h *Handler) callerCard(cfg *routerconfig.Config) (string, error) {
	url := "https://kars.invalid/a2a/" + h.o.Sandbox
	if cfg.A2A != nil {
		url = cfg.A2A.PublicURL
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if v, ok := h.cards[url]; ok {
		return v, nil
	}
	name := h.o.Sandbox
	if _, n, ok := strings.Cut(name, "/"); ok {
		name = n
	}
	version := h.o.Version
	if version == "" {
		version = "0.0.0"
	}
	s, err := card.SignBoth(card.Spec{Name: name, Description: "kars sandbox " + h.o.Sandbox, Version: version, URL: url}, h.o.CardKey, "")
	if err != nil {
		return "", err
	}
	v := base64.RawURLEncoding.EncodeToString(s.V1)
	h.cards[url] = v
	return v, nil
}

// call is one outbound call's record in the making.
type call struct {
	start           time.Time
	peer            string
	method, skill   string
	payload         string
	decision, rule  string
	reason, refusal string
	status          int
	endpoint        string
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := &call{start: h.o.Now(), decision: "refused"}
	name, rest, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, Prefix), "/")
	c.peer = name
	cfg := h.o.Config()
	idx := slices.IndexFunc(cfg.A2APeers, func(p routerconfig.A2APeer) bool { return p.Name == name })
	var id json.RawMessage
	refuse := func(status, code int, reason, msg string) {
		c.status, c.refusal, c.reason = status, reason, msg
		if err := h.record(r.Context(), c); err != nil {
			status, code, reason, msg = http.StatusServiceUnavailable, rpc.CodeInternalError, "kars_audit_unavailable", "kars-router could not write its audit log"
		}
		(&rpc.Error{Code: code, Message: msg, Reason: reason}).Write(w, status, id)
	}
	if name == "" || idx < 0 {
		refuse(http.StatusNotFound, rpc.CodeMethodNotFound, "kars_peer_unknown",
			fmt.Sprintf("no registered A2A agent %q may be called from this sandbox (an A2AAgent listing it, with a verified card)", name))
		return
	}
	p := cfg.A2APeers[idx]
	c.endpoint = p.Endpoint
	if p.ExpiresAt != nil && !h.o.Now().Before(*p.ExpiresAt) {
		refuse(http.StatusForbidden, rpc.CodeUnauthorized, "kars_peer_expired", "the registration of "+name+" has ended")
		return
	}
	if r.Method == http.MethodGet && (rest == ".well-known/agent-card.json" || rest == ".well-known/agent.json") {
		h.serveCard(w, r, p)
		return
	}
	if r.Method != http.MethodPost || rest != "" {
		refuse(http.StatusMethodNotAllowed, rpc.CodeInvalidRequest, "kars_method_not_allowed", "POST JSON-RPC requests to "+Prefix+name)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		refuse(http.StatusRequestEntityTooLarge, rpc.CodeInvalidRequest, "kars_body_too_large", fmt.Sprintf("the request body exceeds %d bytes", MaxBodyBytes))
		return
	}
	sum := sha256.Sum256(body)
	c.payload = hex.EncodeToString(sum[:])
	env, err := rpc.ParseEnvelope(body)
	id, c.method = env.ID, env.Method
	if err != nil {
		var e *rpc.Error
		errors.As(err, &e)
		refuse(http.StatusBadRequest, e.Code, "kars_bad_request", e.Message)
		return
	}
	version, _ := rpc.VersionOf(p.ProtocolVersion)
	op, ok := rpc.Lookup(version, env.Method)
	if !ok {
		refuse(http.StatusOK, rpc.CodeMethodNotFound, "kars_method_not_served", fmt.Sprintf("%s speaks A2A %s, which has no method %q", name, version, env.Method))
		return
	}
	if op.Sends() {
		c.skill = skillOf(env.Params)
		if len(p.Skills) > 0 && !slices.Contains(p.Skills, c.skill) {
			c.decision = "deny"
			refuse(http.StatusOK, rpc.CodeUnauthorized, "kars_skill_not_allowed", fmt.Sprintf("skill %q of %s is not allowed for this sandbox (allowed: %s)", c.skill, name, strings.Join(p.Skills, ", ")))
			return
		}
	}
	d := h.o.Decide(Action(name), map[string]any{"method": op.String(), "skill": c.skill, "endpoint": p.Endpoint})
	c.decision, c.rule, c.reason = d.Verdict.String(), d.Rule, d.Reason
	if !d.Allowed() {
		refuse(http.StatusOK, rpc.CodeUnauthorized, "kars_policy_"+d.Verdict.String(), "kars governance: "+d.Verdict.String()+": "+d.Reason)
		return
	}
	if p.RateLimit.RPM > 0 {
		if ok, _ := h.buckets.Allow(name, ratelimit.PerMinute(p.RateLimit.RPM, p.RateLimit.Burst), h.clock.Now()); !ok {
			c.decision = "refused"
			refuse(http.StatusTooManyRequests, rpc.CodeRateLimited, "kars_rate_limited", fmt.Sprintf("calls to %s exceed %d/min", name, p.RateLimit.RPM))
			return
		}
	}
	cardHeader, err := h.callerCard(cfg)
	if err != nil {
		refuse(http.StatusInternalServerError, rpc.CodeInternalError, "kars_card_unavailable", err.Error())
		return
	}
	req, _ := http.NewRequestWithContext(r.Context(), http.MethodPost, p.Endpoint, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(rpc.HeaderVersion, p.ProtocolVersion)
	req.Header.Set(rpc.HeaderCallerCard, cardHeader)
	if a := r.Header.Get("Accept"); a != "" {
		req.Header.Set("Accept", a)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		c.decision = "refused"
		refuse(http.StatusBadGateway, rpc.CodeInternalError, "kars_peer_unreachable", name+" could not be reached: "+err.Error())
		return
	}
	defer resp.Body.Close()
	c.status = resp.StatusCode
	if err := h.record(r.Context(), c); err != nil {
		(&rpc.Error{Code: rpc.CodeInternalError, Message: "kars-router could not write its audit log", Reason: "kars_audit_unavailable"}).Write(w, http.StatusServiceUnavailable, id)
		return
	}
	rpc.Relay(w, resp, "Content-Type", "Cache-Control", "Retry-After")
}

// serveCard answers an A2A client's card lookup with a local card for the
// peer whose one interface is this router path, so that an SDK client
// pointed at the router talks through it. The peer's own card was verified
// by the controller.
func (h *Handler) serveCard(w http.ResponseWriter, r *http.Request, p routerconfig.A2APeer) {
	base := "http://" + r.Host + Prefix + p.Name
	c := a2a.AgentCard{Name: p.Name, Description: "registered A2A agent " + p.Name + ", called through kars-router", Version: "1",
		SupportedInterfaces: []*a2a.AgentInterface{{URL: base, ProtocolBinding: a2a.TransportProtocolJSONRPC, ProtocolVersion: a2a.ProtocolVersion(p.ProtocolVersion)}},
		Capabilities:        a2a.AgentCapabilities{Streaming: true}, DefaultInputModes: []string{"text/plain"}, DefaultOutputModes: []string{"text/plain"}}
	for _, s := range p.Skills {
		c.Skills = append(c.Skills, a2a.AgentSkill{ID: s, Name: s, Description: s, Tags: []string{"kars"}})
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(c)
}

// Action is the governance action of a call to a registered agent.
func Action(agent string) string { return "a2a:call:" + agent }

// skillOf reads metadata.skill of the message or the request.
func skillOf(params json.RawMessage) string {
	var p struct {
		Message struct {
			Metadata map[string]any `json:"metadata"`
		} `json:"message"`
		Metadata map[string]any `json:"metadata"`
	}
	json.Unmarshal(params, &p)
	for _, md := range []map[string]any{p.Message.Metadata, p.Metadata} {
		if s, ok := md["skill"].(string); ok {
			return s
		}
	}
	return ""
}

// record appends the call's audit entry.
func (h *Handler) record(ctx context.Context, c *call) error {
	lat := h.o.Now().Sub(c.start)
	attrs := map[string]string{"op": "a2a-call", "peer": c.peer, "rpc_method": c.method, "status": strconv.Itoa(c.status)}
	if c.endpoint != "" {
		attrs["endpoint"] = c.endpoint
	}
	if c.skill != "" {
		attrs["skill"] = c.skill
	}
	if c.refusal != "" {
		attrs["refusal"] = c.refusal
	}
	err := h.o.Audit(ctx, audit.Record{Sandbox: h.o.Sandbox, Agent: h.o.Agent, Action: Action(c.peer), Decision: c.decision,
		Rule: c.rule, Reason: c.reason, PayloadSHA256: c.payload, Latency: lat, Attrs: attrs})
	h.o.Logger.LogAttrs(ctx, slog.LevelInfo, "a2a call", slog.String("peer", c.peer), slog.String("method", c.method),
		slog.String("decision", c.decision), slog.Int("status", c.status), slog.String("refusal", c.refusal), slog.Duration("latency", lat))
	return err
}
