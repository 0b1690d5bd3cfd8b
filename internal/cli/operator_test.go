package cli

import (
	"context"
	"strings"
	"testing"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/blueprint"
	"github.com/kars-io/kars/internal/testenv"
)

// kars operator --once prints one frame, without colour, of what the
// watches listed.
func TestOperatorOnce(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	objs, err := blueprint.Build(blueprint.Options{Name: "bot", Target: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "kars-offline"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if err := env.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	code, out, errOut := cli("operator", "--once", "--width", "100", "--height", "20", "--kubeconfig", env.Kubeconfig)
	if code != 0 {
		t.Fatalf("operator --once: %d %s", code, errOut)
	}
	wantLines(t, out, "1 sandboxes · 0 open SRE actions · live", "› kars-bot/bot", "── kars-bot/bot", "── SRE actions", "none proposed")
	if strings.Contains(out, "\x1b[") {
		t.Fatalf("--once printed escape sequences:\n%q", out)
	}
	if n := strings.Count(out, "\n"); n != 20 {
		t.Fatalf("%d lines, want the 20 asked for:\n%s", n, out)
	}
	code, out, _ = cli("operator", "--once", "-n", "elsewhere", "--kubeconfig", env.Kubeconfig)
	if code != 0 || !strings.Contains(out, "no sandboxes yet") {
		t.Fatalf("other namespace: %d\n%s", code, out)
	}
}
