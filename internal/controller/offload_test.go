package controller

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/mesh/bridge"
	meshserver "github.com/kars-io/kars/internal/mesh/server"
	"github.com/kars-io/kars/internal/offload"
	"github.com/kars-io/kars/internal/offload/host"
	"github.com/kars-io/kars/internal/pairing"
	pairingapi "github.com/kars-io/kars/internal/pairing/apiserver"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/router"
	"github.com/kars-io/kars/internal/trust"
)

var testMeshDir string

// startTestMesh runs a real kars-mesh (the server cmd/kars-mesh runs) on
// loopback, redeeming tokens against the test's API server as the
// cluster's does, and returns the offload broker's options pointing at
// it.
func startTestMesh(ctx context.Context) (*OffloadOptions, error) {
	dir, err := os.MkdirTemp("", "kars-offload-test-")
	if err != nil {
		return nil, err
	}
	testMeshDir = dir
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	brokerLog := quiet
	if os.Getenv("KARS_TEST_VERBOSE") != "" {
		brokerLog = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	srv, err := meshserver.Open(meshserver.Options{Dir: filepath.Join(dir, "mesh"), Logger: quiet,
		Redeem: func(ctx context.Context, r pairing.Redemption) (*pairing.Result, error) {
			pub, err := pairingapi.LoadPublicKey(ctx, k8s, "kars-system")
			if err != nil {
				return nil, err
			}
			return pairingapi.Redeem(ctx, k8s, pub, r, time.Now())
		}})
	if err != nil {
		return nil, err
	}
	testMesh = httptest.NewServer(srv.Handler())
	reg, rel := testMeshURLs()
	return &OffloadOptions{Dir: filepath.Join(dir, "broker"), Registry: reg, Relay: rel, Logger: brokerLog}, nil
}

func testMeshURLs() (registry, relay string) {
	return testMesh.URL, "ws" + strings.TrimPrefix(testMesh.URL, "http") + "/ws"
}

// startOffloadRouter plays an offload sandbox's kars-router: the admin
// API the controller reads, and a real mesh bridge connected to the test
// kars-mesh, which the test drives as the offload agent would (take the
// task, send the answer).
func startOffloadRouter(t *testing.T, sb *karsv1.KarsSandbox) *standInRouter {
	t.Helper()
	names, err := render.NamesFor(sb)
	if err != nil {
		t.Fatal(err)
	}
	var sec corev1.Secret
	get(t, sb.Namespace, names.RouterAdmin, &sec)
	sr := &standInRouter{token: sec.Data[render.AdminTokenKey], key: fmt.Sprintf("%s:%d", names.RouterHostname, render.RouterAdminPort)}
	sr.snap.Store(loadRouterConfig(t, sb, names))
	sr.egress.Store(loadEgressState(t, sb, names))
	c := sr.snap.Load().Config
	if c.Mesh == nil {
		t.Fatal("the offload sandbox's router has no mesh config")
	}
	ts, err := trust.Open("", trust.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	reg, rel := testMeshURLs()
	br, err := bridge.Open(bridge.Options{Dir: t.TempDir(), Registry: reg, Relay: rel, Self: []string{c.Sandbox.AgentID},
		Threshold: c.Mesh.TrustThreshold, Gov: allowAll{}, Trust: ts, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); br.Run(ctx) }()
	sr.mesh = br
	cert, err := tls.X509KeyPair(sec.Data[render.AdminCertKey], sec.Data[render.AdminKeyKey])
	if err != nil {
		t.Fatal(err)
	}
	sr.srv = httptest.NewUnstartedServer(sr)
	sr.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	sr.srv.StartTLS()
	routers.mu.Lock()
	routers.servers[sr.key] = sr
	routers.mu.Unlock()
	t.Cleanup(func() {
		routers.mu.Lock()
		delete(routers.servers, sr.key)
		routers.mu.Unlock()
		sr.srv.Close()
		cancel()
		<-done
		br.Close()
		ts.Close()
	})
	return sr
}

// brokerDID waits for the offload broker to publish its identity.
func brokerDID(t *testing.T) string {
	t.Helper()
	var did string
	eventually(t, 60*time.Second, "the offload broker publishes its DID", func() error {
		cm := &corev1.ConfigMap{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: "kars-system", Name: OffloadIdentityName}, cm); err != nil {
			return err
		}
		did = cm.Data[OffloadDIDKey]
		if did == "" {
			return errNotYet
		}
		return nil
	})
	return did
}

// offloadPairing mints a token for an offload pairing as `kars pair
// generate` does (without --sandbox: the issuer is the offload broker)
// and creates its KarsPairing.
func offloadPairing(t *testing.T, ns, name string, slots int, caps []karsv1.PairingCapability, budget *karsv1.TokenBudget, exp time.Time) string {
	t.Helper()
	ctx := context.Background()
	var key []byte
	eventually(t, 30*time.Second, "the controller creates the pairing key", func() error {
		k, err := pairingapi.LoadKey(ctx, k8s, "kars-system")
		key = k
		return err
	})
	reg, rel := testMeshURLs()
	p := pairing.Payload{Name: name, Issuer: brokerDID(t), Registry: reg, Relay: rel, Slots: slots, Exp: exp.Unix()}
	for _, c := range caps {
		p.Capabilities = append(p.Capabilities, string(c))
	}
	tok, err := pairing.Mint(rand.Reader, key, p)
	if err != nil {
		t.Fatal(err)
	}
	h := pairing.Hash(tok)
	create(t, &karsv1.KarsPairing{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{pairing.LabelTokenHash: pairing.HashLabel(h)}},
		Spec: karsv1.KarsPairingSpec{TokenHash: karsv1.Digest(h), DisplayName: name, Slots: int32(slots), ExpiresAt: metav1.NewTime(time.Unix(p.Exp, 0)),
			Capabilities: caps, TokenBudget: budget, Offload: &karsv1.OffloadTemplate{InferenceRef: karsv1.LocalObjectReference{Name: "offload-model"}, TTLSeconds: 600}},
	})
	return tok
}

// pairedHost redeems tok with a new host identity and keeps it connected.
func pairedHost(t *testing.T, tok string) *host.Host {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h, err := host.Pair(ctx, host.Options{Dir: t.TempDir(), AnswerTimeout: 20 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, tok)
	if err != nil {
		cancel()
		t.Fatalf("pairing the host: %v", err)
	}
	done := make(chan struct{})
	go func() { defer close(done); h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; h.Close() })
	eventually(t, 20*time.Second, "the host connects to kars-mesh", func() error {
		if !h.Connected() {
			return errNotYet
		}
		return nil
	})
	return h
}

// offloadsOf lists the offload namespaces of a pairing that are not being
// deleted.
func offloadsOf(t *testing.T, name string) []corev1.Namespace {
	t.Helper()
	var list corev1.NamespaceList
	if err := k8s.List(context.Background(), &list, client.MatchingLabels{offload.LabelOffload: "true", offload.LabelPairing: name}); err != nil {
		t.Fatal(err)
	}
	var out []corev1.Namespace
	for _, ns := range list.Items {
		if ns.DeletionTimestamp == nil {
			out = append(out, ns)
		}
	}
	return out
}

func wantRefusal(t *testing.T, err error, code string) *offload.Error {
	t.Helper()
	var e *offload.Error
	if !errors.As(err, &e) || e.Code != code {
		t.Fatalf("want a %s refusal, got %v", code, err)
	}
	if !strings.Contains(e.Message, "nothing was created") && code != offload.CodeNotFound {
		t.Errorf("the refusal does not tell the host that nothing was created: %q", e.Message)
	}
	return e
}

// brokerAudit reads the broker's audit log.
func brokerAudit(t *testing.T) []audit.Entry {
	t.Helper()
	es, err := router.AuditTail(filepath.Join(testMeshDir, "broker", "audit"), 10000)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

func hasEntry(es []audit.Entry, action, decision, attr, val string) bool {
	for _, e := range es {
		if e.Action == action && e.Decision == decision && (attr == "" || e.Attrs[attr] == val) {
			return true
		}
	}
	return false
}

// TestOffloadEndToEnd is scenario 2 through the real mesh: a host pairs
// with a one-time token, asks the broker for an offload, the controller
// creates the governed offload sandbox, the host sends the task to its
// router, the agent's answer comes back, the host acknowledges it, the
// tokens the router metered are charged to the pairing and the sandbox is
// deleted; a second offload beyond the slot and a reused token are
// refused with nothing created; the relay's store holds no plaintext;
// both sides audited.
func TestOffloadEndToEnd(t *testing.T) {
	requireController(t)
	ctx := context.Background()
	ns := newNamespace(t, "offload-ops")
	create(t, offlineInference(ns, "offload-model"))
	tok := offloadPairing(t, ns, "alice-laptop", 1, []karsv1.PairingCapability{karsv1.CapabilityOffload, karsv1.CapabilityHandoff},
		&karsv1.TokenBudget{Daily: 5000, PerRequest: 2000}, time.Now().Add(24*time.Hour))
	h := pairedHost(t, tok)
	if h.Pairing().Issuer != brokerDID(t) || h.Pairing().Pairing != ns+"/alice-laptop" {
		t.Fatalf("paired with %+v", h.Pairing())
	}
	// The token is single-use: another identity presenting it is refused.
	if _, err := host.Pair(ctx, host.Options{Dir: t.TempDir()}, tok); err == nil || !strings.Contains(err.Error(), "already redeemed") {
		t.Fatalf("a reused token: %v", err)
	}
	waitPairing(t, ns, "alice-laptop", karsv1.PairingActive, metav1.ConditionTrue)

	task := "Summarise the attached meeting notes in three bullet points: budget approved, launch moved to March, hire two engineers."
	start := time.Now()
	info, err := h.Offload(ctx, host.Task{Title: "summarise notes", Text: task, RequestID: "req-1"})
	if err != nil {
		t.Fatalf("offload: %v", err)
	}
	if info.Phase != offload.PhaseCreating || info.TokensAllocated != 2000 || !offload.ValidID(info.ID) {
		t.Fatalf("offload %+v", info)
	}
	// A retry of the same request gets the same offload.
	again, err := h.Offload(ctx, host.Task{Title: "summarise notes", Text: task, RequestID: "req-1"})
	if err != nil || again.ID != info.ID {
		t.Fatalf("retried request: %+v, %v", again, err)
	}
	// The one slot is held: a second offload is refused, nothing created.
	_, err = h.Offload(ctx, host.Task{Title: "another", Text: "something else"})
	wantRefusal(t, err, offload.CodeSlots)
	if got := offloadsOf(t, "alice-laptop"); len(got) != 1 {
		t.Fatalf("%d offload namespaces, want 1", len(got))
	}

	// The offload sandbox is shaped like the use cases' example.
	sb := &karsv1.KarsSandbox{}
	get(t, offload.Namespace(info.ID), offload.SandboxName(info.ID), sb)
	if sb.Labels[offload.LabelOffload] != "true" || sb.Labels[offload.LabelPairing] != "alice-laptop" || sb.Spec.Runtime.Kind != karsv1.RuntimeOpenClaw {
		t.Fatalf("offload sandbox %+v", sb.ObjectMeta)
	}
	ip := &karsv1.InferencePolicy{}
	get(t, sb.Namespace, sb.Spec.InferenceRef.Name, ip)
	if ip.Spec.TokenBudget == nil || ip.Spec.TokenBudget.Daily != 2000 {
		t.Fatalf("the offload's router budget %+v, want its 2000-token share", ip.Spec.TokenBudget)
	}
	// Play the kubelet: the router starts, the pod is ready.
	waitRendered(t, sb)
	r := startOffloadRouter(t, sb)
	markDeploymentReady(t, sb)

	wctx, cancel := context.WithTimeout(ctx, 180*time.Second)
	defer cancel()
	ready, err := h.WaitReady(wctx, info.ID)
	if err != nil {
		t.Fatalf("waiting for the offload: %v", err)
	}
	if ready.DID != r.mesh.DID() {
		t.Fatalf("ready with DID %s, want the offload router's %s", ready.DID, r.mesh.DID())
	}
	t.Logf("offload %s ready %s after the request", info.ID, time.Since(start).Round(time.Millisecond))
	if _, err := h.SendTask(wctx, ready, task); err != nil {
		t.Fatalf("sending the task: %v", err)
	}
	// The agent (played here through its router's real bridge) gets the
	// task from the host, named by its pairing, and answers it.
	ms := r.mesh.Take(wctx, 1, 30*time.Second)
	if len(ms) != 1 || ms[0].Text != task || ms[0].From != "alice-laptop" || ms[0].FromDID != h.DID() {
		t.Fatalf("the agent received %+v", ms)
	}
	const answer = "- Budget approved\n- Launch moved to March\n- Two engineers to hire"
	used := int64(1234)
	r.lifetime.Store(&used)
	if _, err := r.mesh.Send(wctx, bridge.SendRequest{To: "alice-laptop", Text: answer, InReplyTo: ms[0].ID}); err != nil {
		t.Fatalf("the agent's answer: %v", err)
	}
	res, err := h.Result(wctx, info.ID)
	if err != nil || res.Text != answer || res.FromDID != r.mesh.DID() {
		t.Fatalf("the host's result: %+v, %v", res, err)
	}
	st, err := h.Status(wctx, info.ID)
	if err != nil || st.Offload.Phase != offload.PhaseReady || st.Pairing.SlotsInUse != 1 || st.Pairing.TokensReserved != 2000 {
		t.Fatalf("status: %+v %+v, %v", st.Offload, st.Pairing, err)
	}

	// Acknowledged: the offload ends, its metered tokens are charged and
	// the host is told.
	if _, err := h.Ack(wctx, info.ID); err != nil {
		t.Fatalf("ack: %v", err)
	}
	ev, err := h.WaitEvent(wctx, offload.EventEnded, info.ID)
	if err != nil || ev.Offload.TokensUsed != used || ev.Offload.EndReason != offload.EndAcknowledged {
		t.Fatalf("ended event %+v, %v", ev, err)
	}
	eventually(t, 30*time.Second, "the offload namespace is gone", func() error {
		err := k8s.Get(ctx, client.ObjectKey{Name: offload.Namespace(info.ID)}, &corev1.Namespace{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	kp := waitPairing(t, ns, "alice-laptop", karsv1.PairingActive, metav1.ConditionTrue)
	if kp.Status.TokensUsed != used || kp.Status.TokensDay != offload.Day(time.Now()) || kp.Status.SlotsInUse != 0 {
		t.Fatalf("pairing status %+v", kp.Status)
	}
	t.Logf("offload %s: request to namespace deleted in %s", info.ID, time.Since(start).Round(time.Millisecond))

	// A second offload fits the freed slot; the host takes it back
	// (handoff) with the state its router recorded.
	info2, err := h.Offload(wctx, host.Task{Title: "draft a reply", Text: "Draft a reply to the notes."})
	if err != nil {
		t.Fatalf("second offload: %v", err)
	}
	sb2 := &karsv1.KarsSandbox{}
	get(t, offload.Namespace(info2.ID), offload.SandboxName(info2.ID), sb2)
	waitRendered(t, sb2)
	r2 := startOffloadRouter(t, sb2)
	markDeploymentReady(t, sb2)
	used2 := int64(77)
	r2.lifetime.Store(&used2)
	now := time.Now().UTC()
	tail := []audit.Entry{
		{Seq: 1, Time: now, Record: audit.Record{Action: "inference:chat", Decision: "allow"}, Hash: "h1"},
		{Seq: 2, Time: now, Record: audit.Record{Action: "tool:read_file", Decision: "allow"}, Hash: "h2"},
		{Seq: 3, Time: now, Record: audit.Record{Action: "tool:shell", Decision: "deny"}, Hash: "h3"},
		{Seq: 4, Time: now, Record: audit.Record{Action: "inference:chat", Decision: "allow"}, Hash: "h4"},
	}
	r2.tail.Store(&tail)
	if _, err := h.WaitReady(wctx, info2.ID); err != nil {
		t.Fatalf("second offload not ready: %v", err)
	}
	ho, err := h.Handoff(wctx, info2.ID)
	if err != nil {
		t.Fatalf("handoff: %v", err)
	}
	if ho.Offload != info2.ID || ho.TokensUsed != used2 || ho.Inferences != 2 || len(ho.ToolCalls) != 2 ||
		ho.ToolCalls[1].Tool != "shell" || ho.ToolCalls[1].Decision != "deny" || ho.AuditSeq != 4 || ho.AuditHash != "h4" {
		t.Fatalf("handoff summary %+v", ho)
	}
	ev2, err := h.WaitEvent(wctx, offload.EventEnded, info2.ID)
	if err != nil || ev2.Offload.EndReason != offload.EndHandedOff {
		t.Fatalf("ended event of the handed-off offload %+v, %v", ev2, err)
	}
	eventually(t, 20*time.Second, "both offloads charged", func() error {
		kp := &karsv1.KarsPairing{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "alice-laptop"}, kp); err != nil {
			return err
		}
		if kp.Status.TokensUsed != used+used2 {
			return fmt.Errorf("tokensUsed %d, want %d", kp.Status.TokensUsed, used+used2)
		}
		return nil
	})

	// Revocation stops a live offload: its namespace goes, the host is
	// told.
	info3, err := h.Offload(wctx, host.Task{Title: "third", Text: "A third task."})
	if err != nil {
		t.Fatalf("third offload: %v", err)
	}
	updateRetrying(t, client.ObjectKey{Namespace: ns, Name: "alice-laptop"}, &karsv1.KarsPairing{}, func(kp *karsv1.KarsPairing) { kp.Spec.Revoked = true })
	rev, err := h.WaitEvent(wctx, offload.EventRevoked, "")
	if err != nil || rev.Error == nil || rev.Error.Code != offload.CodeRevoked {
		t.Fatalf("revoked event %+v, %v", rev, err)
	}
	eventually(t, 30*time.Second, "the revoked pairing's live offload is deleted", func() error {
		nsObj := &corev1.Namespace{}
		err := k8s.Get(ctx, client.ObjectKey{Name: offload.Namespace(info3.ID)}, nsObj)
		if apierrors.IsNotFound(err) || (err == nil && nsObj.DeletionTimestamp != nil && nsObj.Annotations[offload.AnnotationEnd] == offload.EndRevoked) {
			return nil
		}
		return fmt.Errorf("namespace %s: %v %v", info3.ID, nsObj.DeletionTimestamp, err)
	})

	eventually(t, 10*time.Second, "the revoked offload's end on record", func() error {
		if !hasEntry(brokerAudit(t), "offload:end:alice-laptop", "allow", "reason", offload.EndRevoked) {
			return errNotYet
		}
		return nil
	})

	// The relay's store holds no plaintext of the task or the answer.
	filepath.WalkDir(testMeshDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.Contains(p, string(filepath.Separator)+"broker"+string(filepath.Separator)) {
			return nil
		}
		raw, _ := os.ReadFile(p)
		for _, s := range []string{task, answer, "meeting notes", "Launch moved"} {
			if bytes.Contains(raw, []byte(s)) {
				t.Errorf("kars-mesh's %s holds plaintext %q", p, s)
			}
		}
		return nil
	})

	// Audited on both sides.
	es := brokerAudit(t)
	for _, want := range []struct{ action, decision, attr, val string }{
		{"offload:request:alice-laptop", "allow", "offload", info.ID},
		{"offload:request:alice-laptop", "deny", "", ""},
		{"offload:ready:alice-laptop", "allow", "offload", info.ID},
		{"offload:ack:alice-laptop", "allow", "offload", info.ID},
		{"offload:end:alice-laptop", "allow", "tokens_used", "1234"},
		{"offload:handoff:alice-laptop", "allow", "offload", info2.ID},
	} {
		if !hasEntry(es, want.action, want.decision, want.attr, want.val) {
			t.Errorf("the broker's audit log has no %+v", want)
		}
	}
	hs, err := router.AuditTail(h.AuditDir(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	if !hasEntry(hs, "offload:pair:alice-laptop", "allow", "", "") || !hasEntry(hs, "mesh:send:kars", "allow", "", "") ||
		!hasEntry(hs, "mesh:send:"+host.PeerName(info.ID), "allow", "", "") {
		t.Errorf("the host's audit log lacks the pairing or the sends: %d entries", len(hs))
	}
	if _, err := audit.Verify(h.AuditDir(), audit.VerifyOptions{}); err != nil {
		t.Errorf("the host's audit log does not verify: %v", err)
	}
}

// TestOffloadRefusals: a pairing without the offload capability, one
// whose daily budget is spent, a handoff the pairing does not grant and a
// revoked pairing are each refused with a message to the host, and
// nothing is created.
func TestOffloadRefusals(t *testing.T) {
	requireController(t)
	ctx := context.Background()
	ns := newNamespace(t, "offload-refusals")
	create(t, offlineInference(ns, "offload-model"))
	tok := offloadPairing(t, ns, "bob-laptop", 2, []karsv1.PairingCapability{karsv1.CapabilityHandoff}, &karsv1.TokenBudget{Daily: 100}, time.Now().Add(24*time.Hour))
	h := pairedHost(t, tok)
	waitPairing(t, ns, "bob-laptop", karsv1.PairingActive, metav1.ConditionTrue)

	_, err := h.Offload(ctx, host.Task{Title: "t", Text: "x"})
	e := wantRefusal(t, err, offload.CodeCapability)
	if !strings.Contains(e.Message, "--capabilities offload") {
		t.Errorf("the refusal does not say how to fix it: %q", e.Message)
	}

	// Granted offload, but today's budget is spent.
	updateRetrying(t, client.ObjectKey{Namespace: ns, Name: "bob-laptop"}, &karsv1.KarsPairing{}, func(kp *karsv1.KarsPairing) {
		kp.Spec.Capabilities = []karsv1.PairingCapability{karsv1.CapabilityOffload}
	})
	mutateStatus(t, client.ObjectKey{Namespace: ns, Name: "bob-laptop"}, &karsv1.KarsPairing{}, func(kp *karsv1.KarsPairing) {
		kp.Status.TokensDay, kp.Status.TokensUsed = offload.Day(time.Now()), 100
	})
	waitPairing(t, ns, "bob-laptop", karsv1.PairingExhausted, metav1.ConditionFalse)
	_, err = h.Offload(ctx, host.Task{Title: "t", Text: "x"})
	wantRefusal(t, err, offload.CodeBudget)

	// Handoff of an offload without the capability; and of none at all.
	_, err = h.Handoff(ctx, "0123abcd")
	var oe *offload.Error
	if !errors.As(err, &oe) || oe.Code != offload.CodeCapability {
		t.Fatalf("handoff without the capability: %v", err)
	}
	if got := offloadsOf(t, "bob-laptop"); len(got) != 0 {
		t.Fatalf("%d offload namespaces created by refused requests", len(got))
	}
	es := brokerAudit(t)
	for _, rule := range []string{ruleOffload + "-capability-not-granted", ruleOffload + "-budget-spent"} {
		found := false
		for _, e := range es {
			found = found || (e.Action == "offload:request:bob-laptop" && e.Decision == "deny" && e.Rule == rule)
		}
		if !found {
			t.Errorf("no audited refusal with rule %s", rule)
		}
	}

	// Revoked: the host is told on its session, and refused from then on.
	updateRetrying(t, client.ObjectKey{Namespace: ns, Name: "bob-laptop"}, &karsv1.KarsPairing{}, func(kp *karsv1.KarsPairing) { kp.Spec.Revoked = true })
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	ev, err := h.WaitEvent(wctx, offload.EventRevoked, "")
	if err != nil || ev.Error == nil || ev.Error.Code != offload.CodeRevoked {
		t.Fatalf("revoked event %+v, %v", ev, err)
	}
	waitPairing(t, ns, "bob-laptop", karsv1.PairingRevoked, metav1.ConditionFalse)
	short, cancel2 := context.WithTimeout(ctx, 8*time.Second)
	defer cancel2()
	if _, err := h.Status(short, ""); err == nil {
		t.Fatal("a revoked pairing's host was answered")
	}

	// A host whose pairing was revoked before it ever spoke is told so
	// (the broker announces the revocation on a session of its own).
	tok2 := offloadPairing(t, ns, "carol-laptop", 1, []karsv1.PairingCapability{karsv1.CapabilityOffload}, nil, time.Now().Add(24*time.Hour))
	h2 := pairedHost(t, tok2)
	waitPairing(t, ns, "carol-laptop", karsv1.PairingActive, metav1.ConditionTrue)
	updateRetrying(t, client.ObjectKey{Namespace: ns, Name: "carol-laptop"}, &karsv1.KarsPairing{}, func(kp *karsv1.KarsPairing) { kp.Spec.Revoked = true })
	waitPairing(t, ns, "carol-laptop", karsv1.PairingRevoked, metav1.ConditionFalse)
	cctx, cancel3 := context.WithTimeout(ctx, 30*time.Second)
	defer cancel3()
	_, err = h2.Offload(cctx, host.Task{Title: "t", Text: "x"})
	if !errors.As(err, &oe) || oe.Code != offload.CodeRevoked {
		t.Fatalf("a revoked host's offload: %v", err)
	}
	// A host whose pairing expired is refused at the KNOCK, and told why
	// (the operator shortened the pairing: the host still believes it).
	tok3 := offloadPairing(t, ns, "erin-laptop", 1, []karsv1.PairingCapability{karsv1.CapabilityOffload}, nil, time.Now().Add(24*time.Hour))
	h3 := pairedHost(t, tok3)
	waitPairing(t, ns, "erin-laptop", karsv1.PairingActive, metav1.ConditionTrue)
	updateRetrying(t, client.ObjectKey{Namespace: ns, Name: "erin-laptop"}, &karsv1.KarsPairing{}, func(kp *karsv1.KarsPairing) {
		kp.Spec.ExpiresAt = metav1.NewTime(time.Now().Add(-time.Second))
	})
	waitPairing(t, ns, "erin-laptop", karsv1.PairingExpired, metav1.ConditionFalse)
	_, err = h3.Offload(cctx, host.Task{Title: "t", Text: "x"})
	if err == nil || !strings.Contains(err.Error(), "refused the KNOCK") || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("an expired host's KNOCK: %v", err)
	}
	if got := offloadsOf(t, "erin-laptop"); len(got) != 0 {
		t.Fatalf("%d offload namespaces for an expired pairing", len(got))
	}
	if got := offloadsOf(t, "carol-laptop"); len(got) != 0 {
		t.Fatalf("%d offload namespaces for a revoked pairing", len(got))
	}
}

// TestOffloadTTL: an offload whose TTL passes ends without an ack; its
// router never answered, so the whole allocation is charged (an offload
// whose use cannot be measured is charged in the budget's favour), and
// the host is told.
func TestOffloadTTL(t *testing.T) {
	requireController(t)
	ctx := context.Background()
	ns := newNamespace(t, "offload-ttl")
	create(t, offlineInference(ns, "offload-model"))
	tok := offloadPairing(t, ns, "dave-laptop", 1, []karsv1.PairingCapability{karsv1.CapabilityOffload}, &karsv1.TokenBudget{PerRequest: 300}, time.Now().Add(24*time.Hour))
	h := pairedHost(t, tok)
	waitPairing(t, ns, "dave-laptop", karsv1.PairingActive, metav1.ConditionTrue)
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	info, err := h.Offload(wctx, host.Task{Title: "short", Text: "quick", Limits: &offload.Limits{TTLSeconds: 3}})
	if err != nil {
		t.Fatal(err)
	}
	if d := info.ExpiresAt.Sub(info.CreatedAt); d != 3*time.Second || info.TokensAllocated != 300 {
		t.Fatalf("offload %+v: life %s", info, d)
	}
	ev, err := h.WaitEvent(wctx, offload.EventEnded, info.ID)
	if err != nil || ev.Offload.EndReason != offload.EndTTL || ev.Offload.TokensUsed != 300 {
		t.Fatalf("ended event %+v, %v", ev, err)
	}
	if !time.Now().After(info.ExpiresAt) {
		t.Fatalf("ended before its TTL (%s)", info.ExpiresAt)
	}
	eventually(t, 20*time.Second, "the charge", func() error {
		kp := &karsv1.KarsPairing{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "dave-laptop"}, kp); err != nil {
			return err
		}
		if kp.Status.TokensUsed != 300 || kp.Status.SlotsInUse != 0 {
			return fmt.Errorf("status %+v", kp.Status)
		}
		return nil
	})
	if !hasEntry(brokerAudit(t), "offload:end:dave-laptop", "allow", "tokens_measured", "false") {
		t.Error("the unmeasured charge is not on record as such")
	}
}
