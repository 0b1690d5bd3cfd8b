package router

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2aclient"

	"github.com/kars-io/kars/internal/a2a/a2atest"
	"github.com/kars-io/kars/internal/a2a/card"
	"github.com/kars-io/kars/internal/a2a/ingress"
	"github.com/kars-io/kars/internal/a2a/rpc"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
)

// TestA2AIngressServed runs kars-router from a config with an a2a section
// and calls its A2A port as the gateway would, with the official Go SDK:
// the default policy allows the advertised skill (and nothing else), the
// card is signed with a key the router generated in its state directory,
// and every call is in the audit log with the caller's identity.
func TestA2AIngressServed(t *testing.T) {
	for _, withToolPolicy := range []bool{false, true} {
		t.Run("toolpolicy="+strconv.FormatBool(withToolPolicy), func(t *testing.T) {
			dir := t.TempDir()
			agent := a2atest.NewAgent(t)
			routerID := a2atest.NewIdentity(t, "router", "router.test")
			gw := a2atest.NewIdentity(t, "gateway")
			caller := a2atest.NewIdentity(t, "partner")
			certFile, keyFile := routerID.WriteFiles(t, dir, "admin")
			c := routerconfigtest.Offline(t, dir)
			c.Sandbox = routerconfigtest.Sandbox("kars-rb", "research-bot")
			c.A2A = &routerconfig.A2A{
				Listen: "127.0.0.1:0", TLSCertFile: certFile, TLSKeyFile: keyFile,
				GatewayPins: []string{ingress.SPKIPin(gw.Cert)},
				PublicURL:   "https://gw.example/a2a/kars-rb/research-bot", AgentURL: agent.URL,
				ExpiresAt: time.Now().Add(time.Hour),
				Callers:   []routerconfig.A2ACaller{{Thumbprint: caller.Thumbprint(t)}},
				Skills:    []routerconfig.A2ASkill{{Name: "search.web"}},
				RateLimit: routerconfig.A2ARateLimit{RPM: 600}, BodyCapBytes: 65536, SessionMaxSeconds: 60,
			}
			if withToolPolicy {
				// A policy that says nothing about A2A: the advertised
				// skill is still allowed, by the rule the router adds.
				c.Governance = &governance.Policy{Name: "tp", Rules: []governance.Rule{
					{Name: "tools", Effect: governance.EffectAllow, Actions: []string{"tool:*"}},
				}}
			}
			path := routerconfigtest.Write(t, dir, c)
			addrs, stop := serving(t, ServeOptions{ConfigPath: path})
			if addrs["a2a"] == "" {
				t.Fatalf("no a2a listener: %v", addrs)
			}
			hc := &http.Client{Transport: a2atest.Headers(
				&http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{gw.TLS}, RootCAs: routerID.Pool(), ServerName: "router.test"}},
				map[string]string{
					rpc.HeaderCallerThumbprint: caller.Thumbprint(t),
					rpc.HeaderCallerCard:       a2atest.CardHeader(a2atest.CallerCard(t, caller, "partner-planner")),
					rpc.HeaderCallerTrust:      "600",
				})}
			url := "https://" + addrs["a2a"] + "/"
			cl, err := a2aclient.NewFromEndpoints(context.Background(),
				[]*a2a.AgentInterface{{URL: url, ProtocolBinding: a2a.TransportProtocolJSONRPC, ProtocolVersion: "1.0"}},
				a2aclient.WithJSONRPCTransport(hc))
			if err != nil {
				t.Fatal(err)
			}
			send := func(skill string) (a2a.SendMessageResult, error) {
				m := a2a.NewMessage(a2a.MessageRoleUser, a2a.NewTextPart("hello"))
				m.Metadata = map[string]any{"skill": skill}
				return cl.SendMessage(context.Background(), &a2a.SendMessageRequest{Message: m})
			}
			res, err := send("search.web")
			if err != nil {
				t.Fatal(err)
			}
			if m, ok := res.(*a2a.Message); !ok || m.Parts[0].Text() != "echo: hello" {
				t.Fatalf("result %+v", res)
			}
			if _, err := send("not.advertised"); err == nil {
				t.Fatal("an unadvertised skill was served")
			}
			if agent.Turns() != 1 {
				t.Fatalf("%d turns reached the agent", agent.Turns())
			}
			// The card is signed with the key in the state directory.
			resp, err := hc.Get("https://" + addrs["a2a"] + ingress.PathCard)
			if err != nil {
				t.Fatal(err)
			}
			raw := make([]byte, 64<<10)
			n, _ := resp.Body.Read(raw)
			resp.Body.Close()
			key, err := loadKeyFile(filepath.Join(c.StateDir, A2ACardKeyFile), "A2A card key")
			if err != nil {
				t.Fatal(err)
			}
			want, _ := card.KeyThumbprint(key.Public())
			if v, err := card.VerifyCard(raw[:n], card.FromJWK); err != nil || v.Thumbprint != want {
				t.Fatalf("card: %+v %v", v, err)
			}
			// The admin API names the card key that callers pin.
			req, _ := http.NewRequest("GET", "http://"+addrs["admin"]+"/admin/v1/a2a", nil)
			req.Header.Set("Authorization", "Bearer admin-token")
			aresp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var info A2AInfo
			json.NewDecoder(aresp.Body).Decode(&info)
			aresp.Body.Close()
			if !info.Exposed || info.CardKeyThumbprint != want || info.PublicURL != c.A2A.PublicURL {
				t.Fatalf("admin a2a view %+v", info)
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			entries, _ := AuditTail(c.Audit.Dir, 100)
			var allowed, denied int
			for _, e := range entries {
				if e.Attrs["op"] != "a2a" {
					continue
				}
				if e.Attrs["caller_thumbprint"] != caller.Thumbprint(t) || e.Attrs["caller_subject"] != "partner-planner" || e.PayloadSHA256 == "" {
					t.Fatalf("entry %+v", e)
				}
				switch e.Decision {
				case "allow":
					allowed++
					if e.Rule != a2aSkillRule {
						t.Fatalf("allowed by %q", e.Rule)
					}
				case "deny":
					denied++
				}
			}
			if allowed != 1 || denied != 1 {
				t.Fatalf("a2a entries: %d allowed, %d denied", allowed, denied)
			}
			if rep, err := audit.Verify(c.Audit.Dir, audit.VerifyOptions{}); err != nil || !rep.OK() {
				t.Fatalf("audit verify %+v %v", rep, err)
			}
		})
	}
}
