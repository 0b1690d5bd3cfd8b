// Package routerconfigtest builds the kars-router configuration that tests
// of several packages start from: one that serves without any cloud,
// credentials or fixed port.
//
// It imports only routerconfig, so that the router package's own tests
// can use it without an import cycle. Test code only; nothing in a binary
// imports it.
package routerconfigtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kars-io/kars/internal/routerconfig"
)

// AdminToken is the admin API bearer token that Offline writes to the
// config's token file.
const AdminToken = "admin-token"

// Offline returns a valid config for sandbox kars-dev/demo with
// everything a test needs to serve it on one machine, and writes its
// admin token file:
//
//   - the Offline model as the only target, so no credentials or network
//     are needed to answer inference;
//   - the agent and admin APIs on 127.0.0.1 port 0, so nothing off the
//     machine reaches them and parallel tests never contend for a port
//     (Serve reports the ports the kernel chose);
//   - the audit log, state directory and admin token file (holding
//     AdminToken) under dir, so each test's files go away with its
//     t.TempDir.
//
// Tests change the fields they are about after the call; Sandbox gives
// a test its own sandbox.
func Offline(t testing.TB, dir string) *routerconfig.Config {
	t.Helper()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(AdminToken), 0o600); err != nil {
		t.Fatalf("admin token file: %v", err)
	}
	return &routerconfig.Config{
		SchemaVersion: routerconfig.SchemaVersion,
		Sandbox:       Sandbox("kars-dev", "demo"),
		Listen:        "127.0.0.1:0",
		Models:        routerconfig.Models{Primary: OfflineTarget()},
		Audit:         routerconfig.Audit{Dir: filepath.Join(dir, "audit")},
		Admin:         routerconfig.Admin{Listen: "127.0.0.1:0", TokenFile: tokenFile},
		StateDir:      filepath.Join(dir, "state"),
	}
}

// OfflineTarget is the built-in Offline model, which answers every
// request itself.
func OfflineTarget() routerconfig.Target {
	return routerconfig.Target{Provider: routerconfig.ProviderOffline, Model: "kars-offline"}
}

// Sandbox names sandbox namespace/name, with the "<namespace>/<name>"
// agent ID the operator gives it.
func Sandbox(namespace, name string) routerconfig.Sandbox {
	return routerconfig.Sandbox{Namespace: namespace, Name: name, AgentID: namespace + "/" + name}
}

// Snapshot returns c as the router reads it: marshalled, then parsed and
// validated, for router.New.
func Snapshot(t testing.TB, c *routerconfig.Config) *routerconfig.Snapshot {
	t.Helper()
	b, err := routerconfig.Marshal(c)
	if err != nil {
		t.Fatalf("marshal router config: %v", err)
	}
	s, err := routerconfig.Parse(b)
	if err != nil {
		t.Fatalf("parse router config: %v", err)
	}
	return s
}

// Write writes c as dir's router config file, as the operator's
// ConfigMap projects it, and returns its path for ServeOptions.ConfigPath.
func Write(t testing.TB, dir string, c *routerconfig.Config) string {
	t.Helper()
	b, err := routerconfig.Marshal(c)
	if err != nil {
		t.Fatalf("marshal router config: %v", err)
	}
	path := filepath.Join(dir, routerconfig.FileName)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatalf("write router config: %v", err)
	}
	return path
}
