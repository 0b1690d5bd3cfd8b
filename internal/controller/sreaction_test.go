package controller

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
)

func sreAction(ns, name string, action karsv1.SREActionType, target string, params map[string]string) *karsv1.KarsSREAction {
	kind := "KarsSandbox"
	if action == karsv1.SRERevokePairing {
		kind = "KarsPairing"
	}
	return &karsv1.KarsSREAction{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: karsv1.KarsSREActionSpec{
		Action: action, Target: karsv1.SREActionTarget{Kind: kind, Name: target}, Params: params,
		Reason: "runbook step from the on-call agent", ProposedBy: "sre-agent", Approval: karsv1.SREApproval{State: "Pending"}}}
}

// decide sets the approval as `kars sre approve|reject` does.
func decide(t *testing.T, a *karsv1.KarsSREAction, state string) {
	t.Helper()
	updateRetrying(t, client.ObjectKeyFromObject(a), &karsv1.KarsSREAction{}, func(cur *karsv1.KarsSREAction) {
		cur.Spec.Approval = karsv1.SREApproval{State: state, DecidedBy: "alice", Comment: "checked the dashboard"}
	})
}

func waitSREPhase(t *testing.T, a *karsv1.KarsSREAction, phase string) *karsv1.KarsSREAction {
	t.Helper()
	var cur karsv1.KarsSREAction
	eventually(t, 20*time.Second, a.Name+" phase "+phase, func() error {
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(a), &cur); err != nil {
			return err
		}
		if cur.Status.Phase != phase {
			return errorf("phase %q (%s)", cur.Status.Phase, cur.Status.Result)
		}
		return nil
	})
	return &cur
}

// runningSandbox is a sandbox whose Deployment is ready and whose stand-in
// router serves the admin API.
func runningSandbox(t *testing.T, ns, name string, inference *karsv1.InferencePolicy) (*karsv1.KarsSandbox, *standInRouter) {
	t.Helper()
	sb := minimalSandbox(ns, name, karsv1.RuntimeOpenClaw)
	if inference == nil {
		inference = offlineInference(ns, sb.Spec.InferenceRef.Name)
	}
	create(t, inference, toolPolicy(ns, sb.Spec.Governance.ToolPolicyRef.Name), sb)
	waitRendered(t, sb)
	r := startRouter(t, sb)
	markDeploymentReady(t, sb)
	return waitCondition(t, sb, karsv1.ConditionReady, metav1.ConditionTrue, ReasonReady), r
}

// An approved action runs once; one that is still Pending or was rejected
// never does, however long it waits.
func TestSREActionsRunOnlyWhenApproved(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "sre-approval")
	sb, _ := runningSandbox(t, ns, "bot", nil)
	ctx := context.Background()

	pending := sreAction(ns, "suspend-pending", karsv1.SRESuspendSandbox, "bot", nil)
	rejected := sreAction(ns, "suspend-rejected", karsv1.SRESuspendSandbox, "bot", nil)
	create(t, pending, rejected)
	got := waitSREPhase(t, pending, SREPhaseProposed)
	if got.Status.ExpiresAt == nil || !got.Status.ExpiresAt.Time.Equal(got.CreationTimestamp.Add(15*time.Minute)) {
		t.Errorf("expiresAt %v, want creation + 15m", got.Status.ExpiresAt)
	}
	decide(t, rejected, "Rejected")
	got = waitSREPhase(t, rejected, SREPhaseRejected)
	if !strings.Contains(got.Status.Result, "rejected by alice: checked the dashboard") {
		t.Errorf("result %q", got.Status.Result)
	}
	// Neither touched the sandbox.
	time.Sleep(time.Second)
	var cur karsv1.KarsSandbox
	get(t, ns, "bot", &cur)
	if cur.Spec.Suspended {
		t.Fatal("a pending or rejected action suspended the sandbox")
	}

	// Approved: it runs, once. Resuming by hand afterwards is not undone.
	decide(t, pending, "Approved")
	got = waitSREPhase(t, pending, SREPhaseSucceeded)
	get(t, ns, "bot", &cur)
	if !cur.Spec.Suspended || got.Status.ExecutedAt == nil || !strings.Contains(got.Status.Result, "sandbox suspended") {
		t.Fatalf("suspended=%v executedAt=%v result=%q", cur.Spec.Suspended, got.Status.ExecutedAt, got.Status.Result)
	}
	updateRetrying(t, client.ObjectKeyFromObject(sb), &karsv1.KarsSandbox{}, func(s *karsv1.KarsSandbox) { s.Spec.Suspended = false })
	// Touch the action (a new comment is not allowed: decisions are final;
	// labels are), which would wake a reconciler that did not know it was done.
	updateRetrying(t, client.ObjectKeyFromObject(pending), &karsv1.KarsSREAction{}, func(a *karsv1.KarsSREAction) {
		a.Labels = map[string]string{"touched": "yes"}
	})
	time.Sleep(time.Second)
	get(t, ns, "bot", &cur)
	if cur.Spec.Suspended {
		t.Fatal("a finished action ran a second time")
	}

	// The audit trail: an event on the action and one on the sandbox.
	eventually(t, 10*time.Second, "audit events", func() error {
		var evs eventsv1.EventList
		if err := k8s.List(ctx, &evs, client.InNamespace(ns)); err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, e := range evs.Items {
			if e.Reason == ReasonSREExecuted && strings.Contains(e.Note, "SuspendSandbox KarsSandbox/bot (proposed by sre-agent") {
				seen[e.Regarding.Kind] = true
			}
		}
		if !seen["KarsSREAction"] || !seen["KarsSandbox"] {
			return errorf("events %v", seen)
		}
		return nil
	})
}

// Each typed action does what it says, against the real API server.
func TestSREActionsEachType(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "sre-types")
	ctx := context.Background()
	azure := azureInference(ns, "bot-inference")
	sb, router := runningSandbox(t, ns, "bot", azure)

	run := func(a *karsv1.KarsSREAction, want string) *karsv1.KarsSREAction {
		t.Helper()
		create(t, a)
		decide(t, a, "Approved")
		return waitSREPhase(t, a, want)
	}

	t.Run("SetModel", func(t *testing.T) {
		got := run(sreAction(ns, "set-model", karsv1.SRESetModel, "bot", map[string]string{"model": "gpt-4.1-mini"}), SREPhaseSucceeded)
		var ip karsv1.InferencePolicy
		get(t, ns, "bot-inference", &ip)
		if p := ip.Spec.ModelPreference.Primary; p.Model != "gpt-4.1-mini" || p.Deployment != "gpt-4.1-mini" {
			t.Fatalf("primary %+v", p)
		}
		if !strings.Contains(got.Status.Result, "gpt-4.1 → gpt-4.1-mini") {
			t.Errorf("result %q", got.Status.Result)
		}
	})

	t.Run("ReleaseQuarantine", func(t *testing.T) {
		var calls atomic.Int32
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodDelete || r.URL.Path != "/admin/v1/quarantine" {
				http.NotFound(w, r)
				return
			}
			calls.Add(1)
			json.NewEncoder(w).Encode(map[string]any{"agent": "kars-sandbox/" + ns + "/bot", "cleared": true})
		})
		router.other.Store(&h)
		got := run(sreAction(ns, "release", karsv1.SREReleaseQuarantine, "bot", nil), SREPhaseSucceeded)
		if calls.Load() != 1 || !strings.Contains(got.Status.Result, "released by the router") {
			t.Fatalf("router called %d times; result %q", calls.Load(), got.Status.Result)
		}
	})

	t.Run("QuarantineAgent", func(t *testing.T) {
		var calls atomic.Int32
		var reason atomic.Value
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost || r.URL.Path != "/admin/v1/quarantine" {
				http.NotFound(w, r)
				return
			}
			reason.Store(r.URL.Query().Get("reason"))
			n := calls.Add(1)
			json.NewEncoder(w).Encode(map[string]any{"agent": "kars-sandbox/" + ns + "/bot", "imposed": n == 1})
		})
		router.other.Store(&h)
		a := sreAction(ns, "quarantine", karsv1.SREQuarantineAgent, "bot", nil)
		a.Spec.Reason = "exfiltration suspected\nsee incident 42 " + strings.Repeat("é", 200)
		got := run(a, SREPhaseSucceeded)
		if calls.Load() != 1 || !strings.Contains(got.Status.Result, "quarantined by the router") {
			t.Fatalf("router called %d times; result %q", calls.Load(), got.Status.Result)
		}
		r, _ := reason.Load().(string)
		if !strings.HasPrefix(r, "KarsSREAction "+ns+"/quarantine: exfiltration suspected see incident 42 é") || len(r) > 256 || !utf8.ValidString(r) {
			t.Errorf("reason sent to the router: %q (%d bytes)", r, len(r))
		}
		// A second action finds the agent quarantined already.
		got = run(sreAction(ns, "quarantine-again", karsv1.SREQuarantineAgent, "bot", nil), SREPhaseSucceeded)
		if calls.Load() != 2 || !strings.Contains(got.Status.Result, "already quarantined") {
			t.Fatalf("router called %d times; result %q", calls.Load(), got.Status.Result)
		}
	})

	t.Run("RotateRouterCredentials", func(t *testing.T) {
		names, _ := render.NamesFor(sb)
		var before corev1.Secret
		get(t, ns, names.RouterAdmin, &before)
		oldCert := observe(t, sb).deploy.Spec.Template.Annotations[render.AnnotationAdminCert]
		got := run(sreAction(ns, "rotate", karsv1.SRERotateRouterCredentials, "bot", nil), SREPhaseSucceeded)
		if got.Annotations[AnnotationActingOn] != string(before.UID) {
			t.Errorf("recorded %q, want the old Secret's UID", got.Annotations[AnnotationActingOn])
		}
		eventually(t, 20*time.Second, "new admin credentials", func() error {
			var after corev1.Secret
			if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: names.RouterAdmin}, &after); err != nil {
				return err
			}
			if after.UID == before.UID || string(after.Data[render.AdminTokenKey]) == string(before.Data[render.AdminTokenKey]) {
				return errorf("admin Secret not replaced")
			}
			if observe(t, sb).deploy.Spec.Template.Annotations[render.AnnotationAdminCert] == oldCert {
				return errorf("pod template still carries the old certificate digest")
			}
			return nil
		})
	})

	t.Run("RestartSandbox", func(t *testing.T) {
		// Play the kubelet: the sandbox's pod exists.
		pod := func(name string) *corev1.Pod {
			return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: render.Selector(sb)},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "agent"}}}}
		}
		old := pod("bot-old")
		create(t, old)
		got := run(sreAction(ns, "restart", karsv1.SRERestartSandbox, "bot", nil), SREPhaseSucceeded)
		var p corev1.Pod
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(old), &p); err == nil && p.DeletionTimestamp.IsZero() {
			t.Fatalf("old pod not deleted; result %q", got.Status.Result)
		}
		if got.Annotations[AnnotationActingOn] != string(old.UID) {
			t.Errorf("recorded %q, want the old pod's UID %s", got.Annotations[AnnotationActingOn], old.UID)
		}
	})

	t.Run("RevokeA2AExposure", func(t *testing.T) {
		updateRetrying(t, client.ObjectKeyFromObject(sb), &karsv1.KarsSandbox{}, func(s *karsv1.KarsSandbox) {
			s.Spec.A2A = karsv1.A2AExposure{Enabled: true, ExpiresAt: &metav1.Time{Time: time.Now().Add(time.Hour)},
				AllowedCallers: []karsv1.A2ACaller{{JWSThumbprint: karsv1.Digest("sha256:" + strings.Repeat("a", 64))}},
				RateLimit:      &karsv1.RequestRateLimit{RPM: 10}}
		})
		run(sreAction(ns, "revoke-a2a", karsv1.SRERevokeA2AExposure, "bot", nil), SREPhaseSucceeded)
		var cur karsv1.KarsSandbox
		get(t, ns, "bot", &cur)
		if cur.Spec.A2A.Enabled {
			t.Fatal("still exposed")
		}
	})

	t.Run("RevokePairing", func(t *testing.T) {
		p := &karsv1.KarsPairing{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "alice-laptop"}, Spec: karsv1.KarsPairingSpec{
			TokenHash: karsv1.Digest("sha256:" + strings.Repeat("b", 64)), ExpiresAt: metav1.Time{Time: time.Now().Add(24 * time.Hour)},
			Capabilities: []karsv1.PairingCapability{karsv1.CapabilityOffload}}}
		create(t, p)
		run(sreAction(ns, "revoke-pairing", karsv1.SRERevokePairing, "alice-laptop", nil), SREPhaseSucceeded)
		var cur karsv1.KarsPairing
		get(t, ns, "alice-laptop", &cur)
		if !cur.Spec.Revoked {
			t.Fatal("pairing not revoked")
		}
	})

	t.Run("SuspendThenResume", func(t *testing.T) {
		run(sreAction(ns, "suspend", karsv1.SRESuspendSandbox, "bot", nil), SREPhaseSucceeded)
		waitCondition(t, sb, karsv1.ConditionSuspended, metav1.ConditionTrue, ReasonSuspended)
		run(sreAction(ns, "resume", karsv1.SREResumeSandbox, "bot", nil), SREPhaseSucceeded)
		waitCondition(t, sb, karsv1.ConditionSuspended, metav1.ConditionFalse, ReasonActive)
	})

	t.Run("Missing targets fail clearly", func(t *testing.T) {
		got := run(sreAction(ns, "ghost", karsv1.SRESuspendSandbox, "nobody", nil), SREPhaseFailed)
		if !strings.Contains(got.Status.Result, "KarsSandbox "+ns+"/nobody not found") {
			t.Errorf("result %q", got.Status.Result)
		}
	})
}
