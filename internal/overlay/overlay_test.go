package overlay

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/testenv"
)

func rendered(t testing.TB) (*karsv1.KarsSandbox, *corev1.PodTemplateSpec) {
	t.Helper()
	sb := &karsv1.KarsSandbox{
		ObjectMeta: metav1.ObjectMeta{Name: "web-agent", Namespace: "prod", UID: "0b5e5c2e-1111-4222-8333-944455556666"},
		Spec: karsv1.KarsSandboxSpec{
			Runtime:      karsv1.RuntimeSpec{Kind: karsv1.RuntimeBYO, BYO: &karsv1.BYORuntime{Image: "ghcr.io/example/web-agent:2.3.0", ContractVersion: "v1"}},
			InferenceRef: karsv1.LocalObjectReference{Name: "web-agent-inference"},
		},
	}
	ip := &karsv1.InferencePolicy{ObjectMeta: metav1.ObjectMeta{Name: "web-agent-inference", Namespace: "prod"},
		Spec: karsv1.InferencePolicySpec{ModelPreference: karsv1.ModelPreference{Primary: karsv1.ModelTarget{Provider: karsv1.ProviderOpenAI, Model: "gpt-4.1",
			Auth: &karsv1.ProviderAuth{Mode: karsv1.AuthAPIKey, SecretRef: &karsv1.SecretKeyReference{Name: "openai", Key: "api-key"}}}}}}
	d, err := render.Render(render.Input{Sandbox: sb, Inference: ip, BYOImage: "ghcr.io/example/web-agent@sha256:" + strings.Repeat("a", 64),
		Admin: render.AdminCredentials{Token: []byte("t"), CertPEM: []byte("CERT"), KeyPEM: []byte("KEY")},
		Now:   time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC),
		Env: render.Environment{Catalog: render.Catalog{Registry: "ghcr.io/kars-io", Version: "v0.1.0", GitSyncImage: render.DefaultGitSyncImage},
			SystemNamespace: "kars-system", ClusterDNS: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}})
	if err != nil {
		t.Fatal(err)
	}
	return sb, &d.Deployment.Spec.Template
}

func TestRenderIsDeterministic(t *testing.T) {
	sb, tmpl := rendered(t)
	a, err := Render(sb, "web-agent", tmpl)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Render(sb, "web-agent", tmpl)
	if a.Digest != b.Digest || a.Mutating.Spec.Mutations[0].JSONPatch.Expression != b.Mutating.Spec.Mutations[0].JSONPatch.Expression {
		t.Error("two renders of the same input differ")
	}
	other, _ := Render(sb, "other", tmpl)
	if other.Digest != a.Digest {
		t.Error("the digest covers the mutation, not which Sandbox it matches")
	}
	if Name(sb) != "kars-overlay.prod.web-agent" {
		t.Errorf("name %s", Name(sb))
	}
}

func sandboxPod(name, owner string, mutate func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "prod", Labels: map[string]string{"agents.x-k8s.io/sandbox-name-hash": "1234"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "agents.x-k8s.io/v1beta1", Kind: "Sandbox", Name: owner,
				UID: types.UID("6a1b2c3d-0000-4000-8000-" + strings.Repeat("0", 12)), Controller: ptr(true)}}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "ghcr.io/example/web-agent:2.3.0",
			Env: []corev1.EnvVar{{Name: "AGENT_MODE", Value: "autonomous"}, {Name: "OPENAI_BASE_URL", Value: "https://evil.example.com/v1"}}}}},
	}
	if mutate != nil {
		mutate(p)
	}
	return p
}

func envOf(c corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		if _, dup := m[e.Name]; dup {
			m[e.Name] = "DUPLICATE"
			continue
		}
		m[e.Name] = e.Value
	}
	return m
}

// The policies, applied to the real API server, govern the upstream
// Sandbox's pods at creation and refuse the ones that cannot be governed.
func TestPoliciesOnAPIServer(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	c := env.Client
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "prod"}}); err != nil {
		t.Fatal(err)
	}
	sb, tmpl := rendered(t)
	pol, err := Render(sb, "web-agent", tmpl)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range pol.Objects() {
		if err := c.Create(ctx, o.(client.Object)); err != nil {
			t.Fatalf("create %T: %v", o, err)
		}
	}
	// Policies take effect once the API server's informers see them.
	var pod *corev1.Pod
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		pod = sandboxPod("web-agent-"+string(rune('a'+i%26))+"x", "web-agent", nil)
		if err := c.Create(ctx, pod); err != nil {
			// The validating policy may take effect before the mutating
			// one: until both do, pods are refused (fail closed).
			if !strings.Contains(err.Error(), "not admitted through kars's overlay mutation") || time.Now().After(deadline) {
				t.Fatalf("create pod: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
			continue
		}
		if pod.Annotations[AnnotationDigest] == pol.Digest {
			break
		}
		_ = c.Delete(ctx, pod)
		if time.Now().After(deadline) {
			t.Fatalf("the mutation never applied: %+v", pod.Spec)
		}
		time.Sleep(200 * time.Millisecond)
	}
	s := pod.Spec
	if len(s.InitContainers) != 1 || s.InitContainers[0].Name != render.ContainerEgressGuard {
		t.Errorf("init containers %v", s.InitContainers)
	}
	names := []string{}
	for _, ctr := range s.Containers {
		names = append(names, ctr.Name)
	}
	if !slices.Equal(names, []string{"agent", render.ContainerRouter}) {
		t.Errorf("containers %v", names)
	}
	agent := s.Containers[0]
	if sc := agent.SecurityContext; sc == nil || *sc.RunAsUser != render.AgentUID || !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation {
		t.Errorf("agent security context %+v", agent.SecurityContext)
	}
	e := envOf(agent)
	if e["AGENT_MODE"] != "autonomous" || e["OPENAI_BASE_URL"] != "http://127.0.0.1:8443/v1" || e["KARS_SANDBOX_NAME"] != "web-agent" {
		t.Errorf("agent env %v: the user's own variable stays, the router's override wins, once", e)
	}
	if s.AutomountServiceAccountToken == nil || *s.AutomountServiceAccountToken {
		t.Error("the ServiceAccount token is mounted")
	}
	for k, v := range render.Selector(sb) {
		if pod.Labels[k] != v {
			t.Errorf("label %s=%q, want %q (the NetworkPolicy and router Service select it)", k, pod.Labels[k], v)
		}
	}
	vols := map[string]corev1.Volume{}
	for _, v := range s.Volumes {
		vols[v.Name] = v
	}
	if v, ok := vols["kars-router-admin"]; !ok || v.Secret == nil || v.Secret.SecretName != "web-agent-router-admin" {
		t.Errorf("router admin volume %+v (volumes %v)", v, vols)
	}
	for _, m := range agent.VolumeMounts {
		if v := vols[m.Name]; v.Secret != nil || v.Projected != nil {
			t.Errorf("the agent mounts credential volume %s", m.Name)
		}
	}

	// A pod with its own init containers and volumes: the guard goes first,
	// the pod's own init container is hardened too.
	withInit := sandboxPod("with-init", "web-agent", func(p *corev1.Pod) {
		p.Spec.InitContainers = []corev1.Container{{Name: "fetch", Image: "busybox"}}
		p.Spec.Volumes = []corev1.Volume{{Name: "workspace", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	})
	if err := c.Create(ctx, withInit); err != nil {
		t.Fatalf("pod with init containers and a volume named like kars's: %v", err)
	}
	if ic := withInit.Spec.InitContainers; len(ic) != 2 || ic[0].Name != render.ContainerEgressGuard || ic[1].Name != "fetch" || *ic[1].SecurityContext.RunAsUser != render.AgentUID {
		t.Errorf("init containers %+v", ic)
	}

	// Pods that cannot be governed are refused, with the reason.
	for name, p := range map[string]*corev1.Pod{
		"reads a Secret": sandboxPod("secret-env", "web-agent", func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{Name: "TOKEN", ValueFrom: &corev1.EnvVarSource{
				SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "k"}}})
		}),
		"host network": sandboxPod("host-net", "web-agent", func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		"mounts a Secret": sandboxPod("secret-vol", "web-agent", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "s"}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "creds", MountPath: "/creds"}}
		}),
	} {
		err := c.Create(ctx, p)
		if err == nil || !strings.Contains(err.Error(), Name(sb)) {
			t.Errorf("%s: admitted (%v)", name, err)
		}
	}

	// Another Sandbox's pod, and a pod owned by nothing, are left alone.
	other := sandboxPod("other", "other-sandbox", nil)
	plain := sandboxPod("plain", "x", func(p *corev1.Pod) { p.OwnerReferences = nil })
	for _, p := range []*corev1.Pod{other, plain} {
		if err := c.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		if len(p.Spec.Containers) != 1 || p.Annotations[AnnotationDigest] != "" {
			t.Errorf("pod %s was mutated", p.Name)
		}
	}
}
