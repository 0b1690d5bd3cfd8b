package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
)

func TestCovers(t *testing.T) {
	obj := func(kv ...any) map[string]any {
		m := map[string]any{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	cases := []struct {
		name      string
		want, got any
		covered   bool
	}{
		{"server defaults are extra keys", obj("a", int64(1)), obj("a", int64(1), "b", "default"), true},
		{"changed value", obj("a", int64(1)), obj("a", int64(2)), false},
		{"zero value omitted by the server", obj("readOnly", false, "n", int64(0), "s", ""), obj(), true},
		{"zero value changed by someone", obj("automount", false), obj("automount", true), false},
		{"non-zero value missing", obj("runAsUser", int64(1000)), obj(), false},
		{"list element changed", obj("l", []any{obj("x", "1"), obj("x", "2")}), obj("l", []any{obj("x", "1"), obj("x", "3")}), false},
		{"list element added by someone", obj("l", []any{obj("x", "1")}), obj("l", []any{obj("x", "1"), obj("x", "2")}), false},
		{"list elements with defaults", obj("l", []any{obj("x", "1")}), obj("l", []any{obj("x", "1", "y", "d")}), true},
		{"empty map says nothing", obj("resources", obj()), obj(), true},
		{"nil says nothing", obj("creationTimestamp", nil), obj("creationTimestamp", "2026-01-01T00:00:00Z"), true},
		{"type mismatch", obj("a", obj("b", "c")), obj("a", "c"), false},
	}
	for _, c := range cases {
		if got := covers(c.want, c.got); got != c.covered {
			t.Errorf("%s: covers = %v, want %v", c.name, got, c.covered)
		}
	}
}

func TestBackoffDoublesAndResets(t *testing.T) {
	b := newBackoff(2*time.Second, 10*time.Second)
	k := types.NamespacedName{Namespace: "a", Name: "b"}
	var got []time.Duration
	for range 5 {
		got = append(got, b.next(k))
	}
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delays %v, want %v", got, want)
		}
	}
	b.reset(k)
	if d := b.next(k); d != 2*time.Second {
		t.Errorf("after reset: %v", d)
	}
}

func TestAdminCredentials(t *testing.T) {
	now := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	host := "agent-router.kars-agent.svc"
	a, err := newAdminCredentials(host, now)
	if err != nil {
		t.Fatal(err)
	}
	if !usable(a, host, now) {
		t.Fatal("fresh credentials are not usable")
	}
	if usable(a, "other-router.kars-agent.svc", now) {
		t.Error("certificate accepted for another sandbox's name")
	}
	if usable(a, host, now.Add(adminCertValidity-adminCertRenewBefore+time.Hour)) {
		t.Error("certificate inside its renewal window still used")
	}
	if due, ok := renewalDue(a); !ok || !due.Equal(now.Add(adminCertValidity-adminCertRenewBefore)) {
		t.Errorf("renewal due %v", due)
	}
	b, _ := newAdminCredentials(host, now)
	if string(a.Token) == string(b.Token) {
		t.Error("two sandboxes got the same admin token")
	}
	mixed := render.AdminCredentials{Token: a.Token, CertPEM: a.CertPEM, KeyPEM: b.KeyPEM}
	if usable(mixed, host, now) {
		t.Error("certificate accepted with another key")
	}
}

func condition(st karsv1.KarsSandboxStatus, typ string) metav1.Condition {
	if c := meta.FindStatusCondition(st.Conditions, typ); c != nil {
		return *c
	}
	return metav1.Condition{}
}

// The phase and conditions for each situation a reconcile can observe.
func TestSandboxStatus(t *testing.T) {
	now := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	sb := &karsv1.KarsSandbox{ObjectMeta: metav1.ObjectMeta{Generation: 3}}
	d := "sha256:" + "aa"
	ready := Observation{Ready: true, RouterAdmin: "https://x:8444", Message: "pod ready"}
	cases := []struct {
		name      string
		suspended bool
		o         outcome
		phase     karsv1.SandboxPhase
		ready     string // Ready reason
		extra     map[string]string
	}{
		{"missing policy", false, outcome{block: &block{reason: ReasonInferencePolicyNotFound, transient: true}}, karsv1.SandboxDegraded, ReasonInferencePolicyNotFound,
			map[string]string{karsv1.ConditionDegraded: ReasonInferencePolicyNotFound, karsv1.ConditionRuntimeReady: ReasonWorkloadNotReady}},
		{"adapter missing", false, outcome{block: &block{reason: render.ReasonAdapterMissing, runtime: true}}, karsv1.SandboxFailed, render.ReasonAdapterMissing,
			map[string]string{karsv1.ConditionRuntimeReady: render.ReasonAdapterMissing}},
		{"starting", false, outcome{configDigest: d, obs: Observation{Message: "waiting"}}, karsv1.SandboxProvisioning, ReasonWorkloadNotReady,
			map[string]string{karsv1.ConditionProgressing: ReasonRollingOut, karsv1.ConditionRouterEnforcing: ReasonWorkloadNotReady}},
		{"router on old config", false, outcome{configDigest: d, obs: ready, enforcedDigest: "sha256:bb"}, karsv1.SandboxProvisioning, ReasonAwaitingRouter,
			map[string]string{karsv1.ConditionRouterEnforcing: ReasonAwaitingRouter, karsv1.ConditionRuntimeReady: ReasonRuntimeRunning}},
		{"router unreachable", false, outcome{configDigest: d, obs: ready, probeErr: errors.New("refused")}, karsv1.SandboxProvisioning, ReasonAwaitingRouter,
			map[string]string{karsv1.ConditionRouterEnforcing: ReasonRouterUnreachable}},
		{"running", false, outcome{configDigest: d, obs: ready, enforcedDigest: d}, karsv1.SandboxRunning, ReasonReady,
			map[string]string{karsv1.ConditionRouterEnforcing: ReasonDigestMatches, karsv1.ConditionProgressing: ReasonComplete, karsv1.ConditionDegraded: ReasonAsExpected}},
		{"suspended", true, outcome{configDigest: d, obs: Observation{Message: "scaled to zero"}}, karsv1.SandboxSuspended, ReasonSuspended,
			map[string]string{karsv1.ConditionSuspended: ReasonSuspended}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := sb.DeepCopy()
			s.Spec.Suspended = c.suspended
			st := sandboxStatus(s, c.o, now)
			if st.Phase != c.phase || condition(st, karsv1.ConditionReady).Reason != c.ready || st.ObservedGeneration != 3 {
				t.Errorf("phase %s Ready reason %s gen %d", st.Phase, condition(st, karsv1.ConditionReady).Reason, st.ObservedGeneration)
			}
			for typ, reason := range c.extra {
				if got := condition(st, typ); got.Reason != reason || got.ObservedGeneration != 3 {
					t.Errorf("%s reason %s, want %s", typ, got.Reason, reason)
				}
			}
			if (st.EnforcedDigest != "") != (c.o.obs.Ready && !c.suspended && c.o.enforcedDigest != "") {
				t.Errorf("enforced digest %q", st.EnforcedDigest)
			}
			// Deriving again from the derived status changes nothing, so an
			// unchanged cluster causes no status write.
			s.Status = st
			if again := sandboxStatus(s, c.o, now.Add(time.Hour)); !equalStatus(again, st) {
				t.Error("the same outcome an hour later yields a different status")
			}
		})
	}
}

func equalStatus(a, b karsv1.KarsSandboxStatus) bool {
	if a.Phase != b.Phase || len(a.Conditions) != len(b.Conditions) {
		return false
	}
	for i := range a.Conditions {
		if a.Conditions[i] != b.Conditions[i] {
			return false
		}
	}
	return true
}

// The prober trusts only the sandbox's pinned certificate and sends its
// token; a router with another certificate or token gets nothing.
func TestHTTPSProberPinsCertificate(t *testing.T) {
	now := time.Now()
	host := "agent-router.ns.svc"
	mine, _ := newAdminCredentials(host, now)
	other, _ := newAdminCredentials(host, now)
	serve := func(creds render.AdminCredentials) *httptest.Server {
		cert, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != DigestPath || r.Header.Get("Authorization") != "Bearer "+string(creds.Token) {
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			w.Write([]byte(`{"digest":"sha256:0123"}`))
		}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv
	}
	p := &HTTPSProber{}
	good := serve(mine)
	target := RouterTarget{Endpoint: good.URL, ServerName: host, CertPEM: mine.CertPEM, Token: mine.Token}
	if d, err := p.EnforcedDigest(context.Background(), target); err != nil || d != "sha256:0123" {
		t.Fatalf("digest %q, %v", d, err)
	}
	impostor := serve(other)
	target.Endpoint = impostor.URL
	target.Token = other.Token
	if _, err := p.EnforcedDigest(context.Background(), target); err == nil {
		t.Error("a router with another certificate was trusted")
	}
	target = RouterTarget{Endpoint: good.URL, ServerName: host, CertPEM: mine.CertPEM, Token: other.Token}
	if _, err := p.EnforcedDigest(context.Background(), target); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong token: %v", err)
	}
}
