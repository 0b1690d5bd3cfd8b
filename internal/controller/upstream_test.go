package controller

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/agentsandbox"
)

// Observe mode mirrors the upstream Sandbox and says it governs nothing;
// the other modes only add UpstreamReady; off removes it.
func TestUpstreamConditions(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	sb := &karsv1.KarsSandbox{ObjectMeta: metav1.ObjectMeta{Name: "m", Generation: 3}}
	ready := agentsandbox.Status{Found: true, OperatingMode: agentsandbox.OperatingRunning, Ready: true, Reason: "DependenciesReady", Message: "pod ready"}

	o := outcome{upstream: &upstreamObs{mode: agentsandbox.ModeObserve, name: "web", status: ready}}
	st := sandboxStatus(sb, o, now)
	upstreamConditions(&st, sb, o, now)
	if st.Phase != karsv1.SandboxRunning || !meta.IsStatusConditionTrue(st.Conditions, karsv1.ConditionReady) ||
		meta.FindStatusCondition(st.Conditions, karsv1.ConditionRouterEnforcing).Reason != ReasonObserveOnly ||
		!meta.IsStatusConditionTrue(st.Conditions, ConditionUpstreamReady) {
		t.Errorf("observe, upstream ready: phase %s conditions %+v", st.Phase, st.Conditions)
	}
	sb.Status = st

	suspended := ready
	suspended.Ready, suspended.OperatingMode, suspended.Reason = false, agentsandbox.OperatingSuspended, "SandboxSuspended"
	o.upstream.status = suspended
	st = sandboxStatus(sb, o, now.Add(time.Minute))
	upstreamConditions(&st, sb, o, now.Add(time.Minute))
	if st.Phase != karsv1.SandboxSuspended || meta.IsStatusConditionTrue(st.Conditions, karsv1.ConditionReady) {
		t.Errorf("observe, upstream suspended: phase %s", st.Phase)
	}
	if c := meta.FindStatusCondition(st.Conditions, ConditionUpstreamReady); c.Reason != "SandboxSuspended" || !c.LastTransitionTime.Time.Equal(now.Add(time.Minute)) {
		t.Errorf("UpstreamReady %+v", c)
	}

	// Translate adds the mirror and leaves the kars conditions alone.
	o = outcome{upstream: &upstreamObs{mode: agentsandbox.ModeTranslate, name: "m", status: ready}, configDigest: "d"}
	st = sandboxStatus(sb, o, now)
	upstreamConditions(&st, sb, o, now)
	if c := meta.FindStatusCondition(st.Conditions, karsv1.ConditionRouterEnforcing); c.Reason == ReasonObserveOnly {
		t.Error("translate reported observe-only")
	}
	sb.Status = st
	st = sandboxStatus(sb, outcome{}, now)
	upstreamConditions(&st, sb, outcome{}, now)
	if meta.FindStatusCondition(st.Conditions, ConditionUpstreamReady) != nil {
		t.Error("off mode kept UpstreamReady")
	}
}
