package render

import (
	"reflect"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/routerconfig"
)

func mcpServer(name string, mutate func(*karsv1.McpServer)) karsv1.McpServer {
	m := karsv1.McpServer{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kars-agent", UID: "0f5c-mcp"},
		Spec: karsv1.McpServerSpec{Image: "ghcr.io/example/mcp-everything:2026.8.31", Command: []string{"node", "dist/index.js"},
			Args: []string{"streamableHttp"}, Transport: "streamable-http", Port: 3001, Path: "/mcp",
			Sandboxes: []string{"agent"}, Tools: []string{"echo", "get-sum"},
			AuthSecretRef: &karsv1.SecretKeyReference{Name: "everything-token", Key: "token"}},
	}
	if mutate != nil {
		mutate(&m)
	}
	return m
}

func TestGoldenMcpServer(t *testing.T) {
	m := mcpServer("everything", nil)
	w, err := RenderMcpServer(&m)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "mcpserver.yaml", toYAML(t, w.Deployment, w.Service, w.NetworkPolicy))
	if got := McpEndpointInCluster(&m); got != "http://mcp-everything.kars-agent.svc:3001/mcp" {
		t.Fatalf("endpoint %s", got)
	}
	m.Spec.Transport = "stdio"
	if _, err := RenderMcpServer(&m); ReasonOf(err) != ReasonInvalidSpec {
		t.Fatalf("stdio server: %v", err)
	}
}

// The sandbox's router gets the McpServers that list it and report an
// endpoint; their credentials are mounted into the router container only,
// a directory per Secret, and the NetworkPolicy lets the router reach
// their ports.
func TestRenderWithMcpServers(t *testing.T) {
	in := input(sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationStandard))
	sb := in.Sandbox
	ready := func(m karsv1.McpServer, endpoint string) karsv1.McpServer { m.Status.Endpoint = endpoint; return m }
	all := []karsv1.McpServer{
		ready(mcpServer("everything", nil), "http://mcp-everything.kars-agent.svc:3001/mcp"),
		ready(mcpServer("github", func(m *karsv1.McpServer) {
			m.Spec.Image, m.Spec.URL, m.Spec.AuthSecretRef = "", "https://mcp.github.example/mcp", nil
			m.Spec.OAuth = &karsv1.McpOAuth{ClientID: "kars", ClientSecretRef: karsv1.SecretKeyReference{Name: "everything-token", Key: "oauth"}}
		}), "https://mcp.github.example/mcp"),
		ready(mcpServer("other-sandbox", func(m *karsv1.McpServer) { m.Spec.Sandboxes = []string{"someone-else"} }), "http://x:1/mcp"),
		mcpServer("not-ready", nil),
	}
	in.Bindings.MCP = McpServersFor(sb, all)
	out, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	want := []routerconfig.MCPServer{
		{Name: "everything", URL: "http://mcp-everything.kars-agent.svc:3001/mcp", Tools: []string{"echo", "get-sum"},
			Auth: &routerconfig.MCPAuth{Mode: routerconfig.MCPAuthBearer, TokenFile: "/var/run/secrets/kars/mcp/everything-token/token"}},
		{Name: "github", URL: "https://mcp.github.example/mcp", Tools: []string{"echo", "get-sum"},
			Auth: &routerconfig.MCPAuth{Mode: routerconfig.MCPAuthOAuthClientCredentials, ClientID: "kars", ClientSecretFile: "/var/run/secrets/kars/mcp/everything-token/oauth"}},
	}
	if len(out.Config.MCP) != 2 {
		t.Fatalf("router config mcp: %+v", out.Config.MCP)
	}
	for i := range want {
		g, w := out.Config.MCP[i], want[i]
		if g.Name != w.Name || g.URL != w.URL || !reflect.DeepEqual(g.Auth, w.Auth) {
			t.Fatalf("mcp[%d] = %+v %+v, want %+v %+v", i, g, g.Auth, w, w.Auth)
		}
	}
	pod := out.Deployment.Spec.Template.Spec
	var vol *string
	for _, v := range pod.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "everything-token" {
			if len(v.Secret.Items) != 2 {
				t.Fatalf("one volume for both keys, got %+v", v.Secret.Items)
			}
			vol = &v.Name
		}
	}
	if vol == nil {
		t.Fatal("no volume for the MCP Secret")
	}
	for _, c := range pod.Containers {
		for _, m := range c.VolumeMounts {
			if m.Name == *vol && (c.Name != ContainerRouter || m.MountPath != "/var/run/secrets/kars/mcp/everything-token" || m.SubPath != "") {
				t.Fatalf("container %s mounts the MCP Secret at %s (subPath %q)", c.Name, m.MountPath, m.SubPath)
			}
		}
	}
	ports := map[int32]bool{}
	for _, r := range out.NetworkPolicy.Spec.Egress {
		for _, p := range r.Ports {
			ports[p.Port.IntVal] = true
		}
	}
	if !ports[3001] || !ports[443] {
		t.Fatalf("egress ports %v lack the MCP servers'", ports)
	}
}
