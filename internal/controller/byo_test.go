package controller

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/ociimage"
	"github.com/kars-io/kars/internal/render"
)

// The BYO contract: the image must declare org.kars.runtime.contract=v1,
// read from a real OCI registry.
func TestBYOContract(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "byo")
	run := func(name, image string) *karsv1.KarsSandbox {
		sb := minimalSandbox(ns, name, karsv1.RuntimeBYO)
		sb.Spec.Runtime.BYO.Image = image
		withPolicies(t, sb)
		create(t, sb)
		return sb
	}
	t.Run("label present", func(t *testing.T) {
		ref := pushImage(t, "byo/good", "v1", map[string]string{ociimage.ContractLabel: "v1"})
		sb := run("good", ref)
		r := waitRendered(t, sb)
		img := r.deploy.Spec.Template.Spec.Containers[0].Image
		if !strings.HasPrefix(img, hostOf(byoReg)+"/byo/good@sha256:") || r.deploy.Spec.Template.Annotations[render.AnnotationVerifiedImage] != img {
			t.Errorf("runs %s", img)
		}
	})
	t.Run("label absent", func(t *testing.T) {
		sb := run("bare", pushImage(t, "byo/bare", "v1", nil))
		cur := waitCondition(t, sb, karsv1.ConditionRuntimeReady, metav1.ConditionFalse, ReasonBYOContractInvalid)
		if cur.Status.Phase != karsv1.SandboxFailed || len(observe(t, sb).present) != 0 {
			t.Errorf("phase %s objects %v", cur.Status.Phase, observe(t, sb).present)
		}
	})
	t.Run("label different", func(t *testing.T) {
		sb := run("future", pushImage(t, "byo/future", "v1", map[string]string{ociimage.ContractLabel: "v2"}))
		cur := waitCondition(t, sb, karsv1.ConditionRuntimeReady, metav1.ConditionFalse, ReasonBYOContractInvalid)
		if !strings.Contains(conditionOf(cur, karsv1.ConditionRuntimeReady).Message, "=v2") {
			t.Errorf("message does not name the label found: %s", conditionOf(cur, karsv1.ConditionRuntimeReady).Message)
		}
	})
	t.Run("registry unreachable", func(t *testing.T) {
		ref := "127.0.0.1:1/byo/agent:v1" // nothing listens on port 1
		sb := run("unreachable", ref)
		cur := waitCondition(t, sb, karsv1.ConditionRuntimeReady, metav1.ConditionFalse, ReasonBYOImageUnreachable)
		if cur.Status.Phase != karsv1.SandboxDegraded || len(observe(t, sb).present) != 0 {
			t.Errorf("phase %s objects %v", cur.Status.Phase, observe(t, sb).present)
		}
		// Retries back off (2 s, 4 s, 8 s …): a hot loop would make
		// hundreds of attempts in this window.
		time.Sleep(7 * time.Second)
		if n := inspector.count(ref); n < 2 || n > 4 {
			t.Errorf("%d registry attempts in ~7 s, want 2-4 (backoff 2 s doubling)", n)
		}
	})
	t.Run("unverifiable change keeps the verified workload", func(t *testing.T) {
		sb := run("steady", pushImage(t, "byo/steady", "v1", map[string]string{ociimage.ContractLabel: "v1"}))
		r := waitRendered(t, sb)
		verified := r.deploy.Spec.Template.Spec.Containers[0].Image
		updateRetrying(t, client.ObjectKeyFromObject(sb), &karsv1.KarsSandbox{}, func(cur *karsv1.KarsSandbox) {
			cur.Spec.Runtime.BYO.Image = "127.0.0.1:1/byo/steady:v2"
		})
		waitCondition(t, sb, karsv1.ConditionRuntimeReady, metav1.ConditionFalse, ReasonBYOImageUnreachable)
		time.Sleep(time.Second)
		if r := observe(t, sb); !r.present["Deployment"] || r.deploy.Spec.Template.Spec.Containers[0].Image != verified {
			t.Fatalf("a registry outage removed or changed the verified workload: %v", r.present)
		}
	})
	t.Run("private registry with pull secret", func(t *testing.T) {
		reg := startAuthRegistry(t, "robot", "s3cret")
		ref := pushTo(t, reg.host, "private/agent", "v1", map[string]string{ociimage.ContractLabel: "v1"}, reg.basic())
		sec := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "regcred"},
			Type:       corev1.SecretTypeDockerConfigJson,
			Data:       map[string][]byte{corev1.DockerConfigJsonKey: reg.dockerConfig()},
		}
		create(t, sec)
		sb := minimalSandbox(ns, "private", karsv1.RuntimeBYO)
		sb.Spec.Runtime.BYO.Image = ref
		sb.Spec.Runtime.ImagePullSecrets = []karsv1.LocalObjectReference{{Name: "regcred"}}
		withPolicies(t, sb)
		create(t, sb)
		waitRendered(t, sb)
	})
}
