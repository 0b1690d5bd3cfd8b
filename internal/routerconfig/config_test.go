package routerconfig

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/configmapfs"
	"github.com/kars-io/kars/internal/governance"
)

func validConfig() *Config {
	return &Config{
		SchemaVersion: SchemaVersion,
		Sandbox:       Sandbox{Namespace: "kars-research-bot", Name: "research-bot", AgentID: "kars-research-bot/research-bot"},
		Models: Models{
			Primary: Target{Provider: ProviderAzureOpenAI, Model: "gpt-4.1", Deployment: "gpt-41", Endpoint: "https://x.openai.azure.com",
				Auth: &Auth{Mode: AuthWorkloadIdentity}},
			Fallbacks: []Target{{Provider: ProviderOffline, Model: "kars-offline"}},
		},
		Budget: &Budget{Daily: 100000},
		Governance: &governance.Policy{Name: "research-bot", Rules: []governance.Rule{
			{Name: "models", Effect: governance.EffectAllow, Actions: []string{"inference:*:gpt-4.1*"}},
		}},
		Audit:    Audit{Dir: "/var/lib/kars/audit"},
		Admin:    Admin{TokenFile: "/var/run/kars/admin/token"},
		StateDir: "/var/lib/kars/state",
	}
}

func TestValidateAcceptsValid(t *testing.T) {
	if err := validConfig().Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
}

func TestValidateRejects(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"schema", func(c *Config) { c.SchemaVersion = 2 }, "schemaVersion"},
		{"non-loopback listen", func(c *Config) { c.Listen = "0.0.0.0:8443" }, "loopback"},
		{"agent URL off the pod", func(c *Config) { c.AgentURL = "http://10.0.0.5:18789" }, "agentURL"},
		{"agent URL with a path", func(c *Config) { c.AgentURL = "http://127.0.0.1:18789/x" }, "agentURL"},
		{"agent URL over https", func(c *Config) { c.AgentURL = "https://127.0.0.1:18789" }, "agentURL"},
		{"azure without deployment", func(c *Config) { c.Models.Primary.Deployment = "" }, "models.primary.deployment"},
		{"unknown provider", func(c *Config) { c.Models.Primary.Provider = "Bedrock" }, "not a known provider"},
		{"api key without file", func(c *Config) { c.Models.Primary.Auth = &Auth{Mode: AuthAPIKey} }, "keyFile"},
		{"entra on openai", func(c *Config) {
			c.Models.Primary = Target{Provider: ProviderOpenAI, Model: "gpt-4.1", Auth: &Auth{Mode: AuthManagedIdentity}}
		}, "only Azure"},
		{"bad floor", func(c *Config) { c.ContentSafety = &ContentSafety{Hate: "Extreme"} }, "contentSafety.hate"},
		{"shields with offline", func(c *Config) { c.ContentSafety = &ContentSafety{RequirePromptShields: true} }, "Prompt Shields"},
		{"relative audit dir", func(c *Config) { c.Audit.Dir = "audit" }, "audit.dir"},
		{"no admin token", func(c *Config) { c.Admin.TokenFile = "" }, "admin.tokenFile"},
		{"too many fallbacks", func(c *Config) { c.Models.Fallbacks = make([]Target, 9) }, "at most 8"},
		{"invalid governance", func(c *Config) { c.Governance.Rules[0].Effect = "maybe" }, "governance"},
		{"reserve above per-request", func(c *Config) { c.Budget = &Budget{PerRequest: 10, DefaultReserve: 20} }, "defaultReserve"},
		{"credential inlined", func(c *Config) {
			c.Credentials = []Credential{{Name: "tg", Placeholder: "kars_placeholder_tg", ValueFile: "123:abc", Endpoints: []string{"https://api.telegram.org/bot"}, Placement: CredentialPlacement{In: "Path"}}}
		}, "credentials[0].valueFile"},
		{"credential wildcard endpoint", func(c *Config) {
			c.Credentials = []Credential{{Name: "gh", Placeholder: "kars_placeholder_gh", ValueFile: "/s/gh", Endpoints: []string{"https://*.github.com/"}, Placement: CredentialPlacement{In: "Header", Name: "Authorization"}}}
		}, "wildcards"},
		{"credential in the body", func(c *Config) {
			c.Credentials = []Credential{{Name: "gh", Placeholder: "kars_placeholder_gh", ValueFile: "/s/gh", Endpoints: []string{"https://api.github.com/"}, Placement: CredentialPlacement{In: "Body"}}}
		}, "placement"},
		{"credential names twice", func(c *Config) {
			cr := Credential{Name: "gh", Placeholder: "kars_placeholder_gh", ValueFile: "/s/gh", Endpoints: []string{"https://api.github.com/"}, Placement: CredentialPlacement{In: "Header", Name: "Authorization"}}
			cr2 := cr
			cr2.Placeholder = "kars_placeholder_other"
			c.Credentials = []Credential{cr, cr2}
		}, "used twice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.mutate(c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestDigestIgnoresLayout(t *testing.T) {
	c := validConfig()
	d1, err := Digest(c)
	if err != nil {
		t.Fatal(err)
	}
	// The same config written by hand with other whitespace and key order
	// in the governance section parses to the same digest.
	pretty, err := Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Parse(pretty)
	if err != nil {
		t.Fatal(err)
	}
	if s.Digest != d1 {
		t.Fatalf("digest changed through Marshal/Parse: %s vs %s", s.Digest, d1)
	}
	if !strings.HasPrefix(d1, "sha256:") || len(d1) != len("sha256:")+64 {
		t.Fatalf("digest %q is not sha256:<hex>", d1)
	}
	c.Budget.Daily++
	d2, _ := Digest(c)
	if d2 == d1 {
		t.Fatal("digest did not change when the budget changed")
	}
}

func TestParseRejectsUnknownFields(t *testing.T) {
	b, _ := Marshal(validConfig())
	b = []byte(strings.Replace(string(b), `"stateDir"`, `"stateDri": "/x", "stateDir"`, 1))
	if _, err := Parse(b); err == nil || !strings.Contains(err.Error(), "stateDri") {
		t.Fatalf("Parse accepted a misspelled field: %v", err)
	}
}

// writeConfigMapGeneration mimics the kubelet's atomic writer: a new
// generation directory, a ..data_tmp symlink renamed over ..data.
func writeConfigMapGeneration(t *testing.T, dir string, gen int, c *Config) {
	t.Helper()
	b, err := Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := configmapfs.Publish(dir, gen, map[string][]byte{FileName: b}); err != nil {
		t.Fatal(err)
	}
}

func TestWatcherFollowsConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	c := validConfig()
	writeConfigMapGeneration(t, dir, 0, c)
	w, err := NewWatcher(filepath.Join(dir, FileName), "")
	if err != nil {
		t.Fatal(err)
	}
	w.PollInterval = time.Hour // prove the inotify path, not the poll
	changed := make(chan *Snapshot, 4)
	errs := make(chan error, 4)
	w.OnChange = func(_, cur *Snapshot) { changed <- cur }
	w.OnError = func(err error) { errs <- err }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)
	time.Sleep(50 * time.Millisecond) // let Run register the watch

	c.Models.Primary.Model = "gpt-4.1-mini"
	writeConfigMapGeneration(t, dir, 1, c)
	select {
	case s := <-changed:
		if s.Config.Models.Primary.Model != "gpt-4.1-mini" {
			t.Fatalf("swapped to %q", s.Config.Models.Primary.Model)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watcher did not see the ..data swap")
	}
	want := w.Current().Digest

	// An invalid generation is reported and the live config stays.
	bad := validConfig()
	bad.SchemaVersion = 99
	writeConfigMapGeneration(t, dir, 2, bad)
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), "schemaVersion") {
			t.Fatalf("unexpected error: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("invalid config was not reported")
	}
	if got := w.Current().Digest; got != want {
		t.Fatal("an invalid config replaced the live one")
	}
}

func TestWatcherFollowsRenamedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	c := validConfig()
	b, _ := Marshal(c)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := NewWatcher(path, "")
	if err != nil {
		t.Fatal(err)
	}
	w.PollInterval = time.Hour
	changed := make(chan *Snapshot, 1)
	w.OnChange = func(_, cur *Snapshot) { changed <- cur }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)
	time.Sleep(50 * time.Millisecond)

	c.Budget.Daily = 5
	b, _ = Marshal(c)
	if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-changed:
		if s.Config.Budget.Daily != 5 {
			t.Fatalf("budget after swap = %d", s.Config.Budget.Daily)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watcher did not see the rename")
	}
}

// TestReloadSeesA2AChanges: the digest leaves the a2a section out, but a
// change to it is still a change the router must load.
func TestReloadSeesA2AChanges(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	c := &Config{SchemaVersion: SchemaVersion, Sandbox: Sandbox{Name: "s", AgentID: "ns/s"},
		Models: Models{Primary: Target{Provider: ProviderOffline, Model: "m"}},
		Audit:  Audit{Dir: "/var/lib/kars/audit"}, Admin: Admin{TokenFile: "/t"}, StateDir: "/var/lib/kars/state",
		A2A: &A2A{TLSCertFile: "/c", TLSKeyFile: "/k", GatewayPins: []string{"sha256:" + strings.Repeat("a", 64)},
			PublicURL: "https://gw/a2a/ns/s", AgentURL: "http://127.0.0.1:18789", ExpiresAt: time.Now().Add(time.Hour),
			Callers: []A2ACaller{{Thumbprint: "sha256:" + strings.Repeat("b", 64)}}, Skills: []A2ASkill{{Name: "x"}},
			RateLimit: A2ARateLimit{RPM: 10}, BodyCapBytes: 1024, SessionMaxSeconds: 60}}
	write := func() {
		b, err := Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(path, b, 0o600)
	}
	write()
	w, err := NewWatcher(path, "")
	if err != nil {
		t.Fatal(err)
	}
	before := w.Current().Digest
	c.A2A.RateLimit.RPM = 1000
	write()
	changed, err := w.Reload()
	if err != nil || !changed || w.Current().Config.A2A.RateLimit.RPM != 1000 || w.Current().Digest != before {
		t.Fatalf("reload: changed=%v err=%v rpm=%d", changed, err, w.Current().Config.A2A.RateLimit.RPM)
	}
	if changed, _ := w.Reload(); changed {
		t.Fatal("an unchanged file reloaded")
	}
}
