package localsubstrate

import (
	"errors"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/runtimeenv"
	"github.com/kars-io/kars/internal/sandbox/local"
)

func TestRuntimeID(t *testing.T) {
	for image, want := range map[string]string{
		"ghcr.io/kars-io/kars-runtime-openclaw:v0.3.0":                   "openclaw",
		"127.0.0.1:16500/kars/kars-runtime-openai-agents-python3.12:dev": "openai-agents",
		"ghcr.io/kars-io/kars-runtime-langgraph-typescript@sha256:0123":  "langgraph-typescript",
		"ghcr.io/kars-io/kars-runtime-microsoft-agent-framework:v1":      "microsoft-agent-framework",
		"ghcr.io/kars-io/kars-runtime-semantic-kernel:v1":                "",
		"ghcr.io/kars-io/kars-agent:v1":                                  "",
		"myacr.azurecr.io/openclaw:latest":                               "",
		"registry.example:5000/team/kars-runtime-pydantic-ai:2026.12":    "pydantic-ai",
	} {
		if got := runtimeID(image); got != want {
			t.Errorf("runtimeID(%q) = %q, want %q", image, got, want)
		}
	}
}

// A failing preparation is reported with its reason, leaves nothing in
// the cache, notifies the waiters and is retried only after the backoff.
func TestEnvsFailureBackoff(t *testing.T) {
	root := t.TempDir()
	e := newEnvs(runtimeenv.Options{Root: root, Python: "/nonexistent/python3"})
	e.backoff, e.maxBackoff = time.Hour, 2*time.Hour
	done := make(chan struct{}, 1)
	_, err := e.get("pydantic-ai", func() { done <- struct{}{} })
	var prep *errPreparing
	if !errors.As(err, &prep) || prep.failure != nil {
		t.Fatalf("first get = %v, want preparing", err)
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("waiter not notified")
	}
	_, err = e.get("pydantic-ai", func() {})
	if !errors.As(err, &prep) || prep.failure == nil || prep.reason != runtimeenv.ReasonInvalid {
		t.Fatalf("after failure get = %v, want a RuntimeCacheInvalid failure", err)
	}
	if time.Until(prep.retryAt) < 59*time.Minute {
		t.Fatalf("retry at %s, want after the backoff", prep.retryAt)
	}
	if ents, _ := os.ReadDir(root); len(ents) > 0 {
		names := []string{}
		for _, d := range ents {
			names = append(names, d.Name())
		}
		t.Fatalf("a failed preparation left %v in the cache", names)
	}
}

// The runtime's own configuration, a ConfigMap mounted at
// render.AgentConfigDir on a cluster, lands in the workspace locally and
// the variables that name it follow.
func TestAgentConfigFiles(t *testing.T) {
	in := buildInput{desired: &render.Sandbox{RouterConfig: &corev1.ConfigMap{}},
		configMap: func(string) (*corev1.ConfigMap, error) {
			return &corev1.ConfigMap{Data: map[string]string{"openclaw.json": `{"agents":{}}`}}, nil
		}}
	p := local.Process{Env: []string{"OPENCLAW_CONFIG_PATH=" + render.AgentConfigDir + "/openclaw.json", "OTHER=x"}}
	v := corev1.Volume{Name: "agent-config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "bot-agent-config"}}}}
	if err := agentConfigFiles(in, v, &p); err != nil {
		t.Fatal(err)
	}
	if string(p.Files[".kars-agent/config/openclaw.json"]) != `{"agents":{}}` {
		t.Fatalf("files = %v", p.Files)
	}
	if p.Env[0] != "OPENCLAW_CONFIG_PATH=/sandbox/.kars-agent/config/openclaw.json" || p.Env[1] != "OTHER=x" {
		t.Fatalf("env = %v", p.Env)
	}
}
