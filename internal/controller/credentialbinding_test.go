package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/egress/credbind"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/routerconfig"
)

// A CredentialBinding reaches the router's config and the pod — the Secret
// mounted into the router only, router-trust before the agent, the
// placeholder in the agent's environment — and its status says it is
// bound; a bad one is reported and leaves the sandbox alone; deleting the
// binding takes it out of the router's config.
func TestCredentialBindingCompiled(t *testing.T) {
	requireController(t)
	ns := newNamespace(t, "creds")
	sb := minimalSandbox(ns, "research-bot", karsv1.RuntimeOpenClaw)
	withPolicies(t, sb)
	create(t, sb)
	r := waitRendered(t, sb)
	first := r.config.Annotations[render.AnnotationConfigDigest]

	tg := &karsv1.CredentialBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "research-bot-telegram"},
		Spec: karsv1.CredentialBindingSpec{SandboxRef: karsv1.LocalObjectReference{Name: "research-bot"},
			SecretRef: karsv1.SecretKeyReference{Name: "research-bot-credentials", Key: "telegram-token"},
			Endpoints: []string{"https://api.telegram.org/bot", "https://api.telegram.org/file/bot"},
			Placement: karsv1.CredentialPlacement{Type: karsv1.PlacementPath}, AgentEnv: "TELEGRAM_BOT_TOKEN"}}
	bad := &karsv1.CredentialBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "research-bot-proxy"},
		Spec: karsv1.CredentialBindingSpec{SandboxRef: karsv1.LocalObjectReference{Name: "research-bot"},
			SecretRef: karsv1.SecretKeyReference{Name: "x", Key: "y"}, Endpoints: []string{"https://api.example.com/"},
			Placement: karsv1.CredentialPlacement{Type: karsv1.PlacementHeader, Name: "X-Key"}, AgentEnv: "HTTPS_PROXY"}}
	create(t, tg, bad)

	var cm corev1.ConfigMap
	eventually(t, 20*time.Second, "router config with the binding", func() error {
		get(t, ns, r.config.Name, &cm)
		if cm.Annotations[render.AnnotationConfigDigest] == first {
			return errNotYet
		}
		return nil
	})
	cfg, err := routerconfig.Parse([]byte(cm.Data[routerconfig.FileName]))
	if err != nil {
		t.Fatal(err)
	}
	ph := credbind.Placeholder(ns, "research-bot", "research-bot-telegram")
	if c := cfg.Config.Credentials; len(c) != 1 || c[0].Placeholder != ph || c[0].ValueFile != "/var/run/secrets/kars/credentials/research-bot-credentials/telegram-token" {
		t.Fatalf("credentials in router.json: %+v", c)
	}
	if strings.Contains(cm.Data[routerconfig.FileName], "X-Key") {
		t.Error("the invalid binding was compiled")
	}
	var dep = r.deploy
	eventually(t, 20*time.Second, "pod template with router-trust", func() error {
		get(t, ns, sb.Name, &dep)
		if len(dep.Spec.Template.Spec.InitContainers) < 2 {
			return errNotYet
		}
		return nil
	})
	pod := dep.Spec.Template.Spec
	if pod.InitContainers[1].Name != render.ContainerRouterTrust {
		t.Errorf("init containers %v", containerNames(pod.InitContainers))
	}
	for _, c := range pod.Containers {
		env := map[string]string{}
		for _, e := range c.Env {
			env[e.Name] = e.Value
		}
		mountsSecret := false
		for _, m := range c.VolumeMounts {
			mountsSecret = mountsSecret || strings.HasPrefix(m.MountPath, render.RouterCredentialDir)
		}
		if c.Name == render.ContainerRouter {
			if !mountsSecret {
				t.Error("the router does not mount the credential")
			}
			continue
		}
		if mountsSecret || env["TELEGRAM_BOT_TOKEN"] != ph || env["NODE_EXTRA_CA_CERTS"] == "" {
			t.Errorf("agent %s: secret mounted %v, env %v", c.Name, mountsSecret, env)
		}
	}

	waitBinding(t, ns, tg.Name, metav1.ConditionTrue, ReasonBound, ph)
	waitBinding(t, ns, bad.Name, metav1.ConditionFalse, ReasonCredentialInvalid, "")

	// Revocation: the binding leaves router.json.
	if err := k8s.Delete(context.Background(), tg); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "router config without the binding", func() error {
		get(t, ns, r.config.Name, &cm)
		if strings.Contains(cm.Data[routerconfig.FileName], ph) {
			return errNotYet
		}
		return nil
	})
}

func waitBinding(t *testing.T, ns, name string, status metav1.ConditionStatus, reason, placeholder string) {
	t.Helper()
	eventually(t, 20*time.Second, name+" "+reason, func() error {
		var b karsv1.CredentialBinding
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &b); err != nil {
			return err
		}
		c := meta.FindStatusCondition(b.Status.Conditions, karsv1.ConditionReady)
		if c == nil || c.Status != status || c.Reason != reason || b.Status.Placeholder != placeholder {
			return errorf("status %+v", b.Status)
		}
		return nil
	})
}
