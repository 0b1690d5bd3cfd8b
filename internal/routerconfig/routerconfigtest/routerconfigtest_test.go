package routerconfigtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kars-io/kars/internal/routerconfig"
)

// The config Offline builds is one the router accepts, serves only on
// loopback ports the kernel picks, and keeps every file under dir.
func TestOfflineIsValidAndLocal(t *testing.T) {
	dir := t.TempDir()
	c := Offline(t, dir)
	if got := Snapshot(t, c).Config; got.Models.Primary.Provider != routerconfig.ProviderOffline || got.Sandbox.AgentID != "kars-dev/demo" {
		t.Fatalf("parsed back as %+v", got)
	}
	if c.AgentListen() != "127.0.0.1:0" || c.AdminListen() != "127.0.0.1:0" {
		t.Fatalf("listens on %s and %s, want loopback port 0", c.AgentListen(), c.AdminListen())
	}
	for _, p := range []string{c.Audit.Dir, c.StateDir, c.Admin.TokenFile} {
		if rel, err := filepath.Rel(dir, p); err != nil || !filepath.IsLocal(rel) {
			t.Errorf("%s is not under %s", p, dir)
		}
	}
	if b, err := os.ReadFile(c.Admin.TokenFile); err != nil || string(b) != AdminToken {
		t.Fatalf("token file holds %q (%v), want %q", b, err, AdminToken)
	}
}

// Write leaves a file that routerconfig.Load reads back as the same
// config.
func TestWriteLoads(t *testing.T) {
	dir := t.TempDir()
	c := Offline(t, dir)
	c.Sandbox = Sandbox("kars-x", "y")
	s, err := routerconfig.Load(Write(t, dir, c))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := routerconfig.Digest(c)
	if s.Digest != want || s.Config.Sandbox.AgentID != "kars-x/y" {
		t.Fatalf("loaded digest %s sandbox %+v, want %s kars-x/y", s.Digest, s.Config.Sandbox, want)
	}
}
