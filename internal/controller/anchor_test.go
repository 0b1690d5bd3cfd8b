package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

func hash64(c byte) string { return strings.Repeat(string(c), 64) }

// The controller copies a running router's audit head into the status and
// pins its checkpoint key; a router whose log later ends before that head,
// or that signs with another key, is reported (AuditIntact=False) and the
// recorded evidence is kept.
func TestAuditHeadAnchoredOutsideTheRouter(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "anchor")
	sb := minimalSandbox(ns, "ledger", karsv1.RuntimeOpenClaw)
	withPolicies(t, sb)
	create(t, sb)
	waitRendered(t, sb)
	router := startRouter(t, sb)
	router.audit.Store(&AuditHead{Seq: 10, Hash: hash64('a'), CheckpointKey: "key-one"})
	markDeploymentReady(t, sb)

	cur := waitCondition(t, sb, karsv1.ConditionAuditIntact, metav1.ConditionTrue, ReasonAnchored)
	if a := cur.Status.Audit; a == nil || a.Seq != 10 || a.Hash != hash64('a') || a.CheckpointKey != "key-one" || a.RecordedAt == nil {
		t.Fatalf("anchor %+v", cur.Status.Audit)
	}
	router.audit.Store(&AuditHead{Seq: 42, Hash: hash64('b'), CheckpointKey: "key-one"})
	waitAnchor(t, sb, 42)

	// The log now ends before entry 42: its tail (and checkpoints) were cut.
	router.audit.Store(&AuditHead{Seq: 7, Hash: hash64('c'), CheckpointKey: "key-one"})
	cur = waitCondition(t, sb, karsv1.ConditionAuditIntact, metav1.ConditionFalse, ReasonAuditTruncated)
	if a := cur.Status.Audit; a.Seq != 42 || a.Hash != hash64('b') {
		t.Fatalf("the anchor moved back: %+v", a)
	}

	// A router that signs with another key (a replaced state volume).
	router.audit.Store(&AuditHead{Seq: 99, Hash: hash64('d'), CheckpointKey: "key-two"})
	cur = waitCondition(t, sb, karsv1.ConditionAuditIntact, metav1.ConditionFalse, ReasonCheckpointKeyChanged)
	if a := cur.Status.Audit; a.Seq != 42 || a.CheckpointKey != "key-one" {
		t.Fatalf("the pinned key or anchor changed: %+v", a)
	}
	// The sandbox itself keeps running: this is an integrity alarm.
	if !condTrue(cur.Status.Conditions, karsv1.ConditionReady) {
		t.Fatal("Ready dropped")
	}
}

func waitAnchor(t *testing.T, sb *karsv1.KarsSandbox, seq int64) {
	t.Helper()
	eventually(t, 20*time.Second, "anchor at entry", func() error {
		var cur karsv1.KarsSandbox
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(sb), &cur); err != nil {
			return err
		}
		if cur.Status.Audit == nil || cur.Status.Audit.Seq != seq {
			return errorf("anchor %+v", cur.Status.Audit)
		}
		return nil
	})
}
