package e2e

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/mesh/bridge"
	"github.com/kars-io/kars/internal/offload"
	"github.com/kars-io/kars/internal/offload/host"
	"github.com/kars-io/kars/internal/pairing"
)

// TestKarsDevOffload is scenario 2 under kars dev: the operator mints an
// offload token with `kars pair generate` (no --sandbox); a host with no
// kars and no credentials redeems it at the dev mesh, asks for an
// offload, and the daemon's broker creates a real offload sandbox (the
// reference agent, behind its real router); the host sends the task to
// the router, the agent's answer comes back over the mesh, the host
// acknowledges it and the sandbox is gone.
func TestKarsDevOffload(t *testing.T) {
	k, _ := startDev(t, "KARS_PAIRING_TOKEN=")
	ctx := context.Background()
	cl := devClient(t, k)

	// The operator's side: the offline model as the offload template.
	createOffloadModel(t, cl)
	tok := mintOffloadToken(t, k, "alice-laptop", "--slots", "1", "--expires", "1h", "--capabilities", "offload,handoff", "--token-budget", "100000")
	p, err := pairing.Parse(tok)
	if err != nil || p.Issuer == "" || p.Sandbox != "" {
		t.Fatalf("token %+v, %v", p, err)
	}
	// The reference agent answers mesh messages without a model key.
	updatePairing(t, cl, func(kp *karsv1.KarsPairing) {
		kp.Spec.Offload.Runtime = &karsv1.RuntimeSpec{Kind: karsv1.RuntimeBYO, BYO: &karsv1.BYORuntime{Image: devenv.AgentImage(), ContractVersion: "v1"}}
		kp.Spec.Offload.Isolation = karsv1.IsolationStandard
	})

	// The host's side: a folder, the token, nothing else.
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	h, err := host.Pair(hctx, host.Options{Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, tok)
	if err != nil {
		t.Fatalf("the host redeems the token: %v", err)
	}
	done := make(chan struct{})
	start0 := time.Now()
	go func() { defer close(done); h.Run(hctx) }()
	defer func() { cancel(); <-done; h.Close() }()

	for !h.Connected() {
		if time.Since(start0) > time.Minute {
			t.Fatal("the host did not connect to the dev mesh")
		}
		time.Sleep(100 * time.Millisecond)
	}
	task := "Count the words in: the quick brown fox"
	wctx, wcancel := context.WithTimeout(ctx, 4*time.Minute)
	defer wcancel()
	var info *offload.Info
	for {
		info, err = h.Offload(wctx, host.Task{Title: "count words", Text: task, RequestID: "req-1"})
		if err == nil {
			break
		}
		// The broker admits the host once it has seen the redemption.
		if wctx.Err() != nil || (!strings.Contains(err.Error(), "KNOCK") && !errors.Is(err, bridge.ErrNotConnected)) {
			t.Fatalf("offload: %v", err)
		}
		time.Sleep(time.Second)
	}
	start := time.Now()
	ready, err := h.WaitReady(wctx, info.ID)
	if err != nil {
		t.Fatalf("the offload sandbox did not become ready: %v", err)
	}
	t.Logf("offload %s ready %s after it was admitted", info.ID, time.Since(start).Round(time.Millisecond))
	if _, err := h.SendTask(wctx, ready, task); err != nil {
		t.Fatalf("sending the task: %v", err)
	}
	res, err := h.Result(wctx, info.ID)
	if err != nil {
		t.Fatalf("the answer: %v", err)
	}
	if !strings.Contains(res.Text, "[kars-offline]") || !strings.Contains(res.Text, "Message from @alice-laptop") {
		t.Fatalf("the agent's answer: %q", res.Text)
	}
	t.Logf("answer %s after ready: %q", time.Since(start).Round(time.Millisecond), res.Text)
	// The offload sandbox's router audited the task and the answer.
	if out := k.must("audit", "tail", offload.SandboxName(info.ID)); !strings.Contains(out, "mesh:receive:alice-laptop") ||
		!strings.Contains(out, "mesh:send:alice-laptop") {
		t.Errorf("the offload router's audit: %q", out)
	}
	if _, err := h.Ack(wctx, info.ID); err != nil {
		t.Fatalf("ack: %v", err)
	}
	if ev, err := h.WaitEvent(wctx, offload.EventEnded, info.ID); err != nil || ev.Offload.EndReason != offload.EndAcknowledged {
		t.Fatalf("ended: %+v, %v", ev, err)
	}
	for {
		err := cl.Get(ctx, client.ObjectKey{Name: offload.Namespace(info.ID)}, &corev1.Namespace{})
		if apierrors.IsNotFound(err) {
			break
		}
		if wctx.Err() != nil {
			t.Fatalf("the offload namespace is still there: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	kp := &karsv1.KarsPairing{}
	if err := cl.Get(ctx, client.ObjectKey{Namespace: "kars-system", Name: "alice-laptop"}, kp); err != nil {
		t.Fatal(err)
	}
	if kp.Status.TokensDay == "" || kp.Status.SlotsInUse != 0 {
		t.Fatalf("pairing status %+v", kp.Status)
	}
	t.Logf("pairing charged %d tokens", kp.Status.TokensUsed)

	// A live offload is listed by `kars mesh list`; `kars pair revoke`
	// stops it and tells the host.
	info2, err := h.Offload(wctx, host.Task{Title: "second", Text: "A second task."})
	if err != nil {
		t.Fatalf("second offload: %v", err)
	}
	if _, err := h.WaitReady(wctx, info2.ID); err != nil {
		t.Fatalf("second offload not ready: %v", err)
	}
	out := k.must("mesh", "list")
	if !strings.Contains(out, offload.SandboxName(info2.ID)) {
		t.Errorf("kars mesh list does not show the live offload: %q", out)
	}
	// … and under its pairing.
	var row string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "alice-laptop ") {
			row = l
		}
	}
	if !strings.Contains(row, offload.SandboxName(info2.ID)) || !strings.Contains(row, "active") {
		t.Errorf("kars mesh list: the pairing's row %q lacks its live offload: %q", row, out)
	}
	eventuallyOut(t, k, 30*time.Second, []string{"pair", "list"}, "1/1")
	k.must("pair", "revoke", "alice-laptop")
	if ev, err := h.WaitEvent(wctx, offload.EventRevoked, ""); err != nil || ev.Error == nil || ev.Error.Code != offload.CodeRevoked {
		t.Fatalf("revoked event %+v, %v", ev, err)
	}
	for {
		err := cl.Get(ctx, client.ObjectKey{Name: offload.Namespace(info2.ID)}, &corev1.Namespace{})
		if apierrors.IsNotFound(err) {
			break
		}
		if wctx.Err() != nil {
			t.Fatalf("the revoked pairing's offload namespace is still there: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if _, err := h.Status(wctx, ""); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("a revoked host's request: %v", err)
	}
}

func updatePairing(t *testing.T, cl client.Client, fn func(*karsv1.KarsPairing)) {
	t.Helper()
	for range 10 {
		kp := &karsv1.KarsPairing{}
		if err := cl.Get(context.Background(), client.ObjectKey{Namespace: "kars-system", Name: "alice-laptop"}, kp); err != nil {
			t.Fatal(err)
		}
		fn(kp)
		err := cl.Update(context.Background(), kp)
		if err == nil {
			return
		}
		if !apierrors.IsConflict(err) {
			t.Fatal(err)
		}
	}
	t.Fatal("the pairing kept changing")
}

// eventuallyOut runs kars args until its output holds want.
func eventuallyOut(t *testing.T, k *kars, within time.Duration, args []string, want string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		out, _ := k.run(args...)
		if strings.Contains(out, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("kars %s: no %q in %q", strings.Join(args, " "), want, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
