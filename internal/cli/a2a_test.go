package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/a2a/a2atest"
)

func TestExposePatch(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	tp := "sha256:" + strings.Repeat("ab", 32)
	b, err := exposePatch(exposeOptions{callers: []string{tp + "=partner-planner"}, skills: []string{"search.web=Web search", "summarize.text"},
		expires: "7d", minTrust: 700, rpm: 30, burst: 5, bodyCap: 1 << 20, session: 60}, now)
	if err != nil {
		t.Fatal(err)
	}
	// The patch decodes into the CRD's type as the seed's does.
	var p struct {
		Spec struct {
			A2A karsv1.A2AExposure `json:"a2a"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	a := p.Spec.A2A
	if !a.Enabled || string(a.AllowedCallers[0].JWSThumbprint) != tp || a.AllowedCallers[0].DisplayName != "partner-planner" ||
		a.AdvertisedSkills[0].Description != "Web search" || a.AdvertisedSkills[1].Name != "summarize.text" ||
		!a.ExpiresAt.Time.Equal(now.Add(7*24*time.Hour)) || *a.MinimumTrustScore != 700 || a.RateLimit.RPM != 30 {
		t.Fatalf("patch %s", b)
	}
	for name, o := range map[string]exposeOptions{
		"no caller":      {skills: []string{"s"}, expires: "1d"},
		"bad thumbprint": {callers: []string{"abcd"}, skills: []string{"s"}, expires: "1d"},
		"no skill":       {callers: []string{tp}, expires: "1d"},
		"no expiry":      {callers: []string{tp}, skills: []string{"s"}},
		"31 days":        {callers: []string{tp}, skills: []string{"s"}, expires: "31d"},
		"past":           {callers: []string{tp}, skills: []string{"s"}, expires: "2026-01-01T00:00:00Z"},
	} {
		if _, err := exposePatch(o, now); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := exposePatch(exposeOptions{callers: []string{tp}, skills: []string{"s"}, expires: "720h"}, now); err != nil {
		t.Errorf("30 days: %v", err)
	}
}

func TestPrintExposed(t *testing.T) {
	now := time.Now()
	floor := karsv1.TrustScore(700)
	items := []karsv1.KarsSandbox{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-rb", Name: "research-bot", Generation: 2}, Spec: karsv1.KarsSandboxSpec{A2A: karsv1.A2AExposure{
			Enabled: true, ExpiresAt: &metav1.Time{Time: now.Add(48 * time.Hour)}, MinimumTrustScore: &floor,
			AllowedCallers:   []karsv1.A2ACaller{{JWSThumbprint: "sha256:" + karsv1.Digest(strings.Repeat("a", 64)), DisplayName: "partner-planner"}},
			AdvertisedSkills: []karsv1.A2ASkill{{Name: "search.web"}}, RateLimit: &karsv1.RequestRateLimit{RPM: 30, Burst: 5}}},
			Status: karsv1.KarsSandboxStatus{CommonStatus: karsv1.CommonStatus{Conditions: []metav1.Condition{{Type: karsv1.ConditionA2AExposed, Status: "True", Reason: "Exposed", ObservedGeneration: 2}}}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-x", Name: "closed"}},
	}
	var out bytes.Buffer
	if err := printExposed(&out, items, now); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{"kars-rb/research-bot", "True/Exposed", "partner-planner", "search.web", "700", "30/min burst 5", "in 48h0m0s"} {
		if !strings.Contains(s, want) {
			t.Errorf("list lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "closed") {
		t.Errorf("listed a sandbox without exposure:\n%s", s)
	}
}

func TestThumbprintOf(t *testing.T) {
	id := a2atest.NewIdentity(t, "partner")
	want := id.Thumbprint(t)
	for name, raw := range map[string][]byte{"certificate": id.CertPEM, "card": a2atest.CallerCard(t, id, "partner")} {
		if got, err := thumbprintOf(raw); err != nil || got != want {
			t.Errorf("%s: %s %v, want %s", name, got, err, want)
		}
	}
	if _, err := thumbprintOf([]byte(`{"name":"unsigned"}`)); err == nil {
		t.Error("an unsigned card gave a thumbprint")
	}
}
