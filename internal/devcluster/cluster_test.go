package devcluster

import (
	"context"
	"net"
	"os"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controlplane"
	"github.com/kars-io/kars/internal/testenv"
)

// A dev cluster keeps its state: an object created before a stop is there
// after the next start, and the kubeconfig written the first time still
// works.
func TestDevClusterResumesState(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	if _, err := controlplane.AssetsDir(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx := context.Background()
	opts := Options{Dir: dir, APIServerPort: freePort(t), EtcdPort: freePortPair(t)}
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(c.Config, client.Options{Scheme: testenv.Scheme()})
	if err != nil {
		c.Stop()
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kars-dev-agent"}}
	sb := &karsv1.KarsSandbox{ObjectMeta: metav1.ObjectMeta{Name: "dev-agent", Namespace: ns.Name},
		Spec: karsv1.KarsSandboxSpec{Runtime: karsv1.RuntimeSpec{Kind: karsv1.RuntimeBYO, BYO: &karsv1.BYORuntime{Image: "local/kars-agent", ContractVersion: "v1"}},
			InferenceRef: karsv1.LocalObjectReference{Name: "dev-agent-inference"}}}
	if err := cl.Create(ctx, ns); err != nil {
		c.Stop()
		t.Fatal(err)
	}
	if err := cl.Create(ctx, sb); err != nil {
		c.Stop()
		t.Fatal(err)
	}
	kubeconfig, err := os.ReadFile(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c.Stop()
	if err := portFree(opts.APIServerPort); err != nil {
		t.Fatalf("API server port still taken after Stop: %v", err)
	}

	c2, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Stop()
	again, err := os.ReadFile(c2.Kubeconfig)
	if err != nil || string(again) != string(kubeconfig) {
		t.Fatalf("kubeconfig changed across restarts (err %v)", err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c2.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cl2, err := client.New(cfg, client.Options{Scheme: testenv.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	got := &karsv1.KarsSandbox{}
	if err := cl2.Get(ctx, client.ObjectKeyFromObject(sb), got); err != nil {
		t.Fatalf("sandbox created before the restart is gone: %v", err)
	}
	if got.Spec.IsolationLevel() != karsv1.IsolationEnhanced {
		t.Fatalf("defaults lost: %+v", got.Spec)
	}
	if err := c2.Exited(); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// freePortPair returns a port p such that p and p+1 (etcd's client and
// peer ports) are both free now.
func freePortPair(t *testing.T) int {
	t.Helper()
	for range 50 {
		p := freePort(t)
		l, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		if err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no two adjacent free ports")
	return 0
}
