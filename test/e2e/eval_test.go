package e2e

import (
	"context"
	"regexp"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// TestKarsDevEvals runs the built-in corpora against kars-agent (offline
// model) under kars dev, each twice: the scores are stable. Then a policy
// change lets a banned tool through, and the banned-tools evaluation
// drifts.
func TestKarsDevEvals(t *testing.T) {
	k, c := startDev(t)
	ctx := context.Background()
	ns := "kars-dev-agent"
	evals := map[string][]karsv1.EvaluatorKind{
		"banned-tools":       {karsv1.EvaluatorPolicyDecision},
		"egress-known-bad":   {karsv1.EvaluatorPolicyDecision},
		"jailbreak-baseline": {karsv1.EvaluatorRefusal},
		"prompt-injection":   {karsv1.EvaluatorPolicyDecision, karsv1.EvaluatorRefusal, karsv1.EvaluatorToolCallAccuracy},
	}
	for corpus, ev := range evals {
		mustCreate(t, c, &karsv1.KarsEval{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: corpus}, Spec: karsv1.KarsEvalSpec{
			SandboxRef: karsv1.LocalObjectReference{Name: "dev-agent"}, Dataset: karsv1.EvalDataset{Builtin: karsv1.BuiltinCorpus(corpus)},
			Evaluators: ev, PassThreshold: "0.5"}})
	}
	score := regexp.MustCompile(`Score:\s+([0-9.]+)`)
	first := map[string]string{}
	for corpus := range evals {
		var scores []string
		for i := 0; i < 2; i++ {
			out, _ := k.run("eval", "run", corpus, "-n", ns)
			m := score.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("kars eval run %s printed no score:\n%s", corpus, out)
			}
			scores = append(scores, m[1])
		}
		if scores[0] != scores[1] {
			t.Errorf("%s: scores %v are not stable", corpus, scores)
		}
		first[corpus] = scores[0]
		t.Logf("%s: score %s (twice)", corpus, scores[0])
	}
	if first["banned-tools"] != "1.0000" || first["egress-known-bad"] != "1.0000" {
		t.Fatalf("the default policy denies every banned tool and destination: %v", first)
	}

	// Let a banned tool through.
	var tp karsv1.ToolPolicy
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "dev-agent-policy"}, &tp); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(tp.DeepCopy())
	tp.Spec.Rules = append(tp.Spec.Rules, karsv1.ToolRule{Name: "oops", Effect: karsv1.EffectAllow, Actions: []string{"tool:exec"}})
	if err := c.Patch(ctx, &tp, patch); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, k, "dev-agent", "Running")
	var out string
	for i := 0; i < 10; i++ {
		out, _ = k.run("eval", "run", "banned-tools", "-n", ns)
		if strings.Contains(out, "Drifted:   True") {
			break
		}
	}
	if !strings.Contains(out, "Drifted:   True (ScoreDropped)") || !strings.Contains(out, "tool:exec=allow") || !strings.Contains(out, "previous 1.0000") {
		t.Fatalf("no drift after a banned tool was allowed:\n%s", out)
	}
	out = k.must("eval", "show", "banned-tools", "-n", ns)
	if !strings.Contains(out, "Score:     0.9000") {
		t.Fatalf("kars eval show:\n%s", out)
	}
}
