// Package interop drives kars-router with the official OpenAI clients for
// Python and npm (installed by setup.sh), in front of the fake upstream
// that speaks Azure OpenAI's wire format. The tests skip when a client is
// not installed, unless KARS_REQUIRE_INTEROP=1 (CI), where they fail.
package interop

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/budget"
	"github.com/kars-io/kars/internal/inference/fakeprovider"
	"github.com/kars-io/kars/internal/router"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
)

const agentKey = "sk-agent-key-that-must-never-leave"

// startRouter runs a router in front of a fresh fake upstream and returns
// its agent URL and the fake.
func startRouter(t *testing.T, b *routerconfig.Budget, completionTokens int64) (string, *fakeprovider.Server) {
	t.Helper()
	fake := fakeprovider.New()
	fake.CompletionTokens = completionTokens
	fake.Start()
	t.Cleanup(fake.Close)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	os.WriteFile(keyFile, []byte(fake.APIKey), 0o600)
	c := routerconfigtest.Offline(t, dir)
	c.Sandbox = routerconfigtest.Sandbox("kars-interop", "bot")
	c.Models = routerconfig.Models{
		Primary: routerconfig.Target{Provider: routerconfig.ProviderAzureOpenAI, Model: "gpt-4.1", Deployment: "gpt-41",
			Endpoint: fake.URL(), Auth: &routerconfig.Auth{Mode: routerconfig.AuthAPIKey, KeyFile: keyFile}},
		Fallbacks: []routerconfig.Target{routerconfigtest.OfflineTarget()},
	}
	c.Budget = b
	snap := routerconfigtest.Snapshot(t, c)
	sink, err := audit.Open(audit.Options{Dir: c.Audit.Dir, Sandbox: "kars-interop/bot"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	led, err := budget.Open(c.StateDir, budget.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(snap, router.Options{Audit: sink, Ledger: led, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r.AgentHandler())
	t.Cleanup(srv.Close)
	return srv.URL, fake
}

// requireClient returns the command prefix for a client, or skips (fails
// under KARS_REQUIRE_INTEROP=1) when it is not installed.
func requireClient(t *testing.T, name string, probe func() []string) []string {
	t.Helper()
	if cmd := probe(); cmd != nil {
		return cmd
	}
	msg := name + " client not installed: run test/interop/setup.sh"
	if os.Getenv("KARS_REQUIRE_INTEROP") == "1" {
		t.Fatal(msg + " (KARS_REQUIRE_INTEROP=1)")
	}
	t.Skip(msg)
	return nil
}

func pythonClient() []string {
	for _, py := range []string{".venv/bin/python", "python3"} {
		if exec.Command(py, "-c", "import openai").Run() == nil {
			return []string{py, "client.py"}
		}
	}
	return nil
}

func nodeClient() []string {
	if _, err := os.Stat("node_modules/openai/package.json"); err != nil {
		return nil
	}
	if _, err := exec.LookPath("node"); err != nil {
		return nil
	}
	return []string{"node", "client.mjs"}
}

func runClient(t *testing.T, argv []string) {
	main, fake := startRouter(t, &routerconfig.Budget{Daily: 1 << 30}, 0)
	small, _ := startRouter(t, &routerconfig.Budget{Daily: 1000, DefaultReserve: 900}, 500)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(),
		"KARS_ROUTER_URL="+main, "KARS_BUDGET_ROUTER_URL="+small, "KARS_AGENT_KEY="+agentKey,
		"KARS_UPSTREAM_SECRETS="+fake.APIKey+","+fake.EntraToken,
		// The clients must not pick up real credentials or proxies.
		"OPENAI_API_KEY=", "OPENAI_BASE_URL=", "AZURE_OPENAI_API_KEY=", "HTTP_PROXY=", "HTTPS_PROXY=", "NO_PROXY=127.0.0.1,localhost")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("%s output:\n%s", argv[1], out.String())
	if err != nil {
		t.Fatalf("%s failed: %v", argv[1], err)
	}
	passed := 0
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "ok ") {
			passed++
		}
	}
	if passed < 11 {
		t.Fatalf("only %d checks passed", passed)
	}
	for _, h := range fake.Headers() {
		for k, vs := range h {
			for _, v := range vs {
				if strings.Contains(v, agentKey) {
					t.Fatalf("the agent's key reached the upstream in header %s", k)
				}
			}
		}
	}
}

func TestPythonOpenAIClient(t *testing.T) {
	runClient(t, requireClient(t, "Python openai", pythonClient))
}

func TestNodeOpenAIClient(t *testing.T) {
	runClient(t, requireClient(t, "npm openai", nodeClient))
}
