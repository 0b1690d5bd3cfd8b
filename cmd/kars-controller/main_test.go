package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/testenv"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// syncBuffer collects the JSON log lines written by the running manager.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The binary's wiring, end to end against a real API server: it wins the
// leader Lease, serves health, readiness and metrics, logs JSON, reconciles
// a sandbox, and stops cleanly (releasing the Lease) on cancel.
func TestControllerCommand(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kars-system"}}); err != nil {
		t.Fatal(err)
	}
	metrics, probes := freeAddr(t), freeAddr(t)
	logs := &syncBuffer{}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, []string{"--kubeconfig=" + env.Kubeconfig, "--metrics-bind-address=" + metrics,
			"--health-probe-bind-address=" + probes, "--cluster-dns=10.96.0.10", "--image-registry=registry.example/kars"},
			func(string) string { return "" }, logs)
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run returned %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the manager did not stop")
		}
	}()

	waitHTTP := func(url, want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := http.Get(url)
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 && strings.Contains(string(body), want) {
					return
				}
				err = fmt.Errorf("%s: %s", resp.Status, body)
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET %s: %v\nlogs:\n%s", url, err, logs.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitHTTP("http://"+probes+"/healthz", "ok")
	waitHTTP("http://"+probes+"/readyz", "ok")

	ns := "cmd-test"
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	objs := []client.Object{
		&karsv1.InferencePolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "p"}, Spec: karsv1.InferencePolicySpec{
			ModelPreference: karsv1.ModelPreference{Primary: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "m"}}}},
		&karsv1.KarsSandbox{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sb"}, Spec: karsv1.KarsSandboxSpec{
			Runtime: karsv1.RuntimeSpec{Kind: karsv1.RuntimeOpenClaw}, InferenceRef: karsv1.LocalObjectReference{Name: "p"}}},
	}
	for _, o := range objs {
		if err := env.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var sb karsv1.KarsSandbox
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "sb"}, &sb); err != nil {
			t.Fatal(err)
		}
		if sb.Status.Phase == karsv1.SandboxProvisioning && strings.HasPrefix(sb.Status.RuntimeImage, "registry.example/kars/") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox not reconciled: %+v\nlogs:\n%s", sb.Status, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitHTTP("http://"+metrics+"/metrics", `kars_controller_applies_total{kind="Deployment",result="applied"}`)

	var lease coordinationv1.Lease
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "kars-system", Name: "kars-controller.kars.azure.com"}, &lease); err != nil {
		t.Fatalf("leader Lease: %v", err)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
		t.Error("leader Lease has no holder")
	}
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if !strings.HasPrefix(line, "{") {
			t.Errorf("log line is not JSON: %s", line)
			break
		}
	}
	if !strings.Contains(logs.String(), `"msg":"kars-controller starting"`) {
		t.Error("no start log line")
	}
}

func TestFlags(t *testing.T) {
	c, err := parseFlags(nil, func(k string) string {
		return map[string]string{"POD_NAMESPACE": "kars-ops", "KARS_IMAGE_REGISTRY": "mirror.local/kars"}[k]
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.systemNamespace != "kars-ops" || c.registry != "mirror.local/kars" || !c.leaderElect || c.metricsAddr != ":8080" {
		t.Errorf("defaults: %+v", c)
	}
	if _, err := parseFlags([]string{"extra"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Error("stray argument accepted")
	}
	if err := run(context.Background(), []string{"--cluster-dns=not-an-ip", "--kubeconfig=/nonexistent"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Error("bad kubeconfig accepted")
	}
}
