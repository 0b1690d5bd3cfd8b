// Package gateway is kars-a2a-gateway: the only public A2A endpoint of a
// kars cluster (docs/a2a.md). It terminates TLS for foreign agents and
// lets a call through to a sandbox's router only when
//
//   - the sandbox has a route (the controller writes the table while the
//     exposure is enabled and unexpired);
//   - the caller authenticated with a TLS client certificate whose key's
//     RFC 7638 thumbprint is one of the route's allowed callers;
//   - the caller's AgentCard (Kars-A2A-Caller-Card) is signed by that
//     same key (detached JWS over the RFC 8785 canonical card);
//   - the caller's trust score (kept here per caller) meets the route's
//     minimum;
//   - the caller is within its rate limit, the body within the cap, and
//     the JSON-RPC method one the requested protocol version names.
//
// It forwards over mTLS: its own client certificate (pinned by the
// routers) and the route's router certificate (pinned here). Every call is
// audited in the gateway's own hash-chained log. The gateway holds no
// model credential and needs none; a test checks with go list -deps that
// it links no credential code.
package gateway

import (
	"bytes"
	"context"
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
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/kars-io/kars/internal/a2a/card"
	"github.com/kars-io/kars/internal/a2a/routes"
	"github.com/kars-io/kars/internal/a2a/rpc"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/ratelimit"
	"github.com/kars-io/kars/internal/trust"
)

// PathPrefix starts every sandbox's public path: /a2a/<namespace>/<name>.
const PathPrefix = "/a2a/"

// Options configure a Gateway.
type Options struct {
	// ClientCert is the gateway's identity towards the routers.
	ClientCert tls.Certificate
	// Dial connects to a router; nil means a net.Dialer. `kars dev`
	// passes the local substrate's, which dials into a pod.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Trust keeps callers' scores; required.
	Trust *trust.Store
	// Audit receives one record per call; required.
	Audit audit.Sink
	// Now is the clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Gateway serves the public A2A endpoint. Create it with New, feed it
// routing tables with SetTable.
type Gateway struct {
	o     Options
	now   func() time.Time
	log   *slog.Logger
	clock ratelimit.Clock
	table atomic.Pointer[live]

	cards card.CachedVerifier
	// buckets are per sandbox and caller, for allowed callers only.
	buckets ratelimit.Keyed
}

// live is a routing table with, per route, the transport that reaches its
// router and a context canceled when the route goes away or changes: a
// revoked exposure also ends the calls and streams in flight.
type live struct {
	table  *routes.Table
	routes map[string]*liveRoute
}

type liveRoute struct {
	route  *routes.Route
	key    string
	client *http.Client
	ctx    context.Context
	cancel context.CancelFunc
}

// New returns a gateway with an empty routing table.
func New(o Options) (*Gateway, error) {
	if o.Trust == nil || o.Audit == nil {
		return nil, errors.New("gateway: a trust store and an audit sink are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	g := &Gateway{o: o, now: o.Now, log: o.Logger, clock: ratelimit.NewClock()}
	g.table.Store(&live{table: &routes.Table{}, routes: map[string]*liveRoute{}})
	return g, nil
}

// SetTable makes t the routing table. Routes that disappear or change end
// their calls in flight; unchanged routes keep their connections.
func (g *Gateway) SetTable(t *routes.Table) {
	if t == nil {
		t = &routes.Table{}
	}
	old := g.table.Load()
	next := &live{table: t, routes: map[string]*liveRoute{}}
	for i := range t.Routes {
		r := &t.Routes[i]
		key, _ := json.Marshal(r)
		if o, ok := old.routes[r.Sandbox]; ok && o.key == string(key) {
			o.route = r
			next.routes[r.Sandbox] = o
			continue
		}
		lr, err := g.newLiveRoute(r, string(key))
		if err != nil {
			g.log.Error("a2a route refused", "sandbox", r.Sandbox, "err", err)
			continue
		}
		next.routes[r.Sandbox] = lr
	}
	g.table.Store(next)
	for name, o := range old.routes {
		if n, ok := next.routes[name]; !ok || n != o {
			o.cancel()
			o.client.CloseIdleConnections()
		}
	}
	g.log.Info("a2a routing table", "routes", len(next.routes))
}

func (g *Gateway) newLiveRoute(r *routes.Route, key string) (*liveRoute, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(r.RouterCertPEM)) {
		return nil, errors.New("the router certificate is not PEM")
	}
	dial := g.o.Dial
	if dial == nil {
		dial = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	tr := &http.Transport{
		Proxy:       nil,
		DialContext: dial,
		TLSClientConfig: &tls.Config{
			MinVersion:   tls.VersionTLS13,
			RootCAs:      pool, // the route's router and nothing else
			ServerName:   r.ServerName,
			Certificates: []tls.Certificate{g.o.ClientCert},
		},
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 10 * time.Minute,
	}
	// The route ends at its expiry even if the controller is late to
	// remove it: calls and streams in flight end with it.
	ctx, cancel := context.WithDeadline(context.Background(), r.ExpiresAt)
	return &liveRoute{route: r, key: key, client: &http.Client{Transport: tr}, ctx: ctx, cancel: cancel}, nil
}

// Routes returns the current table.
func (g *Gateway) Routes() *routes.Table { return g.table.Load().table }

// TLSConfig is the public endpoint's TLS: cert serves it, and every client
// must present a certificate (any issuer: callers are pinned by their
// key's thumbprint, not by a CA).
func TLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert,
	}
}

// call is one request's audit record in the making.
type call struct {
	start    time.Time
	sandbox  string
	caller   string
	subject  string
	trust    int
	method   string
	version  rpc.Version
	payload  string
	decision string
	refusal  string
	reason   string
	status   int
	routerUS string
}

// ServeHTTP implements http.Handler.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := &call{start: g.now(), decision: "refused"}
	sandbox, sub, ok := splitPath(r.URL.Path)
	if !ok {
		g.refuse(w, r, c, nil, http.StatusNotFound, rpc.CodeMethodNotFound, "kars_no_route", "A2A agents are served at /a2a/<namespace>/<name>")
		return
	}
	c.sandbox = sandbox
	lv := g.table.Load()
	lr, ok := lv.routes[sandbox]
	if !ok || !g.now().Before(lr.route.ExpiresAt) {
		g.refuse(w, r, c, nil, http.StatusNotFound, rpc.CodeMethodNotFound, "kars_no_route", "no A2A agent is exposed at "+PathPrefix+sandbox)
		return
	}
	route := lr.route
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		g.refuse(w, r, c, nil, http.StatusUnauthorized, rpc.CodeUnauthenticated, "kars_client_cert_missing", "a TLS client certificate is required")
		return
	}
	leaf := r.TLS.PeerCertificates[0]
	if now := g.now(); now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		g.refuse(w, r, c, nil, http.StatusUnauthorized, rpc.CodeUnauthenticated, "kars_client_cert_expired", "the TLS client certificate is not valid now")
		return
	}
	tp, err := card.KeyThumbprint(leaf.PublicKey)
	if err != nil {
		g.refuse(w, r, c, nil, http.StatusUnauthorized, rpc.CodeUnauthenticated, "kars_client_key_unsupported", "the TLS client key must be Ed25519 or ECDSA P-256: "+err.Error())
		return
	}
	c.caller = tp
	if !route.Allows(tp) {
		g.refuse(w, r, c, nil, http.StatusForbidden, rpc.CodeUnauthorized, "kars_caller_not_allowed", "caller "+tp+" is not allowed to call "+sandbox)
		return
	}
	if sub != "" {
		g.serveCard(w, r, c, lr, sub)
		return
	}
	g.serveRPC(w, r, c, lr)
}

// splitPath parses /a2a/<namespace>/<name>[/.well-known/<file>].
func splitPath(p string) (sandbox, sub string, ok bool) {
	rest, ok := strings.CutPrefix(p, PathPrefix)
	if !ok {
		return "", "", false
	}
	parts := strings.SplitN(rest, "/", 3)
	if len(parts) < 2 || !dnsLabel(parts[0]) || !dnsLabel(parts[1]) {
		return "", "", false
	}
	sandbox = parts[0] + "/" + parts[1]
	if len(parts) == 2 || parts[2] == "" {
		return sandbox, "", true
	}
	switch "/" + parts[2] {
	case "/.well-known/agent-card.json", "/.well-known/agent.json", "/.well-known/jwks.json":
		return sandbox, "/" + parts[2], true
	}
	return "", "", false
}

// dnsLabel accepts Kubernetes names (RFC 1123 labels and dotted names).
func dnsLabel(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func (g *Gateway) serveCard(w http.ResponseWriter, r *http.Request, c *call, lr *liveRoute, sub string) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		g.refuse(w, r, c, nil, http.StatusMethodNotAllowed, rpc.CodeInvalidRequest, "kars_method_not_allowed", "the card is fetched with GET")
		return
	}
	ctx, cancel := joinCancel(r.Context(), lr.ctx)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+lr.route.Router+sub, nil)
	resp, err := lr.client.Do(req)
	if err != nil {
		g.refuse(w, r, c, nil, http.StatusBadGateway, rpc.CodeInternalError, "kars_router_unreachable", "the sandbox's router could not be reached")
		g.log.Warn("a2a router unreachable", "sandbox", c.sandbox, "err", err)
		return
	}
	defer resp.Body.Close()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, io.LimitReader(resp.Body, card.MaxCardBytes))
}

func (g *Gateway) serveRPC(w http.ResponseWriter, r *http.Request, c *call, lr *liveRoute) {
	route := lr.route
	var id json.RawMessage
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		g.refuse(w, r, c, id, http.StatusMethodNotAllowed, rpc.CodeInvalidRequest, "kars_method_not_allowed", "JSON-RPC calls are POSTed")
		return
	}
	cardB64 := r.Header.Get(rpc.HeaderCallerCard)
	raw, err := base64.RawURLEncoding.DecodeString(cardB64)
	if err != nil || len(raw) == 0 {
		g.refuse(w, r, c, id, http.StatusUnauthorized, rpc.CodeUnauthenticated, "kars_caller_card_missing",
			"send your signed AgentCard, base64url-encoded, in the "+rpc.HeaderCallerCard+" header")
		return
	}
	v, err := g.cards.Verify(raw)
	if err != nil {
		g.penalize(c)
		g.refuse(w, r, c, id, http.StatusUnauthorized, rpc.CodeUnauthenticated, "kars_caller_card_invalid", "your AgentCard does not verify: "+err.Error())
		return
	}
	c.subject = v.Name
	if v.Thumbprint != c.caller {
		g.penalize(c)
		g.refuse(w, r, c, id, http.StatusUnauthorized, rpc.CodeUnauthenticated, "kars_caller_card_key_mismatch",
			"your AgentCard is signed by "+v.Thumbprint+", not by the key of your TLS client certificate ("+c.caller+")")
		return
	}
	ok, score, _ := g.o.Trust.Check(c.caller)
	_ = ok // the store's own threshold is not the route's
	c.trust = score
	if score < route.MinimumTrustScore {
		g.refuse(w, r, c, id, http.StatusForbidden, rpc.CodeUnauthorized, "kars_trust_too_low",
			fmt.Sprintf("your trust score %d is below this agent's minimum %d", score, route.MinimumTrustScore))
		return
	}
	if ok, retry := g.buckets.Allow(c.sandbox+"\x00"+c.caller, ratelimit.PerMinute(route.RateLimit.RPM, route.RateLimit.Burst), g.clock.Now()); !ok {
		g.o.Trust.RecordFailure(c.caller)
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int((retry+time.Second-1)/time.Second))))
		g.refuse(w, r, c, id, http.StatusTooManyRequests, rpc.CodeRateLimited, "kars_rate_limited",
			fmt.Sprintf("rate limit exceeded (%d/min, burst %d)", route.RateLimit.RPM, route.RateLimit.Burst))
		return
	}
	ver, err := rpc.VersionOf(r.Header.Get(rpc.HeaderVersion))
	if err != nil {
		g.refuse(w, r, c, id, http.StatusBadRequest, rpc.CodeVersionNotSupported, "kars_version_not_supported", err.Error())
		return
	}
	c.version = ver
	if r.ContentLength > route.BodyCapBytes {
		g.refuse(w, r, c, id, http.StatusRequestEntityTooLarge, rpc.CodeInvalidRequest, "kars_body_too_large", fmt.Sprintf("the body exceeds the cap of %d bytes", route.BodyCapBytes))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, route.BodyCapBytes))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			g.refuse(w, r, c, id, http.StatusRequestEntityTooLarge, rpc.CodeInvalidRequest, "kars_body_too_large", fmt.Sprintf("the body exceeds the cap of %d bytes", route.BodyCapBytes))
		} else {
			g.refuse(w, r, c, id, http.StatusBadRequest, rpc.CodeParseError, "kars_bad_request", "reading the body: "+err.Error())
		}
		return
	}
	c.payload = payloadHash(body)
	env, err := rpc.ParseEnvelope(body)
	id, c.method = env.ID, env.Method
	if err != nil {
		var e *rpc.Error
		errors.As(err, &e)
		g.refuse(w, r, c, id, http.StatusBadRequest, e.Code, "kars_bad_request", e.Message)
		return
	}
	op, ok := rpc.Lookup(ver, env.Method)
	if !ok {
		g.refuse(w, r, c, id, http.StatusOK, rpc.CodeMethodNotFound, "kars_method_not_served", fmt.Sprintf("method %q is not served over A2A %s", env.Method, ver))
		return
	}
	if op.Streams() && !route.AllowStreaming {
		g.refuse(w, r, c, id, http.StatusOK, rpc.CodeUnsupportedOp, "kars_streaming_not_allowed", "streaming is not allowed for this agent")
		return
	}
	g.forward(w, r, c, lr, body, cardB64)
}

// forward relays the call to the route's router and its answer back,
// streaming Server-Sent Events as they come.
func (g *Gateway) forward(w http.ResponseWriter, r *http.Request, c *call, lr *liveRoute, body []byte, cardB64 string) {
	ctx, cancel := joinCancel(r.Context(), lr.ctx)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+lr.route.Router+"/", bytes.NewReader(body))
	req.ContentLength = int64(len(body))
	// Only what the router needs travels: the caller's other headers
	// (cookies, authorization, proxies' additions) stay here.
	req.Header.Set("Content-Type", "application/json")
	if a := r.Header.Get("Accept"); a != "" {
		req.Header.Set("Accept", a)
	}
	req.Header.Set(rpc.HeaderVersion, c.version.String())
	req.Header.Set(rpc.HeaderCallerCard, cardB64)
	req.Header.Set(rpc.HeaderCallerThumbprint, c.caller)
	req.Header.Set(rpc.HeaderCallerSubject, c.subject)
	req.Header.Set(rpc.HeaderCallerTrust, strconv.Itoa(c.trust))
	req.Header.Set(rpc.HeaderGatewayLatency, strconv.FormatInt(g.now().Sub(c.start).Microseconds(), 10))
	resp, err := lr.client.Do(req)
	if err != nil {
		reason, msg := "kars_router_unreachable", "the sandbox's router could not be reached"
		if lr.ctx.Err() != nil {
			reason, msg = "kars_no_route", "the agent's exposure ended"
		}
		g.log.Warn("a2a forward failed", "sandbox", c.sandbox, "err", err)
		g.refuse(w, r, c, nil, http.StatusBadGateway, rpc.CodeInternalError, reason, msg)
		return
	}
	defer resp.Body.Close()
	c.status = resp.StatusCode
	c.decision = resp.Header.Get(rpc.HeaderDecision)
	if c.decision == "" {
		c.decision = "unknown"
	}
	c.routerUS = resp.Header.Get(rpc.HeaderRouterLatency)
	switch c.decision {
	case "allow":
		g.o.Trust.RecordSuccess(c.caller)
	case "deny":
		g.o.Trust.PenalizeViolation(c.caller)
	}
	if err := g.record(r.Context(), c); err != nil {
		(&rpc.Error{Code: rpc.CodeInternalError, Message: "the gateway could not write its audit log", Reason: "kars_audit_unavailable"}).Write(w, http.StatusServiceUnavailable, nil)
		return
	}
	rpc.Relay(w, resp, "Content-Type", "Cache-Control", "Retry-After", rpc.HeaderRouterLatency)
}

// joinCancel returns a context canceled when either a or b is.
func joinCancel(a, b context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(a)
	stop := context.AfterFunc(b, cancel)
	return ctx, func() { stop(); cancel() }
}

// penalize lowers the trust of a caller whose certificate checked out but
// whose card did not: a key holder presenting a bad card is suspicious.
func (g *Gateway) penalize(c *call) {
	if c.caller != "" {
		g.o.Trust.PenalizeViolation(c.caller)
	}
}

// refuse answers the call itself, audited.
func (g *Gateway) refuse(w http.ResponseWriter, r *http.Request, c *call, id json.RawMessage, status, code int, reason, msg string) {
	c.status, c.refusal, c.reason = status, reason, msg
	if err := g.record(r.Context(), c); err != nil {
		status, code, reason, msg = http.StatusServiceUnavailable, rpc.CodeInternalError, "kars_audit_unavailable", "the gateway could not write its audit log"
	}
	(&rpc.Error{Code: code, Message: msg, Reason: reason}).Write(w, status, id)
}

// record appends the call's audit entry, durably.
func (g *Gateway) record(ctx context.Context, c *call) error {
	lat := g.now().Sub(c.start)
	attrs := map[string]string{
		"op":                 "a2a-gateway",
		"rpc_method":         c.method,
		"caller_thumbprint":  c.caller,
		"caller_subject":     c.subject,
		"caller_trust":       strconv.Itoa(c.trust),
		"status":             strconv.Itoa(c.status),
		"gateway_latency_us": strconv.FormatInt(lat.Microseconds(), 10),
	}
	if c.version != 0 {
		attrs["a2a_version"] = c.version.String()
	}
	if c.routerUS != "" {
		attrs["router_latency_us"] = c.routerUS
	}
	if c.refusal != "" {
		attrs["refusal"] = c.refusal
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_, err := g.o.Audit.Append(actx, audit.Record{
		Sandbox: c.sandbox, Agent: c.caller, Action: "a2a:receive", Decision: c.decision,
		Reason: c.reason, PayloadSHA256: c.payload, Latency: lat, Attrs: attrs,
	})
	g.log.LogAttrs(ctx, slog.LevelInfo, "a2a call", slog.String("sandbox", c.sandbox), slog.String("caller", c.caller),
		slog.String("method", c.method), slog.String("decision", c.decision), slog.Int("status", c.status),
		slog.String("refusal", c.refusal), slog.Duration("latency", lat))
	if err != nil {
		g.log.Error("gateway audit append failed", "err", err)
	}
	return err
}

func payloadHash(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
