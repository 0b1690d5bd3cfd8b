package localsubstrate

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kars-io/kars/internal/egress/sandboxca"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/sandbox/local"
)

// TestAgentTrustFiles: locally the trust files land in the workspace and
// every variable that named the cluster's trust volume names them there;
// other variables are left alone.
func TestAgentTrustFiles(t *testing.T) {
	p := &local.Process{Env: []string{
		"SSL_CERT_FILE=" + render.AgentTrustDir + "/" + sandboxca.AgentBundleFile,
		"NODE_EXTRA_CA_CERTS=" + render.AgentTrustDir + "/" + sandboxca.AgentCAFile,
		"HOME=/sandbox",
		"OTHER=" + render.AgentTrustDir + "x", // not under the directory
	}}
	agentTrustFiles(map[string][]byte{sandboxca.AgentBundleFile: []byte("bundle"), sandboxca.AgentCAFile: []byte("ca")}, p)
	want := []string{
		"SSL_CERT_FILE=/sandbox/.kars-agent/trust/" + sandboxca.AgentBundleFile,
		"NODE_EXTRA_CA_CERTS=/sandbox/.kars-agent/trust/" + sandboxca.AgentCAFile,
		"HOME=/sandbox",
		"OTHER=" + render.AgentTrustDir + "x",
	}
	if !slices.Equal(p.Env, want) {
		t.Errorf("env %q, want %q", p.Env, want)
	}
	if string(p.Files[".kars-agent/trust/"+sandboxca.AgentBundleFile]) != "bundle" || string(p.Files[".kars-agent/trust/"+sandboxca.AgentCAFile]) != "ca" {
		t.Errorf("files %v", p.Files)
	}
}

func TestTrustHosts(t *testing.T) {
	c := corev1.Container{Args: []string{"trust", "--state=/var/lib/kars/state", "--hosts=api.telegram.org,198.51.100.30"}}
	if got := trustHosts(c); !slices.Equal(got, []string{"api.telegram.org", "198.51.100.30"}) {
		t.Errorf("trustHosts = %q", got)
	}
	if got := trustHosts(corev1.Container{}); got != nil {
		t.Errorf("no --hosts: %q", got)
	}
}
