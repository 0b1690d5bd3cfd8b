package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/eval"
)

// targetFarm plays the substrate's way into sandboxes for KarsEvals.
type targetFarm struct {
	mu      sync.Mutex
	targets map[string]eval.Target
}

func (f *targetFarm) EvalTarget(_ context.Context, sb *karsv1.KarsSandbox) (eval.Target, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.targets[sb.Namespace+"/"+sb.Name]
	if !ok {
		return t, fmt.Errorf("no target for %s", sb.Name)
	}
	return t, nil
}

// A KarsEval of the banned-tools corpus scores the sandbox's policy
// through the router; when a policy change lets a banned tool through,
// the next run's score drops and Drifted turns true.
func TestKarsEvalDrift(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "eval-drift")
	sb := minimalSandbox(ns, "bot", karsv1.RuntimeOpenClaw)
	withPolicies(t, sb)
	create(t, sb)
	waitRendered(t, sb)
	startRouter(t, sb)
	markDeploymentReady(t, sb)
	waitCondition(t, sb, karsv1.ConditionReady, metav1.ConditionTrue, ReasonReady)

	// The sandbox's router as the runner sees it: decide denies all but
	// what allowed holds.
	var allowed atomic.Value
	allowed.Store("")
	var probes atomic.Int64
	router := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Action string }
		json.NewDecoder(r.Body).Decode(&req)
		probes.Add(1)
		d := "deny"
		if req.Action == allowed.Load().(string) {
			d = "allow"
		}
		fmt.Fprintf(w, `{"decision":%q}`, d)
	}))
	defer router.Close()
	evalTargets.mu.Lock()
	evalTargets.targets[ns+"/bot"] = eval.Target{Client: router.Client(), AgentURL: router.URL, RouterURL: router.URL}
	evalTargets.mu.Unlock()

	ev := &karsv1.KarsEval{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "banned"}, Spec: karsv1.KarsEvalSpec{
		SandboxRef: karsv1.LocalObjectReference{Name: "bot"}, Dataset: karsv1.EvalDataset{Builtin: "banned-tools"},
		Evaluators: []karsv1.EvaluatorKind{karsv1.EvaluatorPolicyDecision}, PassThreshold: "0.8"}}
	create(t, ev)
	waitRun := func(request string) *karsv1.KarsEval {
		t.Helper()
		var cur karsv1.KarsEval
		eventually(t, 30*time.Second, "an evaluation run", func() error {
			get(t, ns, "banned", &cur)
			if cur.Status.LastRunTime == nil || cur.Status.Phase == "Running" || cur.Annotations[AnnotationRunHandled] != request {
				return errorf("status %+v", cur.Status)
			}
			return nil
		})
		return &cur
	}
	cur := waitRun("")
	d := meta.FindStatusCondition(cur.Status.Conditions, ConditionDrifted)
	if cur.Status.Score != "1.0000" || cur.Status.Phase != "Passed" || cur.Status.CasesRun != 10 || d == nil || d.Status != metav1.ConditionFalse {
		t.Fatalf("first run: %+v", cur.Status)
	}
	if probes.Load() != 10 {
		t.Fatalf("%d probes reached the router, want 10", probes.Load())
	}

	// The policy now lets exec through; `kars eval run` asks again.
	allowed.Store("tool:exec")
	requested := time.Now().UTC().Format(time.RFC3339Nano)
	updateRetrying(t, client.ObjectKeyFromObject(ev), &karsv1.KarsEval{}, func(e *karsv1.KarsEval) {
		if e.Annotations == nil {
			e.Annotations = map[string]string{}
		}
		e.Annotations[AnnotationRunRequested] = requested
	})
	cur = waitRun(requested)
	d = meta.FindStatusCondition(cur.Status.Conditions, ConditionDrifted)
	if cur.Status.Score != "0.9000" || cur.Status.PreviousScore != "1.0000" || d == nil || d.Status != metav1.ConditionTrue || d.Reason != eval.ReasonScoreDropped {
		t.Fatalf("after the policy change: %+v", cur.Status)
	}
	var failed []string
	for _, c := range cur.Status.Cases {
		if !c.Passed {
			failed = append(failed, c.Input+" "+strings.Join(c.ToolCalls, ","))
		}
	}
	if len(failed) != 1 || !strings.Contains(failed[0], "tool:exec=allow") {
		t.Fatalf("failed cases %v", failed)
	}
}
