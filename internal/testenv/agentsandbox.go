package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// AgentSandboxVersion is the upstream agent-sandbox release that
// tools/agentsandbox pins and builds.
const AgentSandboxVersion = "v1.0.1"

// AgentSandboxDir returns the folder holding the upstream
// agent-sandbox-controller binary and its Sandbox CRD
// ($KARS_AGENT_SANDBOX_DIR, else tools/agentsandbox/bin/<version>). It
// fails the test with instructions when they have not been built.
func AgentSandboxDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("KARS_AGENT_SANDBOX_DIR")
	if dir == "" {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "..", "tools", "agentsandbox", "bin", AgentSandboxVersion)
	}
	for _, f := range []string{"agent-sandbox-controller", "agents.x-k8s.io_sandboxes.yaml"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("upstream agent-sandbox %s not built in %s: run `make agentsandbox` (tools/agentsandbox/build.sh) or set KARS_AGENT_SANDBOX_DIR", AgentSandboxVersion, dir)
		}
	}
	return dir
}

// InstallAgentSandboxCRD installs the upstream Sandbox CRD of the pinned
// release and waits until the API server serves it.
func InstallAgentSandboxCRD(t testing.TB, c client.Client) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(AgentSandboxDir(t), "agents.x-k8s.io_sandboxes.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	crd := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(raw, &crd.Object); err != nil {
		t.Fatalf("upstream Sandbox CRD: %v", err)
	}
	ctx := context.Background()
	if err := c.Create(ctx, crd); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("install upstream Sandbox CRD: %v", err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(crd.GroupVersionKind())
		if err := c.Get(ctx, client.ObjectKeyFromObject(crd), got); err == nil {
			conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
			for _, c := range conds {
				if m, _ := c.(map[string]any); m["type"] == "Established" && m["status"] == "True" {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatal(fmt.Errorf("upstream Sandbox CRD not established within a minute"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
