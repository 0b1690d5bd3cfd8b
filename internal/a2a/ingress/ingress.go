// Package ingress is kars-router's inbound A2A endpoint (port 8445): the
// only way a foreign agent's message reaches a sandbox's agent, and only
// through the kars-a2a-gateway.
//
// Every call is checked again here, whatever the gateway decided (defence
// in depth: the router trusts the gateway's word only over the gateway's
// pinned mTLS connection, and re-verifies what it can): the exposure
// window, the caller's signed AgentCard and its key's thumbprint against
// allowedCallers, the caller's trust score against minimumTrustScore, a
// per-caller rate limit, the body cap, the protocol version and method,
// the skill against advertisedSkills, the session's age against
// sessionMaxSeconds, and the governance decision for a2a:receive:<skill>.
// Only then is the message forwarded to the agent's contract endpoint.
// Every call is audited (caller subject, thumbprint and trust, sandbox,
// method, payload SHA-256, gateway and router latency, decision) before any
// byte of the answer leaves.
//
// The A2A protocol itself (tasks, streaming, the 1.0 JSON-RPC binding) is
// the official Go SDK, github.com/a2aproject/a2a-go/v2; the 0.3 JSON-RPC
// binding over the same handler is kars's own (internal/a2a/v03), as the
// SDK's pulls the v0 SDK and gRPC into kars-router.
//
// Security: this package must not import internal/credential, the router,
// or anything else that can reach a credential; a test checks it with
// go list -deps. The router hands it narrow functions (decide, audit).
package ingress

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2asrv"

	"github.com/kars-io/kars/internal/a2a/card"
	"github.com/kars-io/kars/internal/a2a/rpc"
	"github.com/kars-io/kars/internal/a2a/v03"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/ratelimit"
	"github.com/kars-io/kars/internal/routerconfig"
)

// Options are the ingress's collaborators.
type Options struct {
	// Sandbox ("<namespace>/<name>") and Agent (the governance identity)
	// label audit entries and decisions.
	Sandbox, Agent string
	// Config returns the live A2A section; nil means not exposed. It is
	// called on every request, so a reload takes effect at once.
	Config func() *routerconfig.A2A
	// Decide asks the router's decision provider about an action.
	Decide func(ctx context.Context, action string, args map[string]any) governance.Decision
	// Audit appends one record and returns once it is durable.
	Audit func(ctx context.Context, rec audit.Record) error
	// AuditFailing reports whether the audit log is failing; calls are
	// then refused (decisions fail closed).
	AuditFailing func() bool
	// CardKey signs the sandbox's AgentCards.
	CardKey ed25519.PrivateKey
	// Version is the agent version the cards state.
	Version string
	// AgentClient carries calls to the agent; nil means a client bounded
	// only by each call's session deadline.
	AgentClient *http.Client
	// Now is the clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Ingress serves the A2A port. Create it with New.
type Ingress struct {
	o        Options
	now      func() time.Time
	log      *slog.Logger
	agent    *http.Client
	store    *taskStore
	sessions *sessions
	v10, v03 http.Handler
	clock    ratelimit.Clock

	callerCards card.CachedVerifier
	// buckets are per caller; only allowed callers (at most 64) get one.
	buckets ratelimit.Keyed
	cards   atomic.Pointer[signedCards]
	certs   certCache
}

// Bounds on what the ingress remembers.
const (
	maxTasks    = 10_000
	taskTTL     = time.Hour
	maxSessions = 10_000
)

// New returns an ingress.
func New(o Options) *Ingress {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	i := &Ingress{o: o, now: o.Now, log: o.Logger, agent: o.AgentClient,
		store: newTaskStore(maxTasks, taskTTL, o.Now), sessions: newSessions(maxSessions),
		clock: ratelimit.NewClock()}
	if i.agent == nil {
		i.agent = &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}}
	}
	h := a2asrv.NewHandler(executor{i},
		a2asrv.WithTaskStore(i.store),
		a2asrv.WithCallInterceptors(interceptor{i}),
		// Streaming is decided per sandbox before the SDK sees a call.
		a2asrv.WithCapabilityChecks(&a2a.AgentCapabilities{Streaming: true}),
		a2asrv.WithLogger(o.Logger),
	)
	i.v10 = a2asrv.NewJSONRPCHandler(h)
	i.v03 = v03.NewHandler(h)
	return i
}

// Paths the ingress serves besides JSON-RPC at "/".
const (
	PathCard    = "/.well-known/agent-card.json"
	PathCardV03 = "/.well-known/agent.json"
	PathJWKS    = "/.well-known/jwks.json"
)

// ServeHTTP implements http.Handler.
func (i *Ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cfg := i.o.Config()
	if err := i.gatewayOnly(r, cfg); err != nil {
		(&rpc.Error{Code: rpc.CodeUnauthenticated, Message: err.Error(), Reason: "kars_not_the_gateway"}).Write(w, http.StatusForbidden, nil)
		return
	}
	switch r.URL.Path {
	case PathCard, PathCardV03, PathJWKS:
		i.serveCard(w, r, cfg)
	case "/":
		i.serveRPC(w, r, cfg)
	default:
		(&rpc.Error{Code: rpc.CodeMethodNotFound, Message: "the A2A ingress serves JSON-RPC at / and the cards under /.well-known/", Reason: "kars_unknown_path"}).Write(w, http.StatusNotFound, nil)
	}
}

// gatewayOnly re-checks, on every request, that the TLS client is the
// gateway as the current config pins it: a pin removed by a reload ends
// kept-alive connections' access too.
func (i *Ingress) gatewayOnly(r *http.Request, cfg *routerconfig.A2A) error {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return errors.New("the A2A ingress takes calls only from the kars-a2a-gateway over mTLS")
	}
	if cfg == nil || !slices.Contains(cfg.GatewayPins, SPKIPin(r.TLS.PeerCertificates[0])) {
		return errors.New("the client certificate is not the pinned kars-a2a-gateway's")
	}
	return nil
}

// SPKIPin is "sha256:<hex>" of a certificate's SubjectPublicKeyInfo.
func SPKIPin(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// TLSConfig is the ingress's server TLS: the router's certificate (from
// the A2A section's files, re-read when they change) and a client
// certificate required and pinned to the gateway's (GatewayPins), checked
// in the handshake and again on every request.
func (i *Ingress) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			cfg := i.o.Config()
			if cfg == nil {
				return nil, errors.New("a2a ingress: not exposed")
			}
			return i.certs.get(cfg.TLSCertFile, cfg.TLSKeyFile, i.now())
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("a2a ingress: a client certificate is required")
			}
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			cfg := i.o.Config()
			if cfg == nil || !slices.Contains(cfg.GatewayPins, SPKIPin(leaf)) {
				return errors.New("a2a ingress: the client certificate is not the pinned kars-a2a-gateway's")
			}
			return nil
		},
	}
}

// call is one JSON-RPC call's state, shared by the HTTP layer, the SDK
// interceptor, the task store and the executor through the context.
//
// Once serveRPC hands the call to a binding, the interceptor and the task
// store may run on a goroutine of the SDK's (its streams) while the HTTP
// layer commits the audit entry, so the fields they share are guarded by
// mu: decision, rule, reason, refusal, skill and committed.
type call struct {
	mu              sync.Mutex
	start           time.Time
	cfg             *routerconfig.A2A
	caller, subject string
	trust           int
	gatewayLatency  string
	version         rpc.Version
	op              rpc.Op
	method          string
	payload         string
	skill           string
	sessionMax      time.Duration
	agentURL        string
	// decision is "" while the call is with a binding and not yet decided:
	// the interceptor decides it, or commit records it as refused.
	decision, rule  string
	reason, refusal string
	committed       bool
	commitErr       error
	status          int
	// replyAsMessage: a blocking SendMessage that starts no task is
	// answered with the agent's reply as a Message (A2A's simple
	// interaction): no task to store, get or cancel.
	replyAsMessage bool
}

type callKey struct{}

func callFrom(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	return c
}

// refusal is a call the ingress answers itself.
type refusal struct {
	status   int
	code     int
	reason   string // kars_… code
	msg      string
	decision string // refused (limits, protocol) or deny (policy)
}

func (i *Ingress) serveRPC(w http.ResponseWriter, r *http.Request, cfg *routerconfig.A2A) {
	c := &call{start: i.now(), cfg: cfg, decision: "refused", gatewayLatency: r.Header.Get(rpc.HeaderGatewayLatency)}
	var id json.RawMessage
	refuse := func(f refusal) {
		c.decision, c.reason, c.refusal, c.status = f.decision, f.msg, f.reason, f.status
		if c.decision == "" {
			c.decision = "refused"
		}
		aw := &auditWriter{ResponseWriter: w, ing: i, c: c, r: r}
		(&rpc.Error{Code: f.code, Message: f.msg, Reason: f.reason}).Write(aw, f.status, id)
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		refuse(refusal{status: http.StatusMethodNotAllowed, code: rpc.CodeInvalidRequest, reason: "kars_method_not_allowed", msg: "JSON-RPC calls are POSTed"})
		return
	}
	if !cfg.Open(c.start) {
		refuse(refusal{status: http.StatusForbidden, code: rpc.CodeUnauthorized, reason: "kars_not_exposed",
			msg: "this sandbox is not exposed to A2A callers (spec.a2a is disabled or its window has ended)"})
		return
	}
	if i.o.AuditFailing != nil && i.o.AuditFailing() {
		refuse(refusal{status: http.StatusServiceUnavailable, code: rpc.CodeInternalError, reason: "kars_audit_unavailable",
			msg: "kars-router cannot write its audit log, so it refuses calls until it can"})
		return
	}
	if f := i.identify(r, c); f != nil {
		refuse(*f)
		return
	}
	v, err := rpc.VersionOf(r.Header.Get(rpc.HeaderVersion))
	if err != nil {
		refuse(refusal{status: http.StatusBadRequest, code: rpc.CodeVersionNotSupported, reason: "kars_version_not_supported", msg: err.Error()})
		return
	}
	c.version = v
	body, f := readCapped(w, r, cfg.BodyCapBytes)
	if f != nil {
		refuse(*f)
		return
	}
	c.payload = payloadHash(body)
	env, err := rpc.ParseEnvelope(body)
	id = env.ID
	c.method = env.Method
	if err != nil {
		var e *rpc.Error
		errors.As(err, &e)
		refuse(refusal{status: http.StatusBadRequest, code: e.Code, reason: "kars_bad_request", msg: e.Message})
		return
	}
	op, ok := rpc.Lookup(v, env.Method)
	if !ok {
		refuse(refusal{status: http.StatusOK, code: rpc.CodeMethodNotFound, reason: "kars_method_not_served",
			msg: fmt.Sprintf("method %q is not served over A2A %s here", env.Method, v)})
		return
	}
	c.op = op
	if op.Streams() && !cfg.AllowStreaming {
		refuse(refusal{status: http.StatusOK, code: rpc.CodeUnsupportedOp, reason: "kars_streaming_not_allowed",
			msg: "streaming is not allowed for this sandbox (spec.a2a.allowStreaming is false)"})
		return
	}
	if c.trust < cfg.MinimumTrustScore {
		refuse(refusal{status: http.StatusForbidden, code: rpc.CodeUnauthorized, reason: "kars_trust_too_low",
			msg: fmt.Sprintf("the caller's trust score %d is below this sandbox's minimum %d", c.trust, cfg.MinimumTrustScore)})
		return
	}
	if ok, retry := i.buckets.Allow(c.caller, ratelimit.PerMinute(cfg.RateLimit.RPM, cfg.RateLimit.Burst), i.clock.Now()); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int((retry+time.Second-1)/time.Second))))
		refuse(refusal{status: http.StatusTooManyRequests, code: rpc.CodeRateLimited, reason: "kars_rate_limited",
			msg: fmt.Sprintf("the caller exceeded this sandbox's rate limit (%d/min, burst %d)", cfg.RateLimit.RPM, cfg.RateLimit.Burst)})
		return
	}
	c.sessionMax = time.Duration(cfg.SessionMaxSeconds) * time.Second
	c.agentURL = cfg.AgentURL
	c.decision = "" // the interceptor's to decide
	r2 := r.Clone(context.WithValue(r.Context(), callKey{}, c))
	r2.Body = io.NopCloser(bytes.NewReader(body))
	r2.ContentLength = int64(len(body))
	aw := &auditWriter{ResponseWriter: w, ing: i, c: c, r: r}
	if v == rpc.V10 {
		i.v10.ServeHTTP(aw, r2)
	} else {
		i.v03.ServeHTTP(aw, r2)
	}
	aw.finish()
}

// identify reads the caller the gateway vouches for and re-verifies its
// card: the signature, the key's thumbprint equal to the gateway's claim
// (the TLS client key it saw) and one of the allowed callers.
func (i *Ingress) identify(r *http.Request, c *call) *refusal {
	unauth := func(reason, msg string) *refusal {
		return &refusal{status: http.StatusUnauthorized, code: rpc.CodeUnauthenticated, reason: reason, msg: msg}
	}
	c.caller = r.Header.Get(rpc.HeaderCallerThumbprint)
	raw, err := base64.RawURLEncoding.DecodeString(r.Header.Get(rpc.HeaderCallerCard))
	if err != nil || len(raw) == 0 {
		return unauth("kars_caller_card_missing", "the caller's signed AgentCard did not come with the call")
	}
	v, err := i.callerCards.Verify(raw)
	if err != nil {
		return unauth("kars_caller_card_invalid", "the caller's AgentCard does not verify: "+err.Error())
	}
	c.subject = v.Name
	if v.Thumbprint != c.caller {
		return unauth("kars_caller_card_key_mismatch", "the caller's AgentCard is signed by "+v.Thumbprint+", not by the key the caller authenticated with")
	}
	if !slices.ContainsFunc(c.cfg.Callers, func(a routerconfig.A2ACaller) bool { return a.Thumbprint == c.caller }) {
		return &refusal{status: http.StatusForbidden, code: rpc.CodeUnauthorized, reason: "kars_caller_not_allowed",
			msg: "caller " + c.caller + " is not among this sandbox's allowedCallers"}
	}
	t, err := strconv.Atoi(r.Header.Get(rpc.HeaderCallerTrust))
	if err != nil || t < 0 || t > 1000 {
		return unauth("kars_caller_trust_missing", "the gateway did not state the caller's trust score")
	}
	c.trust = t
	return nil
}

// readCapped reads the body, refusing one over capBytes (from its declared
// length before reading, else as it arrives).
func readCapped(w http.ResponseWriter, r *http.Request, capBytes int64) ([]byte, *refusal) {
	tooBig := &refusal{status: http.StatusRequestEntityTooLarge, code: rpc.CodeInvalidRequest, reason: "kars_body_too_large",
		msg: fmt.Sprintf("the request body exceeds this sandbox's cap of %d bytes", capBytes)}
	if r.ContentLength > capBytes {
		return nil, tooBig
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, capBytes))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return nil, tooBig
		}
		return nil, &refusal{status: http.StatusBadRequest, code: rpc.CodeParseError, reason: "kars_bad_request", msg: "reading the body: " + err.Error()}
	}
	return b, nil
}

func payloadHash(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// interceptor runs inside the SDK with the typed request: it binds the
// call to its caller (task ownership), and decides messages: skill,
// session age, governance. A call the SDK's handler refuses as malformed
// after the interceptor allowed it is recorded as refused (After).
type interceptor struct{ i *Ingress }

// errRecordedUndecided refuses a call whose audit entry was committed
// before the interceptor saw it (its caller went away first): the entry
// says it was refused, so it must not go on.
var errRecordedUndecided = fmt.Errorf("%w: the call was recorded as refused before it was decided", a2a.ErrInternalError)

// Before implements a2asrv.CallInterceptor. It decides under the call's
// lock, so that an audit entry committed meanwhile (its caller gone)
// waits for the decision and records it.
func (it interceptor) Before(ctx context.Context, cc *a2asrv.CallContext, req *a2asrv.Request) (context.Context, any, error) {
	c := callFrom(ctx)
	if c == nil {
		return ctx, nil, a2a.ErrUnauthenticated
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.committed {
		return ctx, nil, errRecordedUndecided
	}
	c.decision = "allow"
	cc.User = a2asrv.NewAuthenticatedUser(c.caller, nil)
	m, ok := req.Payload.(*a2a.SendMessageRequest)
	if !ok {
		return ctx, nil, nil
	}
	deny := func(reason, msg string) (context.Context, any, error) {
		c.decision, c.reason, c.refusal = "deny", msg, reason
		return ctx, nil, a2a.NewError(a2a.ErrUnauthorized, msg).WithDetails(map[string]any{"reason": reason})
	}
	skill, err := skillOf(m)
	if err != nil {
		return deny("kars_skill_missing", err.Error())
	}
	c.skill = skill
	c.replyAsMessage = c.op == rpc.OpSendMessage && (m.Config == nil || !m.Config.ReturnImmediately) &&
		m.Message != nil && m.Message.TaskID == ""
	if !slices.ContainsFunc(c.cfg.Skills, func(s routerconfig.A2ASkill) bool { return s.Name == skill }) {
		return deny("kars_skill_not_advertised", fmt.Sprintf("skill %q is not advertised by this sandbox", skill))
	}
	if m.Message != nil && it.i.sessions.expired(c.caller, m.Message.ContextID, it.i.now(), c.sessionMax) {
		return deny("kars_session_expired", fmt.Sprintf("A2A session %s ran past sessionMaxSeconds (%s): start a new context", m.Message.ContextID, c.sessionMax))
	}
	d := it.i.o.Decide(ctx, Action(skill), map[string]any{
		"caller": c.caller, "caller_subject": c.subject, "trust": c.trust, "method": c.op.String(),
	})
	c.rule = d.Rule
	if !d.Allowed() {
		c.decision, c.reason, c.refusal = d.Verdict.String(), d.Reason, "kars_policy_"+d.Verdict.String()
		return ctx, nil, a2a.NewError(a2a.ErrUnauthorized, "kars governance: "+d.Verdict.String()+": "+d.Reason).
			WithDetails(map[string]any{"reason": c.refusal, "rule": d.Rule})
	}
	c.reason = d.Reason
	return ctx, nil, nil
}

// After implements a2asrv.CallInterceptor: a call the handler refused as
// malformed after the interceptor allowed it (the SDK checks a message's
// id, role and parts only then; the task store, a list's page) reached
// nothing, and is recorded as refused, not allowed. An answer already
// committed is not revised: its entry is on record.
func (interceptor) After(ctx context.Context, _ *a2asrv.CallContext, resp *a2asrv.Response) error {
	c := callFrom(ctx)
	if c == nil || !errors.Is(resp.Err, a2a.ErrInvalidParams) {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.committed && c.decision == "allow" {
		c.decision, c.rule, c.refusal, c.reason = "refused", "", refusalBadParams, resp.Err.Error()
	}
	return nil
}

// refusalBadParams records a call a binding or the SDK's handler refused
// as malformed: the caller gets the binding's own invalid-params (or
// parse) error, not a kars one.
const refusalBadParams = "kars_bad_params"

// Action is the governance action of an inbound call to skill.
func Action(skill string) string { return "a2a:receive:" + skill }

// skillOf reads the skill a message invokes: "skill" in the message's
// metadata or the request's (A2A carries no skill field; the card
// documents this convention). Both present must agree.
func skillOf(m *a2a.SendMessageRequest) (string, error) {
	get := func(md map[string]any) (string, bool, error) {
		v, ok := md["skill"]
		if !ok {
			return "", false, nil
		}
		s, ok := v.(string)
		if !ok || s == "" {
			return "", true, errors.New(`metadata "skill" must be a non-empty string`)
		}
		return s, true, nil
	}
	var fromMsg string
	var inMsg bool
	if m.Message != nil {
		var err error
		if fromMsg, inMsg, err = get(m.Message.Metadata); err != nil {
			return "", err
		}
	}
	fromReq, inReq, err := get(m.Metadata)
	if err != nil {
		return "", err
	}
	switch {
	case inMsg && inReq && fromMsg != fromReq:
		return "", fmt.Errorf("the message's skill %q and the request's %q disagree", fromMsg, fromReq)
	case inMsg:
		return fromMsg, nil
	case inReq:
		return fromReq, nil
	}
	return "", errors.New(`name the skill to invoke in the message's metadata, e.g. {"skill": "search.web"}`)
}

// auditWriter writes the call's audit entry, durably, before the first
// byte of the answer: the answer (or the first event of a stream) waits
// for it, and an entry that cannot be written replaces the answer with a
// 503.
//
// The entry is committed when the answer's first byte is about to leave
// (its first Write or Flush), not when a handler sets the status: the
// SDK's 1.0 binding sets a stream's headers before its interceptor has
// decided the call, and an entry committed then would record the call as
// undecided. The status line waits with the entry, so nothing leaves
// before it.
type auditWriter struct {
	http.ResponseWriter
	ing     *Ingress
	c       *call
	r       *http.Request
	status  int // set by WriteHeader, sent by start
	started bool
	failed  bool
}

// WriteHeader records the status; start sends it.
func (a *auditWriter) WriteHeader(status int) {
	if a.status == 0 {
		a.status = status
	}
}

// start commits the entry and sends the status line, or a 503 in place of
// the answer when the entry cannot be written.
func (a *auditWriter) start() {
	if a.started {
		return
	}
	a.started = true
	a.c.status = cmp.Or(a.status, http.StatusOK)
	if err := a.commit(); err != nil {
		a.failed = true
		(&rpc.Error{Code: rpc.CodeInternalError, Message: "kars-router could not write the call to its audit log: " + err.Error(),
			Reason: "kars_audit_unavailable"}).Write(a.ResponseWriter, http.StatusServiceUnavailable, nil)
		return
	}
	a.ResponseWriter.WriteHeader(a.c.status)
}

// finish ends the answer once the binding has returned: a status it set
// without writing a body is sent, and an answer it never started is still
// on record.
func (a *auditWriter) finish() {
	if a.status != 0 {
		a.start()
	}
	a.commit()
}

func (a *auditWriter) Write(b []byte) (int, error) {
	a.start()
	if a.failed {
		return len(b), nil
	}
	return a.ResponseWriter.Write(b)
}

// Flush implements http.Flusher for the SDK's Server-Sent Events writer.
func (a *auditWriter) Flush() {
	a.start()
	if f, ok := a.ResponseWriter.(http.Flusher); ok && !a.failed {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (a *auditWriter) Unwrap() http.ResponseWriter { return a.ResponseWriter }

// commit appends the call's audit entry once and sets the answer's
// decision and latency headers. A call still undecided was answered by its
// binding without reaching the interceptor: the binding refused its params
// as malformed, or the caller went away first (the interceptor then
// refuses it, should it still run).
func (a *auditWriter) commit() error {
	c := a.c
	c.mu.Lock()
	if c.committed {
		c.mu.Unlock()
		return c.commitErr
	}
	c.committed = true
	if c.decision == "" {
		c.decision, c.refusal = "refused", refusalBadParams
		c.reason = "the A2A " + c.version.String() + " binding refused the call's params as malformed before any handler saw them"
		if a.r.Context().Err() != nil {
			c.refusal, c.reason = "kars_caller_gone", "the caller went away before the call was decided"
		}
	}
	decision, rule, reason, refusal, skill := c.decision, c.rule, c.reason, c.refusal, c.skill
	c.mu.Unlock()
	lat := a.ing.now().Sub(c.start)
	action := "a2a:" + c.op.String()
	if skill != "" {
		action = Action(skill)
	}
	attrs := map[string]string{
		"op":                "a2a",
		"rpc_method":        c.method,
		"caller_thumbprint": c.caller,
		"caller_subject":    c.subject,
		"caller_trust":      strconv.Itoa(c.trust),
		"status":            strconv.Itoa(c.status),
	}
	if c.version != 0 {
		attrs["a2a_version"] = c.version.String()
	}
	if c.gatewayLatency != "" {
		attrs["gateway_latency_us"] = c.gatewayLatency
	}
	if c.op.Streams() {
		attrs["stream"] = "true"
	}
	if refusal != "" {
		attrs["refusal"] = refusal
	}
	attrs["router_latency_us"] = strconv.FormatInt(lat.Microseconds(), 10)
	c.commitErr = a.ing.o.Audit(a.r.Context(), audit.Record{
		Sandbox: a.ing.o.Sandbox, Agent: a.ing.o.Agent, Action: action, Decision: decision, Rule: rule,
		Reason: reason, PayloadSHA256: c.payload, Latency: lat, Attrs: attrs,
	})
	h := a.ResponseWriter.Header()
	h.Set(rpc.HeaderRouterLatency, strconv.FormatInt(lat.Microseconds(), 10))
	h.Set(rpc.HeaderDecision, decision)
	a.ing.log.LogAttrs(a.r.Context(), slog.LevelInfo, "a2a",
		slog.String("action", action), slog.String("decision", decision), slog.String("method", c.method),
		slog.String("caller", c.caller), slog.Int("status", c.status), slog.Duration("latency", lat),
		slog.String("payload_sha256", c.payload), slog.String("refusal", refusal))
	return c.commitErr
}
