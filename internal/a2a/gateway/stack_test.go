package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/a2a/a2atest"
	"github.com/kars-io/kars/internal/a2a/ingress"
	"github.com/kars-io/kars/internal/a2a/routes"
	"github.com/kars-io/kars/internal/a2a/rpc"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/trust"
)

// stack is a caller → gateway → router ingress → agent chain on loopback,
// with real TLS everywhere: the public endpoint, the gateway's pinned mTLS
// to the router, the callers' client certificates.
type stack struct {
	t        testing.TB
	agent    *a2atest.Agent
	gw       *Gateway
	gwSrv    *httptest.Server
	public   *a2atest.Identity // the gateway's public certificate
	gwClient *a2atest.Identity // the gateway's identity towards routers
	router   *a2atest.Identity
	ingSrv   *httptest.Server
	cfg      atomic.Pointer[routerconfig.A2A]
	route    routes.Route
	caller   *a2atest.Identity
	card     []byte
	gwAudit  string
	trust    *trust.Store
}

const sandbox = "kars-research-bot/research-bot"

func newStack(t testing.TB, minTrust int, rl routes.RateLimit) *stack {
	t.Helper()
	s := &stack{t: t, agent: a2atest.NewAgent(t),
		public:   a2atest.NewIdentity(t, "a2a.kars.test", "a2a.kars.test"),
		gwClient: a2atest.NewIdentity(t, "kars-a2a-gateway"),
		router:   a2atest.NewIdentity(t, "router", "research-bot-router.kars-research-bot.svc"),
		caller:   a2atest.NewIdentity(t, "partner")}
	s.card = a2atest.CallerCard(t, s.caller, "partner-planner")
	dir := t.TempDir()
	certFile, keyFile := s.router.WriteFiles(t, dir, "router")
	expires := time.Now().Add(time.Hour)
	s.cfg.Store(&routerconfig.A2A{
		TLSCertFile: certFile, TLSKeyFile: keyFile,
		GatewayPins: []string{ingress.SPKIPin(s.gwClient.Cert)},
		PublicURL:   "https://a2a.kars.test/a2a/" + sandbox, AgentURL: s.agent.URL, ExpiresAt: expires,
		Callers:   []routerconfig.A2ACaller{{Thumbprint: s.caller.Thumbprint(t)}},
		Skills:    []routerconfig.A2ASkill{{Name: "search.web"}, {Name: "summarize.text"}},
		RateLimit: routerconfig.A2ARateLimit{RPM: rl.RPM * 10, Burst: rl.Burst * 10}, BodyCapBytes: 1 << 20, SessionMaxSeconds: 60,
		MinimumTrustScore: minTrust, AllowStreaming: true,
	})
	eng := governance.NewEngine()
	if err := eng.Load(&governance.Policy{Rules: []governance.Rule{{Name: "skills", Effect: governance.EffectAllow, Actions: []string{"a2a:receive:*"}}}}); err != nil {
		t.Fatal(err)
	}
	routerAudit, err := audit.Open(audit.Options{Dir: filepath.Join(dir, "router-audit"), Sandbox: sandbox})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { routerAudit.Close() })
	_, cardKey, _ := ed25519.GenerateKey(rand.Reader)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ing := ingress.New(ingress.Options{Sandbox: sandbox, Agent: sandbox, CardKey: cardKey, Logger: quiet,
		Config: func() *routerconfig.A2A { return s.cfg.Load() },
		Decide: func(_ context.Context, a string, args map[string]any) governance.Decision {
			return eng.Decide(&governance.Request{Agent: sandbox, Action: a, Args: args})
		},
		Audit: func(ctx context.Context, rec audit.Record) error { _, err := routerAudit.Append(ctx, rec); return err },
	})
	s.ingSrv = httptest.NewUnstartedServer(ing)
	s.ingSrv.TLS = ing.TLSConfig()
	s.ingSrv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.ingSrv.StartTLS()
	t.Cleanup(s.ingSrv.Close)

	s.trust, err = trust.Open(filepath.Join(dir, "trust.json"), trust.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.trust.Close() })
	s.gwAudit = filepath.Join(dir, "gateway-audit")
	gwSink, err := audit.Open(audit.Options{Dir: s.gwAudit, Sandbox: "kars-a2a-gateway"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gwSink.Close() })
	s.gw, err = New(Options{ClientCert: s.gwClient.TLS, Trust: s.trust, Audit: gwSink, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	s.route = routes.Route{Sandbox: sandbox, Router: strings.TrimPrefix(s.ingSrv.URL, "https://"),
		ServerName: "research-bot-router.kars-research-bot.svc", RouterCertPEM: string(s.router.CertPEM),
		Callers: []routes.Caller{{Thumbprint: s.caller.Thumbprint(t), DisplayName: "partner-planner"}},
		Skills:  []string{"search.web", "summarize.text"}, MinimumTrustScore: minTrust, RateLimit: rl,
		BodyCapBytes: 1 << 20, AllowStreaming: true, ExpiresAt: expires}
	s.gw.SetTable(&routes.Table{Routes: []routes.Route{s.route}})
	s.gwSrv = httptest.NewUnstartedServer(s.gw)
	s.gwSrv.TLS = TLSConfig(s.public.TLS)
	s.gwSrv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.gwSrv.StartTLS()
	t.Cleanup(s.gwSrv.Close)
	return s
}

// URL is the sandbox's public endpoint.
func (s *stack) URL() string { return s.gwSrv.URL + PathPrefix + sandbox }

// callerClient is a foreign agent's HTTP client: its TLS client
// certificate, the gateway's public certificate as root, and its card in
// the header.
func (s *stack) callerClient(id *a2atest.Identity, cardRaw []byte) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.public.Pool(), ServerName: "a2a.kars.test"}, MaxIdleConnsPerHost: 64}
	if id != nil {
		tr.TLSClientConfig.Certificates = []tls.Certificate{id.TLS}
	}
	h := map[string]string{}
	if cardRaw != nil {
		h[rpc.HeaderCallerCard] = a2atest.CardHeader(cardRaw)
	}
	return &http.Client{Transport: a2atest.Headers(tr, h)}
}
