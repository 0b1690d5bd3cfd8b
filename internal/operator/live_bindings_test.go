package operator

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/blueprint"
	"github.com/kars-io/kars/internal/testenv"
)

// The policy, trust and memory/evals pages against the real API server:
// each bound object arrives from its watch, a status change (an eval
// drifting) redraws its page, and approving egress creates the
// EgressApproval with the user's credentials.
func TestLiveBindings(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	cl := env.Client
	l := watchLive(t, env.Config, "", &KubeActions{Client: cl, Clientset: kubernetes.NewForConfigOrDie(env.Config)})
	l.until(t, "sync", func(f string) bool { return strings.Contains(f, "· live") })

	objs, err := blueprint.Build(blueprint.Options{Name: "bot", Target: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "kars-offline"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if sb, ok := o.(*karsv1.KarsSandbox); ok {
			sb.Spec.Governance.ToolPolicyRef = &karsv1.LocalObjectReference{Name: "bot-tools"}
			th := karsv1.TrustScore(650)
			sb.Spec.Governance.TrustThreshold = &th
		}
		if err := cl.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	ns := "kars-bot"
	for _, o := range []client.Object{
		&karsv1.ToolPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bot-tools"},
			Spec: karsv1.ToolPolicySpec{Rules: []karsv1.ToolRule{{Name: "no-shell", Effect: karsv1.EffectDeny, Priority: 100, Actions: []string{"shell:*"}}}}},
		&karsv1.McpServer{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "docs"},
			Spec: karsv1.McpServerSpec{URL: "https://mcp.example.com/mcp", Sandboxes: []string{"bot"}, Tools: []string{"search"}}},
		&karsv1.KarsMemory{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bot-memory"},
			Spec: karsv1.KarsMemorySpec{SandboxRef: karsv1.LocalObjectReference{Name: "bot"},
				Foundry: karsv1.FoundryMemoryStore{Endpoint: "https://contoso.services.ai.azure.com/api/projects/agents", StoreName: "bot-memories"}}},
		&karsv1.KarsEval{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "banned-tools"},
			Spec: karsv1.KarsEvalSpec{SandboxRef: karsv1.LocalObjectReference{Name: "bot"}, Dataset: karsv1.EvalDataset{Builtin: "banned-tools"},
				Evaluators: []karsv1.EvaluatorKind{"policyDecision"}, PassThreshold: "0.9"}},
		&karsv1.TrustGraph{ObjectMeta: metav1.ObjectMeta{Name: "contoso"},
			Spec: karsv1.TrustGraphSpec{TrustDomain: "contoso.com", Edges: []karsv1.TrustEdge{
				{From: "kars-bot/bot", To: "kars-worker/worker", Score: 800, KeyID: "k1", Signature: strings.Repeat("A", 86)}}}},
	} {
		if err := cl.Create(ctx, o); err != nil {
			t.Fatalf("%T: %v", o, err)
		}
	}
	l.until(t, "the trust column", func(f string) bool { return strings.Contains(f, "≥650") })
	send(l.m, key("2"))
	l.until(t, "the policy page", func(f string) bool {
		return strings.Contains(f, "bot-tools · 1 rules") && strings.Contains(f, "no-shell") && strings.Contains(f, "docs ")
	})
	send(l.m, key("3"))
	l.until(t, "the trust page", func(f string) bool {
		return strings.Contains(f, "peers need trust ≥ 650") && strings.Contains(f, "trusts     kars-worker/worker            800 · graph contoso")
	})
	send(l.m, key("4"))
	l.until(t, "the memory/evals page", func(f string) bool {
		return strings.Contains(f, "bot-memory · store bot-memories at contoso.services.ai.azure.com") && strings.Contains(f, "banned-tools")
	})

	// The eval drifts: its status changes, and the page says so.
	var ev karsv1.KarsEval
	if err := cl.Get(ctx, types.NamespacedName{Namespace: ns, Name: "banned-tools"}, &ev); err != nil {
		t.Fatal(err)
	}
	ev.Status.Phase, ev.Status.Score, ev.Status.PreviousScore, ev.Status.CasesRun, ev.Status.CasesPassed = "Passed", "0.90", "1.00", 10, 9
	ev.Status.Conditions = []metav1.Condition{{Type: "Drifted", Status: "True", Reason: "ScoreDropped", Message: "0.90 < previous 1.00",
		LastTransitionTime: metav1.Now()}}
	if err := cl.Status().Update(ctx, &ev); err != nil {
		t.Fatal(err)
	}
	l.until(t, "the drift", func(f string) bool {
		return strings.Contains(f, "score 0.90 (was 1.00)") && strings.Contains(f, "drifted: ScoreDropped: 0.90 < previous 1.00")
	})

	// Approving egress creates the approval, and the watch shows it.
	bot := types.NamespacedName{Namespace: ns, Name: "bot"}
	if err := l.m.actions.ApproveEgress(ctx, bot, "198.51.100.11", 80, "approved in kars operator after audit entry 44 (default)"); err != nil {
		t.Fatal(err)
	}
	var eas karsv1.EgressApprovalList
	if err := cl.List(ctx, &eas, client.InNamespace(ns)); err != nil || len(eas.Items) != 1 {
		t.Fatalf("%d approvals, %v", len(eas.Items), err)
	}
	if a := eas.Items[0]; a.Spec.Sandbox != "bot" || a.Spec.Hosts[0] != "198.51.100.11" || a.Spec.Ports[0] != 80 || !strings.HasPrefix(a.Name, "bot-") {
		t.Fatalf("approval %+v", a)
	}
	send(l.m, key("1"))
	l.until(t, "the approval", func(f string) bool { return strings.Contains(f, "198.51.100.11 · approved in kars operator") })
}
