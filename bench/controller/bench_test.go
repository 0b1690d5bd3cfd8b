// Package controllerbench is the load harness of kars-controller: it applies
// N KarsSandboxes (each in its own namespace, with its two policies) to a
// real control plane on this machine, with the controller running
// in-process, and reports how long they take to be reconciled, how many API
// requests the controller spends per sandbox, and how many writes it makes
// while the cluster is idle afterwards.
//
// It runs only when asked:
//
//	KARS_BENCH_CONTROLLER=1 go test -run TestReconcileLoad -v -timeout 30m ./bench/controller
//
// KARS_BENCH_SANDBOXES (default 1000), KARS_BENCH_IDLE_SECONDS (default 60)
// and KARS_BENCH_CONCURRENCY (the controller's MaxConcurrentReconciles,
// default 4) tune it. Results are recorded in RESULTS.md.
package controllerbench

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/controlplane"
	"github.com/kars-io/kars/internal/render"
)

func envInt(k string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil && v > 0 {
		return v
	}
	return def
}

// counter counts the controller's API requests by kind of verb.
type counter struct {
	requests, writes atomic.Int64
}

func (c *counter) wrap(rt http.RoundTripper) http.RoundTripper {
	return rtFunc(func(r *http.Request) (*http.Response, error) {
		c.requests.Add(1)
		if r.Method != http.MethodGet {
			c.writes.Add(1)
		}
		return rt.RoundTrip(r)
	})
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestReconcileLoad(t *testing.T) {
	if os.Getenv("KARS_BENCH_CONTROLLER") == "" {
		t.Skip("load harness: set KARS_BENCH_CONTROLLER=1 to run it")
	}
	n := envInt("KARS_BENCH_SANDBOXES", 1000)
	idle := time.Duration(envInt("KARS_BENCH_IDLE_SECONDS", 60)) * time.Second
	concurrency := envInt("KARS_BENCH_CONCURRENCY", 4)
	ctrl.SetLogger(logr.Discard())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	cp, err := controlplane.Start(ctx, controlplane.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	scheme := controller.Scheme()
	hcfg := rest.CopyConfig(cp.Config)
	hcfg.QPS, hcfg.Burst = -1, 0
	harness, err := client.NewWithWatch(hcfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}

	// Setup (not measured): namespaces and policies.
	t.Logf("creating %d namespaces with their InferencePolicy and ToolPolicy", n)
	setupStart := time.Now()
	parallel(n, 16, func(i int) error {
		ns := fmt.Sprintf("bench-%04d", i)
		objs := []client.Object{
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
			&karsv1.InferencePolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "inference"}, Spec: karsv1.InferencePolicySpec{
				ModelPreference: karsv1.ModelPreference{Primary: karsv1.ModelTarget{Provider: karsv1.ProviderAzureOpenAI, Model: "gpt-4.1",
					Deployment: "gpt-41", Endpoint: "https://bench.openai.azure.com",
					Auth: &karsv1.ProviderAuth{Mode: karsv1.AuthWorkloadIdentity, ClientID: "11111111-2222-3333-4444-555555555555"}}},
				TokenBudget: &karsv1.TokenBudget{Daily: 100000}}},
			&karsv1.ToolPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tools"}, Spec: karsv1.ToolPolicySpec{Rules: []karsv1.ToolRule{
				{Name: "inference", Effect: karsv1.EffectAllow, Actions: []string{"inference:*"}},
				{Name: "search", Effect: karsv1.EffectAllow, Actions: []string{"tool:web_search"}}}}},
		}
		for _, o := range objs {
			if err := harness.Create(ctx, o); err != nil {
				return err
			}
		}
		return nil
	}, t)
	t.Logf("setup took %v", time.Since(setupStart).Round(time.Millisecond))

	// The controller, in-process, with its requests counted.
	cnt := &counter{}
	ccfg := rest.CopyConfig(cp.Config)
	ccfg.QPS, ccfg.Burst = 500, 1000
	ccfg.WrapTransport = cnt.wrap
	mgr, err := ctrl.NewManager(ccfg, manager.Options{
		Scheme: scheme, Cache: controller.CacheOptions(),
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
	})
	if err != nil {
		t.Fatal(err)
	}
	err = controller.Setup(mgr, controller.Options{
		Env: render.Environment{
			Catalog:         render.Catalog{Registry: render.DefaultRegistry, Version: "v0.1.0", GitSyncImage: render.DefaultGitSyncImage},
			SystemNamespace: "kars-system",
			ClusterDNS:      []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		},
		MaxConcurrentReconciles: concurrency,
	})
	if err != nil {
		t.Fatal(err)
	}
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- mgr.Start(ctx) }()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		t.Fatal("caches did not sync")
	}
	// Let the policies' first status writes (Pending) finish so that what
	// follows measures sandboxes.
	waitQuiet(t, cnt, 2*time.Second, 2*time.Minute)
	setupRequests := cnt.requests.Load()

	// Watch sandboxes to time each one's reconciliation.
	w, err := harness.Watch(ctx, &karsv1.KarsSandboxList{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	created := make([]time.Time, n)
	done := make([]time.Time, n)
	allDone := make(chan struct{})
	go func() {
		left := n
		for ev := range w.ResultChan() {
			if ev.Type != watch.Added && ev.Type != watch.Modified {
				continue
			}
			sb, ok := ev.Object.(*karsv1.KarsSandbox)
			if !ok || !reconciled(sb) {
				continue
			}
			var i int
			if _, err := fmt.Sscanf(sb.Namespace, "bench-%d", &i); err != nil {
				continue
			}
			mu.Lock()
			if done[i].IsZero() {
				done[i] = time.Now()
				left--
			}
			mu.Unlock()
			if left == 0 {
				close(allDone)
				return
			}
		}
	}()

	req0, wr0 := cnt.requests.Load(), cnt.writes.Load()
	start := time.Now()
	cpu0, children0 := cpuTime(), childCPU()
	parallel(n, 8, func(i int) error {
		ns := fmt.Sprintf("bench-%04d", i)
		sb := &karsv1.KarsSandbox{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "agent"}, Spec: karsv1.KarsSandboxSpec{
			Runtime:      karsv1.RuntimeSpec{Kind: karsv1.RuntimeOpenClaw},
			InferenceRef: karsv1.LocalObjectReference{Name: "inference"},
			Governance:   karsv1.GovernanceSpec{ToolPolicyRef: &karsv1.LocalObjectReference{Name: "tools"}},
			Agent:        &karsv1.AgentSpec{Instructions: "Benchmark agent.", Tools: []string{"web_search"}},
		}}
		t0 := time.Now()
		if err := harness.Create(ctx, sb); err != nil {
			return err
		}
		mu.Lock()
		created[i] = t0
		mu.Unlock()
		return nil
	}, t)
	createdIn := time.Since(start)
	select {
	case <-allDone:
	case <-time.After(10 * time.Minute):
		t.Fatal("not every sandbox reconciled within 10 minutes")
	}
	total := time.Since(start)
	cpuUsed, children1 := cpuTime()-cpu0, childCPU()
	reqReconcile, wrReconcile := cnt.requests.Load()-req0, cnt.writes.Load()-wr0

	// Follow-up work caused by the reconciles (owned-object events, policy
	// status) until the controller goes quiet.
	waitQuiet(t, cnt, 3*time.Second, 5*time.Minute)
	reqAll, wrAll := cnt.requests.Load()-req0, cnt.writes.Load()-wr0

	lat := make([]time.Duration, n)
	for i := range n {
		lat[i] = done[i].Sub(created[i])
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(n-1, int(p*float64(n)))].Round(time.Millisecond) }

	// Idle.
	idleReq0, idleWr0 := cnt.requests.Load(), cnt.writes.Load()
	time.Sleep(idle)
	idleReq, idleWr := cnt.requests.Load()-idleReq0, cnt.writes.Load()-idleWr0

	t.Logf("machine: %d CPUs, %s", runtime.NumCPU(), runtime.Version())
	t.Logf("sandboxes: %d (created in %v by 8 parallel clients; controller MaxConcurrentReconciles=%d)", n, createdIn.Round(time.Millisecond), concurrency)
	t.Logf("all reconciled after: %.2f s", total.Seconds())
	t.Logf("reconcile latency (create returned -> status reports the generation): p50 %v, p90 %v, p99 %v, max %v", q(0.50), q(0.90), q(0.99), lat[n-1].Round(time.Millisecond))
	t.Logf("controller API requests until all reconciled: %d (%.1f per sandbox), of which writes %d (%.1f per sandbox)", reqReconcile, float64(reqReconcile)/float64(n), wrReconcile, float64(wrReconcile)/float64(n))
	t.Logf("controller API requests until quiet (incl. policy status): %d (%.1f per sandbox), writes %d (%.1f per sandbox)", reqAll, float64(reqAll)/float64(n), wrAll, float64(wrAll)/float64(n))
	t.Logf("requests before the sandboxes (cache sync, policy status): %d", setupRequests)
	t.Logf("CPU during the reconcile phase: test process (controller and harness) %.1f s", cpuUsed.Seconds())
	for name, c := range children1 {
		t.Logf("CPU during the reconcile phase: %s %.1f s", name, (c - children0[name]).Seconds())
	}
	t.Logf("idle %v afterwards: %d writes, %d requests", idle, idleWr, idleReq)
	if idleWr != 0 {
		t.Errorf("the controller wrote %d times while idle", idleWr)
	}
	cancel()
	<-mgrDone
}

// reconciled is true once the controller reported the sandbox's current
// generation with its objects applied (without a kubelet no pod starts, so
// Provisioning is as far as a sandbox gets here).
func reconciled(sb *karsv1.KarsSandbox) bool {
	return sb.Status.ObservedGeneration == sb.Generation && sb.Status.ConfigDigest != "" &&
		sb.Status.Phase == karsv1.SandboxProvisioning
}

// waitQuiet waits until the controller made no request for quiet.
func waitQuiet(t *testing.T, c *counter, quiet, max time.Duration) {
	t.Helper()
	deadline := time.Now().Add(max)
	last, since := c.requests.Load(), time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		if cur := c.requests.Load(); cur != last {
			last, since = cur, time.Now()
		} else if time.Since(since) >= quiet {
			return
		}
	}
	t.Fatalf("controller still busy after %v", max)
}

// parallel runs f(0..n-1) on workers goroutines and fails the test on the
// first error.
func parallel(n, workers int, f func(int) error, t *testing.T) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}
