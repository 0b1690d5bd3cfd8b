package up

import (
	"context"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/blueprint"
	"github.com/kars-io/kars/internal/testenv"
)

func TestDigestsChangeWithContent(t *testing.T) {
	a := fstest.MapFS{"Chart.yaml": {Data: []byte("name: kars")}, "templates/x.yaml": {Data: []byte("a: 1")}}
	b := fstest.MapFS{"Chart.yaml": {Data: []byte("name: kars")}, "templates/x.yaml": {Data: []byte("a: 2")}}
	// Moving bytes from one file to the next must change the digest too.
	c := fstest.MapFS{"Chart.yaml": {Data: []byte("name: karsa")}, "templates/x.yaml": {Data: []byte(": 1")}}
	da, _ := Digest(a)
	db, _ := Digest(b)
	dc, _ := Digest(c)
	if da == db || da == dc || len(da) != 32 {
		t.Fatalf("digests %s %s %s", da, db, dc)
	}
	v1, _ := ValuesDigest(map[string]any{"a": 1, "b": map[string]any{"c": true}})
	v2, _ := ValuesDigest(map[string]any{"b": map[string]any{"c": true}, "a": 1})
	v3, _ := ValuesDigest(map[string]any{"a": 1, "b": map[string]any{"c": false}})
	vnil, _ := ValuesDigest(nil)
	vempty, _ := ValuesDigest(map[string]any{})
	if v1 != v2 || v1 == v3 || vnil != vempty {
		t.Fatalf("values digests: %s %s %s %s %s", v1, v2, v3, vnil, vempty)
	}
}

func TestPodSecurityLabels(t *testing.T) {
	l, err := PodSecurityLabels(map[string]any{"podSecurity": map[string]any{"warn": "baseline"}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/audit": "restricted", "pod-security.kubernetes.io/warn": "baseline"}
	if len(l) != len(want) {
		t.Fatalf("labels %v", l)
	}
	for k, v := range want {
		if l[k] != v {
			t.Fatalf("labels %v, want %v", l, want)
		}
	}
}

// Install, no-op, upgrade and uninstall of the embedded chart with Helm's
// SDK against the real API server: CRs survive every step.
func TestInstallUpgradeKeepsCRs(t *testing.T) {
	// kube-controller-manager finishes the deletion of the namespace the
	// chart owns (the seccomp installer's) after the uninstall.
	env := testenv.Start(t, testenv.Options{SkipCRDs: true, ControllerManager: true})
	ctx := context.Background()
	cl := env.Client
	tgt := Target{Kubeconfig: env.Kubeconfig, Namespace: "kars-system", Release: "kars"}
	if changed, err := EnsureNamespace(ctx, cl, tgt.Namespace, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}); err != nil || !changed {
		t.Fatalf("namespace: %v %v", changed, err)
	}
	if changed, err := EnsureNamespace(ctx, cl, tgt.Namespace, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}); err != nil || changed {
		t.Fatalf("namespace again: changed=%v %v", changed, err)
	}
	h, err := NewHelm(tgt, nil)
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]any{"image": map[string]any{"registry": "registry.example.com/kars", "version": "v1.2.3"}}
	res, err := h.Install(ctx, vals)
	if err != nil || res.Action != Installed || res.Revision != 1 {
		t.Fatalf("install: %+v %v", res, err)
	}
	var dep appsv1.Deployment
	if err := cl.Get(ctx, client.ObjectKey{Namespace: "kars-system", Name: "kars-controller"}, &dep); err != nil {
		t.Fatal(err)
	}
	if img := dep.Spec.Template.Spec.Containers[0].Image; img != "registry.example.com/kars/kars-controller:v1.2.3" {
		t.Fatalf("controller image %s", img)
	}
	// The CRDs are served: create the seed's objects.
	objs, err := blueprint.Build(blueprint.Options{Name: "keeper", Target: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "kars-offline"}})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, o := range objs {
		for {
			err := cl.Create(ctx, o)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("create %T %s: %v", o, o.GetName(), err)
			}
			time.Sleep(100 * time.Millisecond) // the CRD may not be served yet
		}
	}

	// Same chart, same values: nothing happens, no new revision.
	res, err = h.Install(ctx, map[string]any{"image": map[string]any{"version": "v1.2.3", "registry": "registry.example.com/kars"}})
	if err != nil || res.Action != Unchanged || res.Revision != 1 {
		t.Fatalf("re-run: %+v %v", res, err)
	}
	// Changed values: an upgrade; the CRs are still there.
	vals["controller"] = map[string]any{"replicas": 1, "logLevel": "debug"}
	res, err = h.Install(ctx, vals)
	if err != nil || res.Action != Upgraded || res.Revision != 2 || res.Previous != 1 {
		t.Fatalf("upgrade: %+v %v", res, err)
	}
	if err := cl.Get(ctx, client.ObjectKey{Namespace: "kars-system", Name: "kars-controller"}, &dep); err != nil || *dep.Spec.Replicas != 1 {
		t.Fatalf("after upgrade: replicas %v %v", dep.Spec.Replicas, err)
	}
	var sb karsv1.KarsSandbox
	if err := cl.Get(ctx, client.ObjectKey{Namespace: "kars-keeper", Name: "keeper"}, &sb); err != nil {
		t.Fatalf("sandbox lost in upgrade: %v", err)
	}
	// Values not given again go back to the defaults (ResetValues).
	res, err = h.Install(ctx, map[string]any{"image": map[string]any{"registry": "registry.example.com/kars", "version": "v1.2.3"}})
	if err != nil || res.Action != Upgraded {
		t.Fatalf("downgrade values: %+v %v", res, err)
	}
	if err := cl.Get(ctx, client.ObjectKey{Namespace: "kars-system", Name: "kars-controller"}, &dep); err != nil || *dep.Spec.Replicas != 2 {
		t.Fatalf("replicas back to the default: %v %v", dep.Spec.Replicas, err)
	}

	// Uninstall: the controller goes, the CRDs and the sandbox stay.
	if err := h.Uninstall(); err != nil {
		t.Fatal(err)
	}
	if err := cl.Get(ctx, client.ObjectKey{Namespace: "kars-system", Name: "kars-controller"}, &dep); err == nil {
		t.Fatal("controller Deployment survived uninstall")
	}
	crd := &unstructured.Unstructured{}
	crd.SetAPIVersion("apiextensions.k8s.io/v1")
	crd.SetKind("CustomResourceDefinition")
	if err := cl.Get(ctx, client.ObjectKey{Name: "karssandboxes.kars.azure.com"}, crd); err != nil || !crd.GetDeletionTimestamp().IsZero() {
		t.Fatalf("CRD after uninstall: %v %v", err, crd.GetDeletionTimestamp())
	}
	if err := cl.Get(ctx, client.ObjectKey{Namespace: "kars-keeper", Name: "keeper"}, &sb); err != nil {
		t.Fatalf("sandbox lost in uninstall: %v", err)
	}
	// And a fresh install adopts the kept CRDs.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		var ns corev1.Namespace
		if err := cl.Get(ctx, client.ObjectKey{Name: "kars-node"}, &ns); client.IgnoreNotFound(err) == nil && err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("namespace kars-node not deleted after uninstall")
		}
	}
	h2, _ := NewHelm(tgt, nil)
	if res, err := h2.Install(ctx, vals); err != nil || res.Action != Installed {
		t.Fatalf("reinstall over kept CRDs: %+v %v", res, err)
	}
}

func TestControllerUp(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	cl := env.Client
	now := time.Now()
	check := ControllerCheck{Namespace: "kars-system", Deployment: "kars-controller", LeaseID: "lease", Now: func() time.Time { return now }}
	if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kars-system"}}); err != nil {
		t.Fatal(err)
	}
	notYet := func(want string) {
		t.Helper()
		how, err := check.ControllerUp(ctx, cl)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("ControllerUp = %q, %v; want not up with %q", how, err, want)
		}
	}
	notYet("no controller holds Lease")
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-system", Name: "lease"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("ctrl-1"), LeaseDurationSeconds: ptr.To[int32](15), RenewTime: &metav1.MicroTime{Time: now.Add(-20 * time.Second)}}}
	if err := cl.Create(ctx, lease); err != nil {
		t.Fatal(err)
	}
	notYet("last renewed 20s ago")
	lease.Spec.RenewTime = &metav1.MicroTime{Time: now.Add(-2 * time.Second)}
	if err := cl.Update(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if how, err := check.ControllerUp(ctx, cl); err != nil || !strings.Contains(how, "ctrl-1 holds Lease") {
		t.Fatalf("fresh lease: %q %v", how, err)
	}
	// Once the cluster has a node, the Deployment must have rolled out,
	// whatever the Lease says (an old replica may still hold it).
	if err := cl.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}); err != nil {
		t.Fatal(err)
	}
	notYet("deployments.apps \"kars-controller\" not found")
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-system", Name: "kars-controller"}, Spec: appsv1.DeploymentSpec{
		Replicas: ptr.To[int32](2),
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"a": "b"}},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"a": "b"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "i"}}}}}}
	if err := cl.Create(ctx, dep); err != nil {
		t.Fatal(err)
	}
	notYet("0/2 updated, 0 available")
	dep.Status = appsv1.DeploymentStatus{ObservedGeneration: dep.Generation, Replicas: 2, UpdatedReplicas: 2, AvailableReplicas: 1, ReadyReplicas: 1}
	if err := cl.Status().Update(ctx, dep); err != nil {
		t.Fatal(err)
	}
	notYet("2/2 updated, 1 available")
	dep.Status.AvailableReplicas, dep.Status.ReadyReplicas = 2, 2
	if err := cl.Status().Update(ctx, dep); err != nil {
		t.Fatal(err)
	}
	if how, err := check.ControllerUp(ctx, cl); err != nil || !strings.Contains(how, "rolled out: 2/2") {
		t.Fatalf("rolled out: %q %v", how, err)
	}
	check.InProcess = func() bool { return true }
	if how, err := check.ControllerUp(ctx, cl); err != nil || !strings.Contains(how, "in-process") {
		t.Fatalf("in process: %q %v", how, err)
	}
}
