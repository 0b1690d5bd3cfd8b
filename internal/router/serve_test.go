package router

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/budget"
	"github.com/kars-io/kars/internal/credential"
	"github.com/kars-io/kars/internal/inference/fakeprovider"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
)

// serving runs Serve with o (its logs discarded) and returns the bound
// addresses and a stop function that ends it and returns its error.
func serving(t *testing.T, o ServeOptions) (map[string]string, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan map[string]string, 1)
	done := make(chan error, 1)
	o.Logger = slog.New(slog.NewJSONHandler(io.Discard, nil))
	o.Ready = func(a map[string]string) { addrs <- a }
	go func() { done <- Serve(ctx, o) }()
	select {
	case a := <-addrs:
		stopped := false
		stop := func() error {
			if stopped {
				return nil
			}
			stopped = true
			cancel()
			return <-done
		}
		t.Cleanup(func() { stop() })
		return a, stop
	case err := <-done:
		cancel()
		t.Fatal(err)
		return nil, nil
	}
}

// adminDigest is the digest a serving router reports (admin token
// "admin-token").
func adminDigest(t *testing.T, addrs map[string]string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addrs["admin"]+"/admin/v1/policy/digest", nil)
	req.Header.Set("Authorization", "Bearer admin-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct{ Digest string }
	json.NewDecoder(resp.Body).Decode(&v)
	return v.Digest
}

// awaitDigest waits until a serving router enforces c (a reload).
func awaitDigest(t *testing.T, addrs map[string]string, c *routerconfig.Config) {
	t.Helper()
	want, _ := routerconfig.Digest(c)
	deadline := time.Now().Add(10 * time.Second)
	for adminDigest(t, addrs) != want {
		if time.Now().After(deadline) {
			t.Fatalf("the reload to %s is not reflected in the admin digest", want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// auditSyncs reads kars_router_audit_syncs_total from a serving router's
// admin metrics.
func auditSyncs(t *testing.T, addrs map[string]string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addrs["admin"] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "kars_router_audit_syncs_total "); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no kars_router_audit_syncs_total in the admin metrics")
	return 0
}

// TestServeLifecycle runs the router as kars-router does: from a config
// file, with the Offline model, then reloads it by rename, and stops it. Stopping must leave a verifiable
// audit log with every call in it and a ledger file that a restart reads
// back.
func TestServeLifecycle(t *testing.T) {
	dir := t.TempDir()
	c := routerconfigtest.Offline(t, dir)
	c.Budget = &routerconfig.Budget{Daily: 100000}
	path := filepath.Join(dir, routerconfig.FileName)
	write := func(c *routerconfig.Config) {
		b, _ := routerconfig.Marshal(c)
		os.WriteFile(path+".tmp", b, 0o600)
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	write(c)
	a, stop := serving(t, ServeOptions{ConfigPath: path})
	agent := "http://" + a["agent"]
	if want, _ := routerconfig.Digest(c); adminDigest(t, a) != want {
		t.Fatalf("admin digest %s, want %s", adminDigest(t, a), want)
	}
	for range 3 {
		resp, err := http.Post(agent+"/v1/chat/completions", "application/json", strings.NewReader(`{"messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "[kars-offline]") {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
	}
	// `kars model set`: the controller rewrites the config; the router
	// picks it up without a restart.
	c.Models.Primary.Model = "kars-offline-2"
	write(c)
	awaitDigest(t, a, c)
	resp, err := http.Post(agent+"/v1/chat/completions", "application/json", strings.NewReader(`{"messages":[{"role":"user","content":"after"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// One call at a time: each entry is synced on its own, the log's
	// open entry included, and the admin metrics count the syncs.
	if n := auditSyncs(t, a); n < 5 {
		t.Fatalf("kars_router_audit_syncs_total = %v after the open entry and 4 calls made one at a time", n)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(c.Audit.Dir, audit.VerifyOptions{})
	if err != nil || !rep.OK() {
		t.Fatalf("audit verify: %+v %v", rep, err)
	}
	entries, _ := AuditTail(c.Audit.Dir, 100)
	calls := map[string]int{}
	for _, e := range entries {
		calls[e.Action]++
	}
	if calls["inference:chat:kars-offline"] != 3 || calls["inference:chat:kars-offline-2"] != 1 {
		t.Fatalf("audit actions %v: want 3 calls to the first model and 1 to the model set by the reload", calls)
	}
	led, err := budget.Open(c.StateDir, budget.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if led.State().DayUsed == 0 {
		t.Fatal("the ledger was not written at shutdown")
	}
}

// TestServeUnderRoot runs the router as the local substrate does: the
// config as the controller compiled it for Kubernetes (mount paths under
// /etc, /var/run/secrets and /var/lib), its files materialised under one
// directory, and KARS_ROUTER_ROOT naming that directory. Every file —
// config, admin token, provider key, projected token, audit log, state —
// must resolve under the root, and the admin digest must stay the compiled
// config's.
func TestServeUnderRoot(t *testing.T) {
	fake := fakeprovider.New()
	fake.Start()
	t.Cleanup(fake.Close)
	root := t.TempDir()
	put := func(p, content string) {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full+".tmp", []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(full+".tmp", full); err != nil {
			t.Fatal(err)
		}
	}
	const (
		configPath = "/etc/kars/router/router.json"
		tokenFile  = "/var/run/secrets/kars/admin/token"
		keyFile    = "/var/run/secrets/kars/providers/aoai/key"
		federated  = "/var/run/secrets/azure/tokens/azure-identity-token"
	)
	put(tokenFile, "admin-token")
	put(keyFile, fake.APIKey)
	put(federated, fake.FederatedToken)
	t.Setenv(credential.EnvAuthorityHost, fake.URL()+"/")
	t.Setenv(credential.EnvTenantID, fake.TenantID)
	t.Setenv(credential.EnvClientID, fake.ClientID)
	t.Setenv(credential.EnvFederatedTokenFile, federated) // as the webhook injects it: not under the root
	c := &routerconfig.Config{
		SchemaVersion: routerconfig.SchemaVersion,
		Sandbox:       routerconfig.Sandbox{Namespace: "kars-dev", Name: "demo", AgentID: "kars-dev/demo"},
		Listen:        "127.0.0.1:0",
		Models: routerconfig.Models{Primary: routerconfig.Target{Provider: routerconfig.ProviderAzureOpenAI, Model: "gpt-4.1",
			Deployment: "gpt-41", Endpoint: fake.URL(), Auth: &routerconfig.Auth{Mode: routerconfig.AuthAPIKey, KeyFile: keyFile}}},
		Audit:    routerconfig.Audit{Dir: "/var/lib/kars/audit"},
		Admin:    routerconfig.Admin{Listen: "127.0.0.1:0", TokenFile: tokenFile},
		StateDir: "/var/lib/kars/state",
	}
	write := func() {
		b, err := routerconfig.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		put(configPath, string(b))
	}
	write()
	a, stop := serving(t, ServeOptions{ConfigPath: configPath, Root: root})
	chat := func() {
		t.Helper()
		resp, err := http.Post("http://"+a["agent"]+"/v1/chat/completions", "application/json", strings.NewReader(`{"messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("chat: %d %s", resp.StatusCode, b)
		}
	}
	if want, _ := routerconfig.Digest(c); adminDigest(t, a) != want {
		t.Fatalf("admin digest %s, want the compiled config's %s", adminDigest(t, a), want)
	}
	chat() // the API key file resolved under the root

	// Switch to workload identity by a reload: the projected token named
	// by AZURE_FEDERATED_TOKEN_FILE is read under the root as well.
	c.Models.Primary.Auth = &routerconfig.Auth{Mode: routerconfig.AuthWorkloadIdentity}
	write()
	awaitDigest(t, a, c)
	chat()
	if fake.TokenRequests.Load() != 1 {
		t.Fatalf("%d token exchanges, want 1", fake.TokenRequests.Load())
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(filepath.Join(root, "var/lib/kars/audit"), audit.VerifyOptions{})
	if err != nil || !rep.OK() || rep.Entries < 3 {
		t.Fatalf("audit log under the root: %+v %v", rep, err)
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/kars/state/budget-ledger.json")); err != nil {
		t.Errorf("state under the root: %v", err)
	}
}
