package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/offload"
)

// offloadTable groups live offload sandboxes under their pairing, shows
// slots, today's tokens and each pairing's state, and leaves out pairings
// that are not offload pairings and sandboxes that are not offloads.
func TestOffloadTable(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	pairing := func(name string, revoked bool, expires time.Time, offloadTemplate bool) karsv1.KarsPairing {
		p := karsv1.KarsPairing{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-system", Name: name},
			Spec: karsv1.KarsPairingSpec{Slots: 3, Revoked: revoked, ExpiresAt: metav1.NewTime(expires)}}
		if offloadTemplate {
			p.Spec.Offload = &karsv1.OffloadTemplate{}
		}
		return p
	}
	alice := pairing("alice-laptop", false, now.Add(90*24*time.Hour), true)
	alice.Status.SlotsInUse, alice.Status.TokensUsed, alice.Status.TokensReserved = 2, 1200, 800
	sb := func(ns, name string, labels map[string]string) *karsv1.KarsSandbox {
		return &karsv1.KarsSandbox{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}}
	}
	off := func(p string) map[string]string {
		return map[string]string{offload.LabelOffload: "true", offload.LabelPairing: p}
	}
	sbs := []*karsv1.KarsSandbox{
		sb("kars-offload-bbbb", "offload-bbbb", off("alice-laptop")),
		sb("kars-offload-aaaa", "offload-aaaa", off("alice-laptop")),
		sb("kars-bot", "bot", nil),
		sb("kars-offload-cccc", "offload-cccc", off("bob-laptop")),
	}
	var b bytes.Buffer
	err := offloadTable(&b, []karsv1.KarsPairing{
		pairing("zed-revoked", true, now.Add(time.Hour), true),
		alice,
		pairing("bot-peer", false, now.Add(time.Hour), false),
		pairing("old", false, now.Add(-time.Hour), true),
	}, sbs, now)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "OFFLOAD PAIRING") {
		t.Fatalf("table:\n%s", b.String())
	}
	want := []string{
		"alice-laptop kars-system 2/3 1200 (+800 held) 2027-03-07 active kars-offload-aaaa/offload-aaaa,kars-offload-bbbb/offload-bbbb",
		"old kars-system 0/3 0 2026-12-07 expired -",
		"zed-revoked kars-system 0/3 0 2026-12-07 revoked -",
	}
	for i, w := range want {
		if got := strings.Join(strings.Fields(lines[i+1]), " "); got != w {
			t.Errorf("row %d = %q, want %q", i+1, got, w)
		}
	}
	// No offload pairing: nothing at all.
	b.Reset()
	if err := offloadTable(&b, []karsv1.KarsPairing{pairing("bot-peer", false, now, false)}, sbs, now); err != nil || b.Len() != 0 {
		t.Fatalf("printed %q, %v", b.String(), err)
	}
}
