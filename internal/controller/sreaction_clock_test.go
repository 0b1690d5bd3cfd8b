package controller

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/testenv"
)

// annotated makes an events recorder fit controller-runtime's interface.
type annotated struct{ events.EventRecorderLogger }

func (a annotated) AnnotatedEventf(regarding, related runtime.Object, _ map[string]string, eventtype, reason, action, note string, args ...any) {
	a.Eventf(regarding, related, eventtype, reason, action, note, args...)
}

// podsStandIn plays a substrate's pods for RestartSandbox: one running pod
// per sandbox; a restart replaces it with a new identity.
type podsStandIn struct {
	Substrate
	mu       sync.Mutex
	running  string
	restarts int
}

func (p *podsStandIn) Running(context.Context, *karsv1.KarsSandbox) ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return []string{p.running}, nil
}

func (p *podsStandIn) Restart(_ context.Context, _ *karsv1.KarsSandbox, ids []string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if slices.Contains(ids, p.running) {
		p.restarts++
		p.running = "pod-" + strconv.Itoa(p.restarts+1)
	}
	return nil
}

// The TTL, driven by a clock the test sets, against the real API server:
// nothing runs at or after creation + ttlMinutes, whenever it was approved,
// and what runs, runs once — also with two reconcilers and after a crash
// mid-execution.
func TestSREActionTTLAndOnce(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	cl := env.Client
	cs := kubernetes.NewForConfigOrDie(env.Config)
	bc := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
	bc.StartRecordingToSink(ctx.Done())
	t.Cleanup(bc.Shutdown)

	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	pods := &podsStandIn{running: "pod-1"}
	newReconciler := func() *SREActionReconciler {
		return &SREActionReconciler{client: cl, substrate: pods, events: annotated{bc.NewRecorder(Scheme(), "kars-controller")}, now: clock}
	}
	r := newReconciler()

	ns := "sre-clock"
	if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	sb := minimalSandbox(ns, "bot", karsv1.RuntimeOpenClaw)
	if err := cl.Create(ctx, sb); err != nil {
		t.Fatal(err)
	}
	reconcile := func(r *SREActionReconciler, a *karsv1.KarsSREAction) ctrl.Result {
		t.Helper()
		res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(a)})
		if err != nil {
			t.Fatalf("reconcile %s: %v", a.Name, err)
		}
		return res
	}
	phase := func(a *karsv1.KarsSREAction) *karsv1.KarsSREAction {
		t.Helper()
		var cur karsv1.KarsSREAction
		if err := cl.Get(ctx, client.ObjectKeyFromObject(a), &cur); err != nil {
			t.Fatal(err)
		}
		return &cur
	}
	newAction := func(name, state string, ttl int32) *karsv1.KarsSREAction {
		t.Helper()
		a := sreAction(ns, name, karsv1.SRERestartSandbox, "bot", nil)
		a.Spec.TTLMinutes = ttl
		if state != "Pending" {
			a.Spec.Approval = karsv1.SREApproval{State: state, DecidedBy: "alice"}
		}
		if err := cl.Create(ctx, a); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		now = a.CreationTimestamp.Time // the clock starts at creation
		mu.Unlock()
		return a
	}

	t.Run("pending until it expires, then approved: never runs", func(t *testing.T) {
		a := newAction("late-approval", "Pending", 5)
		res := reconcile(r, a)
		if p := phase(a).Status.Phase; p != SREPhaseProposed || res.RequeueAfter < 5*time.Minute {
			t.Fatalf("phase %s, requeue %v (want Proposed, at the expiry)", p, res.RequeueAfter)
		}
		advance(5 * time.Minute)
		reconcile(r, a)
		if p := phase(a); p.Status.Phase != SREPhaseExpired {
			t.Fatalf("phase %s", p.Status.Phase)
		}
		cur := phase(a)
		cur.Spec.Approval = karsv1.SREApproval{State: "Approved", DecidedBy: "alice"}
		if err := cl.Update(ctx, cur); err != nil {
			t.Fatal(err)
		}
		reconcile(r, a)
		if p := phase(a).Status.Phase; p != SREPhaseExpired || pods.restarts != 0 {
			t.Fatalf("phase %s, restarts %d", p, pods.restarts)
		}
	})

	t.Run("approved in time but first seen after the TTL: never runs", func(t *testing.T) {
		a := newAction("seen-late", "Approved", 1)
		advance(time.Minute)
		reconcile(r, a)
		if p := phase(a).Status.Phase; p != SREPhaseExpired || pods.restarts != 0 {
			t.Fatalf("phase %s, restarts %d", p, pods.restarts)
		}
	})

	t.Run("rejected: never runs, even before the TTL", func(t *testing.T) {
		a := newAction("rejected", "Rejected", 15)
		reconcile(r, a)
		reconcile(r, a)
		if p := phase(a).Status.Phase; p != SREPhaseRejected || pods.restarts != 0 {
			t.Fatalf("phase %s, restarts %d", p, pods.restarts)
		}
	})

	t.Run("approved before the TTL: runs once", func(t *testing.T) {
		a := newAction("in-time", "Approved", 15)
		advance(14*time.Minute + 59*time.Second)
		for range 5 {
			reconcile(r, a)
		}
		if p := phase(a); p.Status.Phase != SREPhaseSucceeded || pods.restarts != 1 || p.Status.ExecutedAt == nil {
			t.Fatalf("phase %s, restarts %d", p.Status.Phase, pods.restarts)
		}
	})

	t.Run("two reconcilers at once: runs once", func(t *testing.T) {
		before := pods.restarts
		a := newAction("raced", "Approved", 15)
		r2 := newReconciler()
		var wg sync.WaitGroup
		for _, rr := range []*SREActionReconciler{r, r2, r, r2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 3 {
					if _, err := rr.Reconcile(ctx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(a)}); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		for phase(a).Status.Phase != SREPhaseSucceeded {
			reconcile(r, a)
		}
		if pods.restarts != before+1 {
			t.Fatalf("restarted %d times", pods.restarts-before)
		}
	})

	t.Run("controller died mid-execution: the successor finishes it once", func(t *testing.T) {
		before := pods.restarts
		a := newAction("crashed", "Approved", 15)
		// The dead controller had claimed it and recorded the pod it was
		// about to restart, and restarted it; then it died.
		cur := phase(a)
		cur.Annotations = map[string]string{AnnotationActingOn: pods.running}
		if err := cl.Update(ctx, cur); err != nil {
			t.Fatal(err)
		}
		cur = phase(a)
		cur.Status.Phase, cur.Status.ExecutedAt = SREPhaseExecuting, &metav1.Time{Time: clock()}
		if err := cl.Status().Update(ctx, cur); err != nil {
			t.Fatal(err)
		}
		pods.Restart(ctx, sb, []string{pods.running})
		// Its successor runs after the TTL: an action that started in time
		// is finished, and the pod it restarted is not restarted again.
		advance(20 * time.Minute)
		reconcile(newReconciler(), a)
		if p := phase(a).Status.Phase; p != SREPhaseSucceeded || pods.restarts != before+1 {
			t.Fatalf("phase %s, restarted %d times", p, pods.restarts-before)
		}
	})
}
