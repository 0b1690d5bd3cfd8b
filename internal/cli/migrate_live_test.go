package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/convert/agentsandbox"
	"github.com/kars-io/kars/internal/overlay"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/testenv"
)

// coexistence is a real API server with the upstream Sandbox CRD, the real
// upstream agent-sandbox controller (the pinned release, as a process) and
// the kars controller in-process. No kubelet runs: the tests play it by
// writing pod status, and play the Deployment controller the same way.
type coexistence struct {
	*testenv.Env
	c client.Client
}

func startCoexistence(t *testing.T) *coexistence {
	t.Helper()
	env := testenv.Start(t, testenv.Options{})
	testenv.InstallAgentSandboxCRD(t, env.Client)
	dir := testenv.AgentSandboxDir(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	up := exec.CommandContext(ctx, filepath.Join(dir, "agent-sandbox-controller"),
		"--leader-elect=false", "--metrics-bind-address=0", "--health-probe-bind-address=0")
	up.Env = append(os.Environ(), "KUBECONFIG="+env.Kubeconfig)
	logs, w := io.Pipe()
	up.Stdout, up.Stderr = w, w
	var mu sync.Mutex
	var tail []string
	go func() {
		s := bufio.NewScanner(logs)
		s.Buffer(make([]byte, 64<<10), 1<<20)
		for s.Scan() {
			mu.Lock()
			tail = append(tail, s.Text())
			if len(tail) > 40 {
				tail = tail[1:]
			}
			mu.Unlock()
			if os.Getenv("KARS_TEST_VERBOSE") != "" {
				fmt.Fprintln(os.Stderr, "agent-sandbox-controller:", s.Text())
			}
		}
	}()
	if err := up.Start(); err != nil {
		t.Fatalf("start upstream controller: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		_ = up.Wait()
		w.Close()
		if t.Failed() {
			mu.Lock()
			t.Logf("upstream controller's last log lines:\n%s", strings.Join(tail, "\n"))
			mu.Unlock()
		}
	})

	ctrl.SetLogger(logr.Discard())
	skip := true // each run of the test (-count) starts another manager in this process
	mgr, err := ctrl.NewManager(env.Config, manager.Options{Scheme: env.Scheme, Cache: controller.CacheOptions(),
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		Controller: config.Controller{SkipNameValidation: &skip}})
	if err != nil {
		t.Fatal(err)
	}
	err = controller.Setup(mgr, controller.Options{Env: render.Environment{
		Catalog:         render.Catalog{Registry: "ghcr.io/kars-io", Version: "v0.1.0", GitSyncImage: render.DefaultGitSyncImage},
		SystemNamespace: "kars-system",
		ClusterDNS:      []netip.Addr{netip.MustParseAddr("10.96.0.10")},
	}, Prober: &controller.HTTPSProber{Timeout: 100 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = mgr.Start(ctx) }()
	return &coexistence{Env: env, c: env.Client}
}

func (e *coexistence) eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *coexistence) namespace(t *testing.T, name string) {
	t.Helper()
	if err := e.c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	ip := &karsv1.InferencePolicy{ObjectMeta: metav1.ObjectMeta{Name: "agent-inference", Namespace: name},
		Spec: karsv1.InferencePolicySpec{ModelPreference: karsv1.ModelPreference{Primary: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "kars-offline"}}}}
	if err := e.c.Create(context.Background(), ip); err != nil {
		t.Fatal(err)
	}
}

func (e *coexistence) sandbox(t *testing.T, ns, name string, uc *karsv1.UpstreamCompatibility) *karsv1.KarsSandbox {
	t.Helper()
	sb := &karsv1.KarsSandbox{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: karsv1.KarsSandboxSpec{
		Runtime:               karsv1.RuntimeSpec{Kind: karsv1.RuntimeOpenClaw},
		InferenceRef:          karsv1.LocalObjectReference{Name: "agent-inference"},
		UpstreamCompatibility: uc,
	}}
	if err := e.c.Create(context.Background(), sb); err != nil {
		t.Fatal(err)
	}
	return sb
}

// upstreamSandbox creates a Sandbox the way a user of agent-sandbox does.
func (e *coexistence) upstreamSandbox(t *testing.T, ns, name string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec": map[string]any{"podTemplate": map[string]any{"spec": map[string]any{"containers": []any{
			map[string]any{"name": "agent", "image": "ghcr.io/example/web-agent:2.3.0", "env": []any{map[string]any{"name": "AGENT_MODE", "value": "autonomous"}}},
		}}}},
	}}
	if err := e.c.Create(context.Background(), u); err != nil {
		t.Fatal(err)
	}
	return u
}

func (e *coexistence) getSandbox(t *testing.T, ns, name string) (*unstructured.Unstructured, error) {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(agentsandbox.GroupVersionKind)
	err := e.c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, u)
	return u, err
}

// pod returns the pod the upstream Sandbox ns/name controls.
func (e *coexistence) pod(t *testing.T, ns, name string) (*corev1.Pod, error) {
	up, err := e.getSandbox(t, ns, name)
	if err != nil {
		return nil, err
	}
	p, err := podOf(context.Background(), e.c, up)
	if err == nil && p == nil {
		err = fmt.Errorf("upstream Sandbox %s has no pod yet", name)
	}
	return p, err
}

// kubelet plays the kubelet: the pod runs and is ready.
func (e *coexistence) kubelet(t *testing.T, p *corev1.Pod) {
	t.Helper()
	now := metav1.Now()
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.7", PodIPs: []corev1.PodIP{{IP: "10.244.0.7"}},
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		}}
	if err := e.c.Status().Update(context.Background(), p); err != nil {
		t.Fatalf("play kubelet for pod %s: %v", p.Name, err)
	}
}

// deploymentController plays the Deployment controller: one pod available.
func (e *coexistence) deploymentReady(ns, name string) error {
	var dep appsv1.Deployment
	if err := e.c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &dep); err != nil {
		return err
	}
	dep.Status = appsv1.DeploymentStatus{ObservedGeneration: dep.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	return e.c.Status().Update(context.Background(), &dep)
}

func (e *coexistence) condition(ns, name, typ string) (*metav1.Condition, *karsv1.KarsSandbox, error) {
	var sb karsv1.KarsSandbox
	if err := e.c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &sb); err != nil {
		return nil, nil, err
	}
	c := meta.FindStatusCondition(sb.Status.Conditions, typ)
	if c == nil {
		return nil, &sb, fmt.Errorf("no %s condition yet: %v", typ, sb.Status.Conditions)
	}
	return c, &sb, nil
}

func hasDeployment(e *coexistence, ns, name string) bool {
	err := e.c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &appsv1.Deployment{})
	return !apierrors.IsNotFound(err)
}

func containerNames(cs []corev1.Container) string {
	var n []string
	for _, c := range cs {
		n = append(n, c.Name)
	}
	return strings.Join(n, ",")
}

// The three co-existence modes and the switches between them, against the
// real upstream controller.
func TestCoexistenceWithUpstreamController(t *testing.T) {
	e := startCoexistence(t)
	ctx := context.Background()

	t.Run("translate", func(t *testing.T) {
		e.namespace(t, "tr")
		e.sandbox(t, "tr", "agent", &karsv1.UpstreamCompatibility{SigsAgentSandbox: agentsandbox.ModeTranslate})
		// kars emits a Sandbox it owns; the upstream controller runs its pod,
		// which is kars's governed pod.
		var pod *corev1.Pod
		e.eventually(t, "the upstream controller creates the translated pod", func() (err error) {
			pod, err = e.pod(t, "tr", "agent")
			return err
		})
		if got := containerNames(pod.Spec.Containers); got != "openclaw,"+render.ContainerRouter {
			t.Errorf("pod containers %s", got)
		}
		if len(pod.Spec.InitContainers) == 0 || pod.Spec.InitContainers[0].Name != render.ContainerEgressGuard || pod.Labels[render.LabelSandbox] != "agent" {
			t.Errorf("pod %v / labels %v: not kars's governed pod", containerNames(pod.Spec.InitContainers), pod.Labels)
		}
		up, err := e.getSandbox(t, "tr", "agent")
		if err != nil {
			t.Fatal(err)
		}
		var sb karsv1.KarsSandbox
		if err := e.c.Get(ctx, client.ObjectKey{Namespace: "tr", Name: "agent"}, &sb); err != nil {
			t.Fatal(err)
		}
		if !metav1.IsControlledBy(up, &sb) || hasDeployment(e, "tr", "agent") {
			t.Fatalf("the translated Sandbox must be owned by the KarsSandbox and no kars Deployment may run")
		}
		e.kubelet(t, pod)
		e.eventually(t, "the KarsSandbox mirrors the upstream Ready", func() error {
			c, _, err := e.condition("tr", "agent", controller.ConditionUpstreamReady)
			if err == nil && c.Status != metav1.ConditionTrue {
				err = fmt.Errorf("UpstreamReady %s %s", c.Status, c.Message)
			}
			return err
		})
		if c, _, _ := e.condition("tr", "agent", karsv1.ConditionRuntimeReady); c == nil || c.Status != metav1.ConditionTrue {
			t.Errorf("RuntimeReady %+v", c)
		}

		// Back to native: kars's Deployment first, the translation goes
		// only once it is ready.
		done := make(chan error, 1)
		var out strings.Builder
		go func() { done <- toNative(ctx, e.c, &sb, false, &out) }()
		e.eventually(t, "kars renders its Deployment", func() error { return e.deploymentReadyOnce("tr", "agent") })
		if err := <-done; err != nil {
			t.Fatalf("to-native: %v\n%s", err, out.String())
		}
		e.eventually(t, "the translated Sandbox is deleted", func() error {
			if _, err := e.getSandbox(t, "tr", "agent"); !apierrors.IsNotFound(err) {
				return fmt.Errorf("still there (%v)", err)
			}
			return nil
		})
	})

	t.Run("observe", func(t *testing.T) {
		e.namespace(t, "ob")
		e.upstreamSandbox(t, "ob", "web")
		e.sandbox(t, "ob", "web-mirror", &karsv1.UpstreamCompatibility{SigsAgentSandbox: agentsandbox.ModeObserve, UpstreamRef: &karsv1.LocalObjectReference{Name: "web"}})
		var pod *corev1.Pod
		e.eventually(t, "the upstream pod", func() (err error) { pod, err = e.pod(t, "ob", "web"); return err })
		e.kubelet(t, pod)
		e.eventually(t, "the KarsSandbox mirrors Ready", func() error {
			c, sb, err := e.condition("ob", "web-mirror", karsv1.ConditionReady)
			if err == nil && (c.Status != metav1.ConditionTrue || sb.Status.Phase != karsv1.SandboxRunning) {
				err = fmt.Errorf("Ready %s (%s), phase %s", c.Status, c.Message, sb.Status.Phase)
			}
			return err
		})
		if c, _, _ := e.condition("ob", "web-mirror", karsv1.ConditionRouterEnforcing); c == nil || c.Reason != controller.ReasonObserveOnly {
			t.Errorf("RouterEnforcing %+v: observe governs nothing and must say so", c)
		}
		if hasDeployment(e, "ob", "web-mirror") || len(pod.Spec.Containers) != 1 {
			t.Error("observe wrote something: a kars Deployment or a changed pod")
		}
		up, _ := e.getSandbox(t, "ob", "web")
		if err := setOperatingMode(ctx, e.c, up, agentsandbox.OperatingSuspended); err != nil {
			t.Fatal(err)
		}
		e.eventually(t, "the mirror follows the suspension", func() error {
			var sb karsv1.KarsSandbox
			if err := e.c.Get(ctx, client.ObjectKey{Namespace: "ob", Name: "web-mirror"}, &sb); err != nil {
				return err
			}
			if sb.Status.Phase != karsv1.SandboxSuspended {
				return fmt.Errorf("phase %s", sb.Status.Phase)
			}
			return nil
		})
	})

	t.Run("overlay", func(t *testing.T) {
		e.namespace(t, "ov")
		e.upstreamSandbox(t, "ov", "web")
		var old *corev1.Pod
		e.eventually(t, "the upstream pod, ungoverned", func() (err error) { old, err = e.pod(t, "ov", "web"); return err })
		e.kubelet(t, old)
		// A live native sandbox.
		sb := e.sandbox(t, "ov", "web", nil)
		e.eventually(t, "kars's own pod", func() error { return e.deploymentReadyOnce("ov", "web") })
		if err := e.c.Get(ctx, client.ObjectKeyFromObject(sb), sb); err != nil {
			t.Fatal(err)
		}

		// Watch every pod created from now on: each must be governed.
		start := time.Now()
		var out strings.Builder
		if err := toOverlay(ctx, e.c, sb, "web", &out); err != nil {
			t.Fatalf("to-overlay: %v\n%s", err, out.String())
		}
		t.Log(out.String())
		pod, err := e.pod(t, "ov", "web")
		if err != nil {
			t.Fatal(err)
		}
		if pod.UID == old.UID {
			t.Fatal("the pre-overlay pod was kept")
		}
		if pod.Annotations[overlay.AnnotationDigest] == "" || containerNames(pod.Spec.Containers) != "agent,"+render.ContainerRouter ||
			pod.Spec.InitContainers[0].Name != render.ContainerEgressGuard || *pod.Spec.Containers[0].SecurityContext.RunAsUser != render.AgentUID {
			t.Fatalf("the recreated upstream pod is not governed: %s %v", containerNames(pod.Spec.Containers), pod.Annotations)
		}
		if !metav1.IsControlledBy(pod, mustGet(t, e, "ov", "web")) || len(pod.OwnerReferences) != 1 {
			t.Errorf("owner references %v: the pod must stay the upstream Sandbox's alone", pod.OwnerReferences)
		}
		// kars's pod keeps serving until the overlaid one is ready.
		time.Sleep(time.Second)
		if !hasDeployment(e, "ov", "web") {
			t.Fatal("kars stopped its own pod before the overlaid one was ready: a window without the agent")
		}
		e.kubelet(t, pod)
		e.eventually(t, "kars stops its own pod once the overlaid one is ready", func() error {
			if hasDeployment(e, "ov", "web") {
				return fmt.Errorf("Deployment still there")
			}
			return nil
		})
		var pods corev1.PodList
		if err := e.c.List(ctx, &pods, client.InNamespace("ov")); err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			if p.CreationTimestamp.After(start.Add(-time.Second)) && p.Annotations[overlay.AnnotationDigest] == "" {
				t.Errorf("pod %s was created after the switch without governance", p.Name)
			}
		}

		// Leaving overlay while the upstream Sandbox runs keeps the
		// policies; suspending it releases them.
		var dry strings.Builder
		if err := toNative(ctx, e.c, sb.DeepCopy(), true, &dry); err != nil || !strings.Contains(dry.String(), "suspend upstream Sandbox ov/web") {
			t.Fatalf("to-native --dry-run: %v %q", err, dry.String())
		}
		if err := e.c.Get(ctx, client.ObjectKeyFromObject(sb), sb); err != nil {
			t.Fatal(err)
		}
		if sb.Spec.UpstreamCompatibility.SigsAgentSandbox != agentsandbox.ModeOverlay {
			t.Fatal("--dry-run changed the sandbox")
		}
		done := make(chan error, 1)
		go func() { done <- toNative(ctx, e.c, sb, false, &out) }()
		e.eventually(t, "kars's own pod again", func() error { return e.deploymentReadyOnce("ov", "web") })
		if err := <-done; err != nil {
			t.Fatalf("to-native: %v\n%s", err, out.String())
		}
		e.eventually(t, "the overlay's policies go once the upstream Sandbox is suspended", func() error {
			err := e.c.Get(ctx, client.ObjectKey{Name: overlay.Name(sb)}, &admissionv1.MutatingAdmissionPolicy{})
			if !apierrors.IsNotFound(err) {
				return fmt.Errorf("still there (%v)", err)
			}
			if err := e.c.Get(ctx, client.ObjectKeyFromObject(sb), sb); err != nil {
				return err
			}
			if len(sb.Finalizers) != 0 {
				return fmt.Errorf("finalizers %v", sb.Finalizers)
			}
			return nil
		})
	})

	t.Run("overlay policies stay while the upstream runs", func(t *testing.T) {
		e.namespace(t, "hold")
		e.upstreamSandbox(t, "hold", "web")
		sb := e.sandbox(t, "hold", "gov", &karsv1.UpstreamCompatibility{SigsAgentSandbox: agentsandbox.ModeOverlay, UpstreamRef: &karsv1.LocalObjectReference{Name: "web"}})
		name := overlay.Name(sb)
		e.eventually(t, "the policies", func() error {
			return e.c.Get(ctx, client.ObjectKey{Name: name}, &admissionv1.MutatingAdmissionPolicy{})
		})
		e.eventually(t, "the ungoverned pod is reported", func() error {
			c, _, err := e.condition("hold", "gov", karsv1.ConditionDegraded)
			if err == nil && c.Reason != controller.ReasonOverlayPodUngoverned {
				err = fmt.Errorf("Degraded %s: %s", c.Reason, c.Message)
			}
			return err
		})
		if err := e.c.Get(ctx, client.ObjectKeyFromObject(sb), sb); err != nil {
			t.Fatal(err)
		}
		before := sb.DeepCopy()
		sb.Spec.UpstreamCompatibility = nil
		if err := e.c.Patch(ctx, sb, client.MergeFrom(before)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		if err := e.c.Get(ctx, client.ObjectKey{Name: name}, &admissionv1.MutatingAdmissionPolicy{}); err != nil {
			t.Fatalf("the policies went while the upstream Sandbox still runs: %v", err)
		}
		if err := e.c.Delete(ctx, mustGet(t, e, "hold", "web")); err != nil {
			t.Fatal(err)
		}
		e.eventually(t, "the policies go with the upstream Sandbox", func() error {
			if err := e.c.Get(ctx, client.ObjectKey{Name: name}, &admissionv1.MutatingAdmissionPolicy{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("still there (%v)", err)
			}
			return nil
		})
	})

	t.Run("translate never adopts", func(t *testing.T) {
		e.namespace(t, "adopt")
		e.upstreamSandbox(t, "adopt", "agent")
		e.sandbox(t, "adopt", "agent", &karsv1.UpstreamCompatibility{SigsAgentSandbox: agentsandbox.ModeTranslate})
		e.eventually(t, "a conflict", func() error {
			c, _, err := e.condition("adopt", "agent", karsv1.ConditionDegraded)
			if err == nil && c.Reason != controller.ReasonUpstreamConflict {
				err = fmt.Errorf("Degraded %s: %s", c.Reason, c.Message)
			}
			return err
		})
		up := mustGet(t, e, "adopt", "agent")
		if len(up.GetOwnerReferences()) != 0 {
			t.Errorf("kars wrote an owner reference on a Sandbox it did not create: %v", up.GetOwnerReferences())
		}
	})
}

func mustGet(t *testing.T, e *coexistence, ns, name string) *unstructured.Unstructured {
	t.Helper()
	u, err := e.getSandbox(t, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// deploymentReadyOnce marks kars's Deployment ready when it exists.
func (e *coexistence) deploymentReadyOnce(ns, name string) error {
	return e.deploymentReady(ns, name)
}
