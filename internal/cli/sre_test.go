package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/blueprint"
	"github.com/kars-io/kars/internal/operator"
	"github.com/kars-io/kars/internal/testenv"
)

// kars sre actions|show|approve|reject against the real API server and a
// real controller: an approval carries the caller's own name (from the API
// server), runs the action, and is final.
func TestSRECommands(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	offlineEnv(t)
	ctx := context.Background()
	cl := env.Client
	if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kars-system"}}); err != nil {
		t.Fatal(err)
	}
	controllerWhenCRDsServed(t, env.Config)
	objs, err := blueprint.Build(blueprint.Options{Name: "bot", Target: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "kars-offline"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if err := cl.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(name string, action karsv1.SREActionType) {
		a := &karsv1.KarsSREAction{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-bot", Name: name}, Spec: karsv1.KarsSREActionSpec{
			Action: action, Target: karsv1.SREActionTarget{Kind: "KarsSandbox", Name: "bot"}, Reason: "spend doubled in an hour",
			ProposedBy: "sre-agent", TTLMinutes: 30, Approval: karsv1.SREApproval{State: "Pending"}}}
		if err := cl.Create(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	mk("suspend-bot", karsv1.SRESuspendSandbox)
	mk("restart-bot", karsv1.SRERestartSandbox)
	kc := env.Kubeconfig

	code, out, errOut := cli("sre", "actions", "--kubeconfig", kc)
	if code != 0 {
		t.Fatalf("actions: %d %s", code, errOut)
	}
	wantLines(t, out, "NAMESPACE", "kars-bot   suspend-bot  SuspendSandbox  KarsSandbox/bot  Pending", "restart-bot", "sre-agent")

	code, out, errOut = cli("sre", "approve", "suspend-bot", "--comment", "confirmed on the dashboard", "--kubeconfig", kc)
	if code != 0 {
		t.Fatalf("approve: %d %s", code, errOut)
	}
	wantLines(t, out, "kars-bot/suspend-bot: SuspendSandbox approved by kars-admin")
	// The controller runs it; show reports the result and the audit event.
	var shown string
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, shown, _ = cli("sre", "show", "kars-bot/suspend-bot", "--kubeconfig", kc)
		if strings.Contains(shown, "SREActionExecuted") || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	wantLines(t, shown, "Action:       SuspendSandbox", "Approval:     Approved by kars-admin: confirmed on the dashboard", "Phase:        Succeeded",
		"Result:       sandbox suspended", "Normal  SREActionExecuted")
	var sb karsv1.KarsSandbox
	if err := cl.Get(ctx, client.ObjectKey{Namespace: "kars-bot", Name: "bot"}, &sb); err != nil || !sb.Spec.Suspended {
		t.Fatalf("sandbox suspended=%v (%v)", sb.Spec.Suspended, err)
	}

	// Decisions are final.
	code, _, errOut = cli("sre", "reject", "suspend-bot", "--kubeconfig", kc)
	if code == 0 || !strings.Contains(errOut, "was already approved by kars-admin: decisions are final") {
		t.Fatalf("re-decide: %d %s", code, errOut)
	}
	code, out, _ = cli("sre", "reject", "restart-bot", "-n", "kars-bot", "--kubeconfig", kc)
	if code != 0 || !strings.Contains(out, "RestartSandbox rejected by kars-admin") {
		t.Fatalf("reject: %d %s", code, out)
	}
	// Finished actions leave the default list.
	deadline = time.Now().Add(30 * time.Second)
	for {
		_, out, _ = cli("sre", "actions", "--kubeconfig", kc)
		if strings.Contains(out, "no open SRE actions") || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	wantLines(t, out, "no open SRE actions")
	_, out, _ = cli("sre", "actions", "--all", "--kubeconfig", kc)
	wantLines(t, out, "Succeeded", "Rejected")
	code, _, errOut = cli("sre", "show", "nothing-here", "--kubeconfig", kc)
	if code == 0 || !strings.Contains(errOut, `no SRE action named "nothing-here"`) {
		t.Fatalf("missing: %d %s", code, errOut)
	}
}

func TestDecideRefusesExpired(t *testing.T) {
	a := &karsv1.KarsSREAction{ObjectMeta: metav1.ObjectMeta{Namespace: "n", Name: "old", CreationTimestamp: metav1.NewTime(time.Now().Add(-time.Hour))},
		Spec: karsv1.KarsSREActionSpec{TTLMinutes: 15, Approval: karsv1.SREApproval{State: "Pending"}}}
	err := operator.DecideSREAction(context.Background(), nil, a, "Approved", "alice", "", time.Now())
	if err == nil || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("err = %v", err)
	}
}
