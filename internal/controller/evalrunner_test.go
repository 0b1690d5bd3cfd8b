package controller

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/eval"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/routerconfig"
)

// AdminEvalRunner plays a KarsEval's cases through the router's admin
// API: TLS pinned to the certificate in the sandbox's admin Secret, the
// admin token on every request, chat to the agent relay and probes to the
// router relay; a Secret the sandbox does not own is never used.
func TestAdminEvalRunner(t *testing.T) {
	sb := &karsv1.KarsSandbox{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-t", Name: "t", UID: "uid-t"}}
	names, err := render.NamesFor(sb)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := newAdminCredentials(names.RouterHostname, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		mu.Lock()
		seen = append(seen, req.Method+" "+req.URL.Path)
		mu.Unlock()
		if req.Header.Get("Authorization") != "Bearer "+string(creds.Token) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		switch req.Method + " " + req.URL.Path {
		case "POST " + routerconfig.EvalAgentPrefix + "/v1/chat":
			io.WriteString(w, `{"reply":"the answer is 42","toolCalls":[{"name":"calculator","decision":"allow"}]}`)
		case "POST " + routerconfig.EvalRouterPrefix + "/kars/v1/decide":
			var d struct{ Action string }
			json.Unmarshal(body, &d)
			decision := "deny"
			if d.Action == "tool:calculator" {
				decision = "allow"
			}
			io.WriteString(w, `{"decision":"`+decision+`"}`)
		case "DELETE " + routerconfig.EvalAgentPrefix + "/v1/sessions/run-0":
			io.WriteString(w, `{}`)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	sb.Status.RouterEndpoint = srv.URL

	secret := func(owner string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: sb.Namespace, Name: names.RouterAdmin,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "kars.azure.com/v1alpha1", Kind: "KarsSandbox", Name: "t", UID: types.UID(owner)}}},
			Data: map[string][]byte{render.AdminTokenKey: creds.Token, render.AdminCertKey: creds.CertPEM}}
	}
	run := &AdminEvalRunner{Reader: fake.NewClientBuilder().WithObjects(secret("uid-t")).Build()}
	target, err := run.EvalTarget(context.Background(), sb)
	if err != nil {
		t.Fatal(err)
	}
	target.Session = "run"
	cases := []eval.Case{
		{Input: "use the calculator for 6*7", Expected: "42", ExpectedTools: []string{"calculator"}},
		{Probe: &eval.Probe{Action: "tool:exec"}, ExpectedDecisions: []eval.Decision{{Tool: "tool:exec", Decision: "deny"}}},
	}
	res := eval.Run(context.Background(), target, cases,
		[]karsv1.EvaluatorKind{karsv1.EvaluatorContains, karsv1.EvaluatorToolCallAccuracy, karsv1.EvaluatorPolicyDecision})
	for i, r := range res {
		if !r.Passed {
			t.Errorf("case %d failed: %v (%+v)", i, r.Failures, r.Obs)
		}
	}
	mu.Lock()
	got := strings.Join(seen, ", ")
	mu.Unlock()
	want := "POST /admin/v1/eval/agent/v1/chat, DELETE /admin/v1/eval/agent/v1/sessions/run-0, POST /admin/v1/eval/router/kars/v1/decide"
	if got != want {
		t.Errorf("the admin API saw %s\nwant %s", got, want)
	}

	// A Secret of that name the sandbox does not own: refused before any
	// request, so the token of someone else's Secret never leaves.
	other := &AdminEvalRunner{Reader: fake.NewClientBuilder().WithObjects(secret("uid-other")).Build()}
	if _, err := other.EvalTarget(context.Background(), sb); err == nil || !strings.Contains(err.Error(), "not the sandbox's") {
		t.Errorf("an unowned admin Secret: %v", err)
	}
	// A certificate that is not the pinned one: the TLS handshake fails.
	wrong, _ := newAdminCredentials(names.RouterHostname, time.Now())
	s := secret("uid-t")
	s.Data[render.AdminCertKey] = wrong.CertPEM
	pinned := &AdminEvalRunner{Reader: fake.NewClientBuilder().WithObjects(s).Build()}
	tg, err := pinned.EvalTarget(context.Background(), sb)
	if err != nil {
		t.Fatal(err)
	}
	tg.Session = "x"
	if r := eval.Run(context.Background(), tg, cases[1:], []karsv1.EvaluatorKind{karsv1.EvaluatorPolicyDecision}); r[0].Passed {
		t.Error("a run against an unpinned certificate passed")
	}
}
