package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

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

// applyManifests creates every object of the YAML files (multi-document).
func applyManifests(t *testing.T, c client.Client, files ...string) {
	t.Helper()
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(raw), "\n---\n") {
			var u unstructured.Unstructured
			if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			if err := c.Create(context.Background(), &u); err != nil {
				t.Fatalf("%s: create %s %s: %v", f, u.GetKind(), u.GetName(), err)
			}
		}
	}
}

// kubeconfigAs writes a kubeconfig that impersonates user with the
// credentials of base, so the command runs with exactly user's permissions.
func kubeconfigAs(t *testing.T, base, user string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range cfg.AuthInfos {
		a.Impersonate = user
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// The binary's wiring, end to end against a real API server and with only
// the permissions config/rbac grants: it wins the leader Lease, serves
// health, readiness and metrics, logs JSON, reconciles a sandbox, and stops
// cleanly on cancel.
func TestControllerCommand(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kars-system"}}); err != nil {
		t.Fatal(err)
	}
	applyManifests(t, env.Client, "../../config/rbac/role.yaml", "../../config/rbac/service_account.yaml", "../../config/rbac/role_binding.yaml")
	kubeconfig := kubeconfigAs(t, env.Kubeconfig, "system:serviceaccount:kars-system:kars-controller")
	metrics, probes := freeAddr(t), freeAddr(t)
	logs := &syncBuffer{}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, []string{"--kubeconfig=" + kubeconfig, "--metrics-bind-address=" + metrics,
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
