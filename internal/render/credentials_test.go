package render

import (
	"encoding/json"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/egress/credbind"
)

func telegramBinding(sandbox string) karsv1.CredentialBinding {
	return karsv1.CredentialBinding{ObjectMeta: metav1.ObjectMeta{Name: sandbox + "-telegram", Namespace: "kars-agent"},
		Spec: karsv1.CredentialBindingSpec{SandboxRef: karsv1.LocalObjectReference{Name: sandbox},
			SecretRef: karsv1.SecretKeyReference{Name: sandbox + "-credentials", Key: "telegram-token"},
			Endpoints: []string{"https://api.telegram.org/bot", "https://api.telegram.org/file/bot"},
			Placement: karsv1.CredentialPlacement{Type: karsv1.PlacementPath}, AgentEnv: "TELEGRAM_BOT_TOKEN"}}
}

func githubBinding(sandbox string) karsv1.CredentialBinding {
	return karsv1.CredentialBinding{ObjectMeta: metav1.ObjectMeta{Name: sandbox + "-github", Namespace: "kars-agent"},
		Spec: karsv1.CredentialBindingSpec{SandboxRef: karsv1.LocalObjectReference{Name: sandbox},
			SecretRef: karsv1.SecretKeyReference{Name: "github", Key: "token"},
			Endpoints: []string{"https://api.github.com/repos/kars-io/"},
			Placement: karsv1.CredentialPlacement{Type: karsv1.PlacementHeader, Name: "Authorization", ValuePrefix: "Bearer "}, AgentEnv: "GITHUB_TOKEN"}}
}

// The Deployment of a sandbox with a Telegram and a GitHub credential:
// the Secrets mounted into the router only, router-trust before the agent,
// the trust bundle and the placeholders in the agent's environment.
func TestGoldenCredentials(t *testing.T) {
	sb := sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationEnhanced)
	in := input(sb)
	var problems map[string]string
	in.Credentials, problems = UsableCredentials(sb, []karsv1.CredentialBinding{githubBinding("agent"), telegramBinding("agent")})
	if len(problems) != 0 || len(in.Credentials) != 2 {
		t.Fatalf("usable %d, problems %v", len(in.Credentials), problems)
	}
	out, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "credentials.yaml", toYAML(t, out.Deployment, out.NetworkPolicy))

	pod := out.Deployment.Spec.Template.Spec
	var agent, router corev1.Container
	for _, c := range pod.Containers {
		if c.Name == ContainerRouter {
			router = c
		} else {
			agent = c
		}
	}
	env := map[string]string{}
	for _, e := range agent.Env {
		env[e.Name] = e.Value
	}
	if env["TELEGRAM_BOT_TOKEN"] != credbind.Placeholder("kars-agent", "agent", "agent-telegram") {
		t.Errorf("TELEGRAM_BOT_TOKEN = %q", env["TELEGRAM_BOT_TOKEN"])
	}
	if env["SSL_CERT_FILE"] != "/etc/kars/trust/bundle.pem" || env["NODE_EXTRA_CA_CERTS"] != "/etc/kars/trust/ca.pem" || env["REQUESTS_CA_BUNDLE"] == "" {
		t.Errorf("trust env %v", env)
	}
	var listed []AgentCredential
	if err := json.Unmarshal([]byte(env[EnvCredentials]), &listed); err != nil || len(listed) != 2 || listed[0].Name != "agent-github" || listed[0].Placement.ValuePrefix != "Bearer " {
		t.Errorf("%s = %s (%v)", EnvCredentials, env[EnvCredentials], err)
	}
	// The Secrets are the router's alone.
	for _, m := range agent.VolumeMounts {
		if strings.HasPrefix(m.Name, "credential-") {
			t.Errorf("the agent mounts %s", m.Name)
		}
	}
	found := 0
	for _, m := range router.VolumeMounts {
		if strings.HasPrefix(m.MountPath, RouterCredentialDir) {
			found++
		}
	}
	if found != 2 {
		t.Errorf("router credential mounts: %d", found)
	}
	if len(pod.InitContainers) != 2 || pod.InitContainers[1].Name != ContainerRouterTrust ||
		!strings.Contains(strings.Join(pod.InitContainers[1].Args, " "), "--hosts=api.github.com,api.telegram.org") {
		t.Errorf("init containers %+v", pod.InitContainers)
	}
	if *pod.InitContainers[1].SecurityContext.RunAsUser != RouterUID {
		t.Error("router-trust must run as the router's UID")
	}
	cfg := out.Config
	if len(cfg.Credentials) != 2 || cfg.Credentials[1].ValueFile != "/var/run/secrets/kars/credentials/agent-credentials/telegram-token" {
		t.Errorf("router.json credentials %+v", cfg.Credentials)
	}
}

func TestUsableCredentials(t *testing.T) {
	sb := sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationEnhanced)
	sb.Spec.Runtime.Env = []karsv1.RuntimeEnvVar{{Name: "SEARCH_KEY", Value: "x"}}
	other := telegramBinding("someone-else")
	dupEnv := githubBinding("agent")
	dupEnv.Name = "agent-github-2"
	proxyEnv := githubBinding("agent")
	proxyEnv.Name, proxyEnv.Spec.AgentEnv = "agent-proxy", "HTTPS_PROXY"
	userEnv := githubBinding("agent")
	userEnv.Name, userEnv.Spec.AgentEnv = "agent-search", "SEARCH_KEY"
	wild := githubBinding("agent")
	wild.Name, wild.Spec.AgentEnv, wild.Spec.Endpoints = "agent-wild", "", []string{"https://*.github.com/"}
	admin := githubBinding("agent")
	admin.Name, admin.Spec.AgentEnv, admin.Spec.SecretRef.Name = "agent-admin", "", "agent-router-admin"
	usable, problems := UsableCredentials(sb, []karsv1.CredentialBinding{other, githubBinding("agent"), dupEnv, proxyEnv, userEnv, wild, admin, telegramBinding("agent")})
	if len(usable) != 2 || usable[0].Name != "agent-github" || usable[1].Name != "agent-telegram" {
		t.Errorf("usable %v", usable)
	}
	for name, want := range map[string]string{
		"someone-else-telegram": "for sandbox someone-else",
		"agent-github-2":        "agentEnv GITHUB_TOKEN is already the agentEnv of binding agent-github",
		"agent-proxy":           "a variable kars sets",
		"agent-search":          "runtime.env",
		"agent-wild":            "wildcards",
		"agent-admin":           "admin Secret",
	} {
		if !strings.Contains(problems[name], want) {
			t.Errorf("%s: problem %q, want %q", name, problems[name], want)
		}
	}
}
