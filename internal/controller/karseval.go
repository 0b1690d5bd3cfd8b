package controller

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/eval"
)

// EvalRunner reaches a sandbox's agent and router to play an evaluation
// through them. The local substrate implements it with its pod dialer;
// on a cluster AdminEvalRunner goes through the router's admin API.
type EvalRunner interface {
	EvalTarget(ctx context.Context, sb *karsv1.KarsSandbox) (eval.Target, error)
}

// AnnotationRunRequested on a KarsEval asks for a run now (`kars eval
// run`); the controller copies its value to AnnotationRunHandled when the
// run it asked for has finished.
const (
	AnnotationRunRequested = "kars.io/run-requested"
	AnnotationRunHandled   = "kars.io/run-handled"
)

// Conditions and reasons of KarsEval.
const (
	ConditionDrifted        = "Drifted"
	ReasonRunnerUnavailable = "RunnerUnavailable"
	ReasonSandboxNotRunning = "SandboxNotRunning"
	ReasonDatasetInvalid    = "DatasetInvalid"
	ReasonRunning           = "Running"
	ReasonRunComplete       = "RunComplete"
	ReasonNothingScored     = "NothingScored"
)

// evalTimeout bounds one run.
const evalTimeout = 30 * time.Minute

// KarsEvalReconciler runs evaluations: once when created or changed, when
// `kars eval run` asks, and on the cron schedule; it records the score and
// the cases in the status and raises Drifted when the score falls below
// the pass threshold or below the previous run.
type KarsEvalReconciler struct {
	client client.Client
	runner EvalRunner
	now    func() time.Time

	mu      sync.Mutex
	running map[types.NamespacedName]bool
}

// Reconcile implements reconcile.Reconciler.
func (r *KarsEvalReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var ev karsv1.KarsEval
	if err := r.client.Get(ctx, req.NamespacedName, &ev); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !ev.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	now := r.now()
	var sched *eval.Schedule
	if ev.Spec.Schedule != "" {
		s, err := eval.ParseSchedule(ev.Spec.Schedule)
		if err != nil {
			return ctrl.Result{}, r.report(ctx, &ev, func(st *karsv1.KarsEvalStatus) {
				st.Phase = "Failed"
				r.setCond(st, ev.Generation, karsv1.ConditionReady, false, ReasonDatasetInvalid, err.Error())
			})
		}
		sched = &s
	}
	due, next := r.due(&ev, sched, now)
	if !due {
		if next.IsZero() {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{RequeueAfter: max(next.Sub(now), time.Second)}, r.report(ctx, &ev, func(st *karsv1.KarsEvalStatus) {
			st.NextRunTime = &metav1.Time{Time: next}
		})
	}
	if r.runner == nil {
		return ctrl.Result{}, r.report(ctx, &ev, func(st *karsv1.KarsEvalStatus) {
			st.Phase = "Pending"
			r.setCond(st, ev.Generation, karsv1.ConditionReady, false, ReasonRunnerUnavailable,
				"this controller was started without an evaluation runner")
		})
	}
	var sb karsv1.KarsSandbox
	if err := r.client.Get(ctx, client.ObjectKey{Namespace: ev.Namespace, Name: ev.Spec.SandboxRef.Name}, &sb); err != nil || sb.Status.Phase != karsv1.SandboxRunning {
		msg := fmt.Sprintf("sandbox %s is not running yet", ev.Spec.SandboxRef.Name)
		if err != nil {
			msg = fmt.Sprintf("sandbox %s: %v", ev.Spec.SandboxRef.Name, client.IgnoreNotFound(err))
		}
		return ctrl.Result{RequeueAfter: 15 * time.Second}, r.report(ctx, &ev, func(st *karsv1.KarsEvalStatus) {
			st.Phase = "Pending"
			r.setCond(st, ev.Generation, karsv1.ConditionReady, false, ReasonSandboxNotRunning, msg)
		})
	}
	cases, err := r.dataset(ctx, &ev)
	if err != nil {
		return ctrl.Result{}, r.report(ctx, &ev, func(st *karsv1.KarsEvalStatus) {
			st.Phase = "Failed"
			r.setCond(st, ev.Generation, karsv1.ConditionReady, false, ReasonDatasetInvalid, err.Error())
		})
	}
	if !r.claim(req.NamespacedName) {
		return ctrl.Result{RequeueAfter: 10 * time.Second}, nil
	}
	defer r.release(req.NamespacedName)
	requested := ev.Annotations[AnnotationRunRequested]
	if err := r.report(ctx, &ev, func(st *karsv1.KarsEvalStatus) {
		st.Phase = "Running"
		r.setCond(st, ev.Generation, karsv1.ConditionReady, false, ReasonRunning, fmt.Sprintf("playing %d cases", len(cases)))
	}); err != nil {
		return ctrl.Result{}, err
	}
	target, err := r.runner.EvalTarget(ctx, &sb)
	if err != nil {
		return ctrl.Result{RequeueAfter: 15 * time.Second}, r.report(ctx, &ev, func(st *karsv1.KarsEvalStatus) {
			st.Phase = "Pending"
			r.setCond(st, ev.Generation, karsv1.ConditionReady, false, ReasonSandboxNotRunning, err.Error())
		})
	}
	target.Session = fmt.Sprintf("eval-%s-%d", ev.Name, now.Unix())
	runCtx, cancel := context.WithTimeout(ctx, evalTimeout)
	results := eval.Run(runCtx, target, cases, ev.Spec.Evaluators)
	cancel()
	sum := eval.Summarize(results)
	threshold, _ := eval.ParseScore(ev.Spec.PassThreshold)
	if ev.Spec.PassThreshold == "" {
		threshold = 0.8
	}
	finished := r.now()
	log.FromContext(ctx).Info("evaluation finished", "score", sum.Score, "cases", sum.CasesRun, "passed", sum.CasesPassed)
	err = r.report(ctx, &ev, func(st *karsv1.KarsEvalStatus) {
		previous := st.Score
		passed, drifted, reason, msg := eval.Judge(sum.Score, threshold, previous)
		st.PreviousScore = previous
		st.Score = eval.FormatScore(sum.Score)
		st.CasesRun, st.CasesPassed = int32(sum.CasesRun), int32(sum.CasesPassed)
		st.LastRunTime = &metav1.Time{Time: finished.Truncate(time.Second)}
		st.Cases = caseResults(results)
		st.Phase = "Failed"
		if passed {
			st.Phase = "Passed"
		}
		st.NextRunTime = nil
		if sched != nil {
			if n := sched.Next(finished); !n.IsZero() {
				st.NextRunTime = &metav1.Time{Time: n}
			}
		}
		r.setCond(st, ev.Generation, karsv1.ConditionReady, true, ReasonRunComplete,
			fmt.Sprintf("%d of %d cases passed", sum.CasesPassed, sum.CasesRun))
		if sum.CasesRun == 0 {
			// No evaluator applied to any case (say, memory probes of a
			// sandbox without per-principal memory): no score to judge.
			st.Score, st.PreviousScore, st.Phase = "", previous, "Failed"
			drifted, reason, msg = false, ReasonNothingScored, "no listed evaluator applied to any case of the dataset (see the cases' reasons)"
		}
		r.setCond(st, ev.Generation, ConditionDrifted, drifted, reason, msg)
	})
	if err != nil {
		return ctrl.Result{}, err
	}
	if requested != "" && ev.Annotations[AnnotationRunHandled] != requested {
		patch := client.MergeFrom(ev.DeepCopy())
		ev.Annotations[AnnotationRunHandled] = requested
		if err := r.client.Patch(ctx, &ev, patch); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
	}
	if sched == nil {
		return ctrl.Result{}, nil
	}
	if n := sched.Next(finished); !n.IsZero() {
		return ctrl.Result{RequeueAfter: max(n.Sub(r.now()), time.Second)}, nil
	}
	return ctrl.Result{}, nil
}

// due reports whether a run is due now, and otherwise when the next one
// is (zero: none scheduled).
func (r *KarsEvalReconciler) due(ev *karsv1.KarsEval, sched *eval.Schedule, now time.Time) (bool, time.Time) {
	// Drifted is written only when a run completes: its generation is
	// the last one run.
	last, ran := ev.Status.LastRunTime, meta.FindStatusCondition(ev.Status.Conditions, ConditionDrifted)
	if last == nil || ran == nil || ran.ObservedGeneration != ev.Generation {
		return true, time.Time{}
	}
	if v := ev.Annotations[AnnotationRunRequested]; v != "" && v != ev.Annotations[AnnotationRunHandled] {
		return true, time.Time{}
	}
	if sched == nil {
		return false, time.Time{}
	}
	next := sched.Next(last.Time)
	if !next.IsZero() && !next.After(now) {
		return true, time.Time{}
	}
	return false, next
}

// dataset loads the cases: a built-in corpus, inline cases, or the
// ConfigMap's cases.jsonl.
func (r *KarsEvalReconciler) dataset(ctx context.Context, ev *karsv1.KarsEval) ([]eval.Case, error) {
	ds := ev.Spec.Dataset
	switch {
	case ds.Builtin != "":
		return eval.Corpus(ds.Builtin)
	case ds.ConfigMapRef != nil:
		var cm corev1.ConfigMap
		if err := r.client.Get(ctx, client.ObjectKey{Namespace: ev.Namespace, Name: ds.ConfigMapRef.Name}, &cm); err != nil {
			return nil, fmt.Errorf("ConfigMap %s: %w", ds.ConfigMapRef.Name, err)
		}
		data, ok := cm.Data["cases.jsonl"]
		if !ok {
			return nil, fmt.Errorf("ConfigMap %s has no key cases.jsonl", ds.ConfigMapRef.Name)
		}
		return eval.ParseJSONL([]byte(data))
	}
	return eval.FromSpec(ds.Cases), nil
}

func (r *KarsEvalReconciler) claim(k types.NamespacedName) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running[k] {
		return false
	}
	r.running[k] = true
	return true
}

func (r *KarsEvalReconciler) release(k types.NamespacedName) {
	r.mu.Lock()
	delete(r.running, k)
	r.mu.Unlock()
}

// report applies change to the status and patches it when it changed.
func (r *KarsEvalReconciler) report(ctx context.Context, ev *karsv1.KarsEval, change func(*karsv1.KarsEvalStatus)) error {
	st := *ev.Status.DeepCopy()
	st.ObservedGeneration = ev.Generation
	change(&st)
	if equality.Semantic.DeepEqual(st, ev.Status) {
		return nil
	}
	patch := client.MergeFrom(ev.DeepCopy())
	ev.Status = st
	if err := r.client.Status().Patch(ctx, ev, patch); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}

func (r *KarsEvalReconciler) setCond(st *karsv1.KarsEvalStatus, gen int64, t string, ok bool, reason, msg string) {
	s := metav1.ConditionFalse
	if ok {
		s = metav1.ConditionTrue
	}
	c := metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen,
		LastTransitionTime: metav1.NewTime(r.now().Truncate(time.Second))}
	if prev := meta.FindStatusCondition(st.Conditions, t); prev != nil && prev.Status == s {
		c.LastTransitionTime = prev.LastTransitionTime
	}
	meta.SetStatusCondition(&st.Conditions, c)
}

// caseResults renders results for the status, cut to what fits.
func caseResults(results []eval.CaseResult) []karsv1.EvalCaseResult {
	out := make([]karsv1.EvalCaseResult, 0, len(results))
	for _, cr := range results {
		in := cr.Case.Input
		if p := cr.Case.Probe; p != nil {
			in = "probe: " + p.Action + p.MemoryCanary
		}
		r := karsv1.EvalCaseResult{Input: cutTo(in, 256), Score: eval.FormatScore(cr.Score), Passed: cr.Passed,
			Reply: cutTo(cr.Obs.Reply, 512)}
		for _, c := range cr.Obs.Calls {
			r.ToolCalls = append(r.ToolCalls, c.Tool+"="+c.Decision)
		}
		for _, f := range cr.Failures {
			r.Failures = append(r.Failures, cutTo(f, 256))
		}
		if cr.Obs.NotApplicable != "" {
			r.Failures = append(r.Failures, "not applicable: "+cr.Obs.NotApplicable)
		}
		out = append(out, r)
		if len(out) == eval.MaxCases {
			break
		}
	}
	return out
}

func cutTo(s string, n int) string {
	s = strings.ToValidUTF8(s, "")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8Start(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

// setupKarsEvals registers the KarsEval reconciler.
func setupKarsEvals(mgr ctrl.Manager, o Options) error {
	r := &KarsEvalReconciler{client: mgr.GetClient(), runner: o.EvalRunner, now: o.Now, running: map[types.NamespacedName]bool{}}
	return ctrl.NewControllerManagedBy(mgr).
		Named("karseval").
		For(&karsv1.KarsEval{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		WithOptions(controller.Options{MaxConcurrentReconciles: 2}).
		Complete(r)
}
