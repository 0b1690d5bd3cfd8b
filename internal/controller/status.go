package controller

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// Condition reasons the sandbox reconciler sets besides the render reasons
// and the BYO reasons.
const (
	ReasonInferencePolicyNotFound = "InferencePolicyNotFound"
	ReasonToolPolicyNotFound      = "ToolPolicyNotFound"
	ReasonApplyFailed             = "ApplyFailed"
	// ReasonConflict: an object the sandbox needs exists and is not
	// kars's; the sandbox does not run until it is renamed or deleted.
	ReasonConflict          = "Conflict"
	ReasonSuspended         = "Suspended"
	ReasonActive            = "Active"
	ReasonRuntimeRunning    = "RuntimeRunning"
	ReasonStarting          = "Starting"
	ReasonAsExpected        = "AsExpected"
	ReasonRollingOut        = "RollingOut"
	ReasonComplete          = "Complete"
	ReasonDigestMatches     = "DigestMatches"
	ReasonAwaitingRouter    = "AwaitingRouterEnforcement"
	ReasonRouterUnreachable = "RouterUnreachable"
	ReasonWorkloadNotReady  = "WorkloadNotReady"
	ReasonReady             = "Ready"
)

// block is why a sandbox has no workload.
type block struct {
	reason  string
	message string
	// transient blocks (a missing policy, an unreachable registry) clear
	// by themselves; the others need a spec change (phase Failed).
	transient bool
	// runtime blocks concern the runtime itself (RuntimeReady says so).
	runtime bool
	// retryAfter requeues the sandbox; zero waits for a watch event.
	retryAfter time.Duration
	// keepWorkload leaves a workload that already runs alone: the block
	// says kars cannot verify a change right now (an unreachable
	// registry), not that what runs became unsafe.
	keepWorkload bool
}

// outcome is everything one reconcile observed about a sandbox.
type outcome struct {
	block          *block
	obs            Observation
	configDigest   string
	enforcedDigest string
	probeErr       error
	runtimeImage   string
	model          string
	a2aExpiresAt   *metav1.Time
	// a2a is the exposure decision; a2aRendered whether the rendered
	// sandbox is exposed (the decision and the window both).
	a2a         a2aOutcome
	a2aRendered bool
	upstream    *upstreamObs // co-existence modes only
	// auditHead is the router's audit head, when it was read this time.
	auditHead *AuditHead
	// allowlist is the AllowlistVerified condition; nil without an
	// allowlistRef.
	allowlist *allowlistCond
}

// sandboxStatus derives the sandbox's status from what one reconcile
// observed. Conditions keep their lastTransitionTime unless their status
// changes, so an unchanged outcome yields an equal status and no write.
func sandboxStatus(sb *karsv1.KarsSandbox, o outcome, now time.Time) karsv1.KarsSandboxStatus {
	st := *sb.Status.DeepCopy()
	gen := sb.Generation
	set := func(t string, ok bool, reason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		c := metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen}
		if old := meta.FindStatusCondition(st.Conditions, t); old != nil && old.Status == s {
			c.LastTransitionTime = old.LastTransitionTime
		} else {
			c.LastTransitionTime = metav1.NewTime(now.Truncate(time.Second))
		}
		meta.SetStatusCondition(&st.Conditions, c)
	}
	suspended := sb.Spec.Suspended
	st.ObservedGeneration = gen
	st.ConfigDigest = o.configDigest
	st.RuntimeImage = o.runtimeImage
	st.Model = o.model
	st.A2AExpiresAt = o.a2aExpiresAt
	st.RouterEndpoint = o.obs.RouterAdmin
	st.EnforcedDigest = ""
	if o.obs.Ready && !suspended {
		st.EnforcedDigest = o.enforcedDigest
	}
	enforcing := o.obs.Ready && o.configDigest != "" && o.enforcedDigest == o.configDigest

	if a := o.allowlist; a != nil {
		set(ConditionAllowlistVerified, a.ok, a.reason, a.message)
	} else {
		meta.RemoveStatusCondition(&st.Conditions, ConditionAllowlistVerified)
	}
	if suspended {
		set(karsv1.ConditionSuspended, true, ReasonSuspended, "spec.suspended is true: the workload is scaled to zero")
	} else {
		set(karsv1.ConditionSuspended, false, ReasonActive, "")
	}

	switch b := o.block; {
	case b != nil:
		set(karsv1.ConditionDegraded, true, b.reason, b.message)
		rtReason, rtMsg := ReasonWorkloadNotReady, "no workload: "+b.message
		if b.runtime {
			rtReason, rtMsg = b.reason, b.message
		}
		set(karsv1.ConditionRuntimeReady, false, rtReason, rtMsg)
		set(karsv1.ConditionProgressing, false, b.reason, "blocked: "+b.message)
		set(karsv1.ConditionRouterEnforcing, false, ReasonWorkloadNotReady, "no router runs")
		set(karsv1.ConditionReady, false, b.reason, b.message)
		st.Phase = karsv1.SandboxFailed
		if b.transient {
			st.Phase = karsv1.SandboxDegraded
		}
		return st
	default:
		set(karsv1.ConditionDegraded, false, ReasonAsExpected, "")
	}

	switch {
	case suspended:
		set(karsv1.ConditionRuntimeReady, false, ReasonSuspended, "scaled to zero")
		set(karsv1.ConditionProgressing, false, ReasonSuspended, "")
		set(karsv1.ConditionRouterEnforcing, false, ReasonSuspended, "no router runs while suspended")
		set(karsv1.ConditionReady, false, ReasonSuspended, "the sandbox is suspended")
		st.Phase = karsv1.SandboxSuspended
		return st
	case !o.obs.Ready:
		set(karsv1.ConditionRuntimeReady, false, orDefault(o.obs.Reason, ReasonStarting), o.obs.Message)
		set(karsv1.ConditionRouterEnforcing, false, ReasonWorkloadNotReady, "waiting for the router to start")
	default:
		set(karsv1.ConditionRuntimeReady, true, ReasonRuntimeRunning, o.obs.Message)
		switch {
		case enforcing:
			set(karsv1.ConditionRouterEnforcing, true, ReasonDigestMatches, "the router enforces "+o.configDigest)
		case o.probeErr != nil:
			set(karsv1.ConditionRouterEnforcing, false, ReasonRouterUnreachable, o.probeErr.Error())
		default:
			set(karsv1.ConditionRouterEnforcing, false, ReasonAwaitingRouter,
				fmt.Sprintf("compiled %s, the router enforces %s", o.configDigest, orNone(o.enforcedDigest)))
		}
	}
	if h := o.auditHead; h != nil {
		ok, reason, msg := anchorAudit(&st, h, now)
		set(karsv1.ConditionAuditIntact, ok, reason, msg)
	}
	if enforcing {
		set(karsv1.ConditionProgressing, false, ReasonComplete, "")
		set(karsv1.ConditionReady, true, ReasonReady, "the agent runs under the compiled policy")
		st.Phase = karsv1.SandboxRunning
		return st
	}
	msg := o.obs.Message
	reason := ReasonWorkloadNotReady
	if o.obs.Ready {
		reason, msg = ReasonAwaitingRouter, "waiting for the router to load config "+o.configDigest
	}
	set(karsv1.ConditionProgressing, true, ReasonRollingOut, msg)
	set(karsv1.ConditionReady, false, reason, msg)
	st.Phase = karsv1.SandboxProvisioning
	return st
}

// Reasons of the AuditIntact condition.
const (
	ReasonAnchored             = "Anchored"
	ReasonAuditTruncated       = "Truncated"
	ReasonCheckpointKeyChanged = "CheckpointKeyChanged"
)

// anchorAudit compares the router's audit head with the anchor in st and
// moves the anchor forward when they agree. The anchor never moves back
// and the pinned key never changes: a router whose log is shorter than
// what it was seen to write, or that signs with another key, keeps the old
// anchor (the evidence) and reports why.
func anchorAudit(st *karsv1.KarsSandboxStatus, h *AuditHead, now time.Time) (bool, string, string) {
	a := st.Audit
	if a == nil {
		a = &karsv1.AuditAnchor{}
	}
	if a.CheckpointKey != "" && h.CheckpointKey != a.CheckpointKey {
		return false, ReasonCheckpointKeyChanged, fmt.Sprintf("the router signs its audit checkpoints with key %s, but %s was pinned: its state volume was replaced or tampered with (clear status.audit to pin the new key once explained)", h.CheckpointKey, a.CheckpointKey)
	}
	if int64(h.Seq) < a.Seq {
		return false, ReasonAuditTruncated, fmt.Sprintf("the router's audit log ends at entry %d, but entry %d (hash %s) was recorded at %s: entries were cut", h.Seq, a.Seq, a.Hash, a.RecordedAt.UTC().Format(time.RFC3339))
	}
	st.Audit = &karsv1.AuditAnchor{CheckpointKey: h.CheckpointKey, Seq: int64(h.Seq), Hash: h.Hash, RecordedAt: &metav1.Time{Time: now.Truncate(time.Second)}}
	return true, ReasonAnchored, fmt.Sprintf("audit head entry %d recorded; `kars audit verify` checks the log still holds it", h.Seq)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "nothing yet"
	}
	return s
}
