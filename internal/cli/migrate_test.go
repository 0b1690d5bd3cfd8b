package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/manifest"
	"github.com/kars-io/kars/internal/testenv"
)

const kagentDir = "../convert/kagent/testdata"
const sandboxDir = "../convert/agentsandbox/testdata"

func run(t *testing.T, in string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	now = func() time.Time { return time.Date(2026, 4, 30, 12, 0, 0, 0, time.UTC) }
	stdin = strings.NewReader(in)
	t.Cleanup(func() { now, stdin = time.Now, os.Stdin })
	var o, e bytes.Buffer
	code = Main(args, &o, &e)
	return code, o.String(), e.String()
}

func dirFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// Bad input fails with a clear error, exits non-zero and writes nothing.
func TestMigrateBadInputWritesNothing(t *testing.T) {
	good, err := os.ReadFile(filepath.Join(kagentDir, "declarative.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct{ in, want string }{
		"malformed YAML":      {string(good) + "\n---\napiVersion: v1\nkind: [oops\n", "stdin#5: malformed YAML"},
		"unknown apiVersion":  {string(good) + "\n---\napiVersion: kagent.dev/v2\nkind: Agent\nmetadata: {name: x}\n", "stdin#5: kagent.dev/v2 Agent x: apiVersion kagent.dev/v2 is not one this converter reads"},
		"a Secret in stream":  {string(good) + "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: kagent-azure-openai}\ndata: {k: dg==}\n", "refusing a Secret in the input"},
		"lossy without allow": {string(good), "15 source field(s) have no kars analog"},
	} {
		t.Run(name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "manifests")
			code, stdout, stderr := run(t, tc.in, "migrate", "from-kagent", "-", "--out-dir", out)
			if code == 0 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want non-zero and %q", code, stderr, tc.want)
			}
			if files := dirFiles(t, out); len(files) != 0 || stdout != "" {
				t.Errorf("wrote %v / printed %q despite the error", files, stdout)
			}
		})
	}
}

// --allow-lossy --out-dir writes one file per object in apply order plus
// the report; every file reads back as the objects printed by --dry-run.
func TestMigrateOutDir(t *testing.T) {
	out := filepath.Join(t.TempDir(), "manifests")
	code, stdout, stderr := run(t, "", "migrate", "from-kagent", kagentDir+"/declarative.yaml", "--allow-lossy", "--out-dir", out, "--isolation", "confidential")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "spec.declarative.deployment.nodeSelector") || !strings.Contains(stdout, "wrote 6 objects") {
		t.Errorf("stdout %q stderr %q", stdout, stderr)
	}
	files := dirFiles(t, out)
	want := []string{"00-namespace-kars-k8s-agent.yaml", "01-inferencepolicy-k8s-agent-inference.yaml", "02-toolpolicy-k8s-agent-policy.yaml",
		"03-mcpserver-kagent-tool-server.yaml", "04-mcpserver-grafana-mcp.yaml", "05-karssandbox-k8s-agent.yaml", "migration-report.txt"}
	if strings.Join(files, " ") != strings.Join(want, " ") {
		t.Fatalf("files %v, want %v", files, want)
	}
	f, err := os.Open(filepath.Join(out, "05-karssandbox-k8s-agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	objs, err := manifest.Read(f, "sb")
	if err != nil || len(objs) != 1 {
		t.Fatalf("read back: %v %v", objs, err)
	}
	iso, _, _ := unstructuredString(objs[0].Object, "spec", "sandbox", "isolation")
	date, _, _ := unstructuredString(objs[0].Object, "metadata", "annotations", "kars.io/migration-date")
	if iso != "confidential" || date != "2026-04-30" {
		t.Errorf("isolation %q date %q", iso, date)
	}
}

func unstructuredString(m map[string]any, path ...string) (string, bool, error) {
	var cur any = m
	for _, p := range path {
		mm, ok := cur.(map[string]any)
		if !ok {
			return "", false, nil
		}
		cur = mm[p]
	}
	s, ok := cur.(string)
	return s, ok, nil
}

// A dry run prints the report and the objects, and a lossy one still exits
// non-zero so that scripts notice.
func TestMigrateDryRun(t *testing.T) {
	code, stdout, _ := run(t, "", "migrate", "from-kagent", kagentDir+"/byo.yaml", "--dry-run")
	if code == 0 || !strings.Contains(stdout, "kind: KarsSandbox") || !strings.Contains(stdout, "# lossy: 5 source field(s)") {
		t.Errorf("exit %d stdout %q", code, stdout)
	}
	code, stdout, stderr := run(t, "", "migrate", "from-kagent", kagentDir+"/byo.yaml", "--dry-run", "--allow-lossy", "-n", "agents-team")
	if code != 0 || !strings.Contains(stdout, "namespace: agents-team") {
		t.Errorf("exit %d stdout %q stderr %q", code, stdout, stderr)
	}
}

func TestConvert(t *testing.T) {
	code, stdout, stderr := run(t, "", "convert", "-f", sandboxDir+"/v1beta1.yaml", "--to", "karssandbox")
	if code != 0 || !strings.HasPrefix(stdout, "# kars convert --to karssandbox") || !strings.Contains(stdout, "kars.io/dev-only: \"true\"") ||
		!strings.Contains(stderr, "11 source field(s) were not carried") {
		t.Fatalf("karssandbox: exit %d stderr %q stdout %q", code, stderr, stdout)
	}
	// Back to upstream: lossy, so refused without --allow-lossy.
	code, up, stderr := run(t, stdout, "convert", "-f", "-", "--to", "upstream-sandbox")
	if code == 0 || up != "" || !strings.Contains(stderr, "spec.inferenceRef") || !strings.Contains(stderr, "--allow-lossy") {
		t.Fatalf("upstream without --allow-lossy: exit %d stdout %q stderr %q", code, up, stderr)
	}
	code, up, stderr = run(t, stdout, "convert", "-f", "-", "--to", "upstream-sandbox", "--allow-lossy")
	if code != 0 || !strings.Contains(up, "kind: Sandbox") || !strings.Contains(up, "InferencePolicy prod/web-agent-inference (stdin#") {
		t.Fatalf("upstream: exit %d stdout %q stderr %q", code, up, stderr)
	}
	code, ov, stderr := run(t, "", "convert", "-f", sandboxDir, "--to", "overlay", "--sandbox-ref=prod/web-agent")
	if code != 0 || !strings.Contains(ov, "sigsAgentSandbox: overlay") || !strings.Contains(ov, "research/notebook") {
		t.Fatalf("overlay from a directory: exit %d stdout %q stderr %q", code, ov, stderr)
	}
	if code, _, stderr := run(t, "", "convert", "-f", sandboxDir, "--to", "overlay"); code == 0 || !strings.Contains(stderr, "holds 2 Sandboxes") {
		t.Errorf("ambiguous overlay: exit %d %q", code, stderr)
	}
	if code, _, stderr := run(t, "", "convert", "-f", sandboxDir+"/v1beta1.yaml", "--to", "deployment"); code == 0 || !strings.Contains(stderr, `--to "deployment"`) {
		t.Errorf("bad --to: exit %d %q", code, stderr)
	}
}

// Without --dry-run or --out-dir the objects are created in the cluster,
// and a second run refuses to overwrite them.
func TestMigrateAppliesToCluster(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	code, stdout, stderr := run(t, "", "--kubeconfig", env.Kubeconfig, "migrate", "from-kagent", kagentDir+"/v1alpha3.yaml", "--allow-lossy")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "created KarsSandbox kars-billing-bot/billing-bot") {
		t.Errorf("stdout %q", stdout)
	}
	var sb karsv1.KarsSandbox
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: "kars-sre-oncall", Name: "sre-oncall"}, &sb); err != nil {
		t.Fatal(err)
	}
	if sb.Annotations["kars.io/migrated-from"] != "kagent.dev/v1alpha3/Agent" || len(sb.Spec.NetworkPolicy.AllowedHosts) != 2 {
		t.Errorf("stored sandbox %v %+v", sb.Annotations, sb.Spec.NetworkPolicy)
	}
	if code, _, stderr := run(t, "", "--kubeconfig", env.Kubeconfig, "migrate", "from-kagent", kagentDir+"/v1alpha3.yaml", "--allow-lossy"); code == 0 || !strings.Contains(stderr, "already exists") {
		t.Errorf("second run: exit %d %q", code, stderr)
	}
}
