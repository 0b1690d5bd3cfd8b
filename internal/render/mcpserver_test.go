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
			m.Spec.OAuth = &karsv1.McpOAuth{ClientID: "kars", ClientSecretRef: &karsv1.SecretKeyReference{Name: "everything-token", Key: "oauth"}}
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

// A token exchange presents the sandbox's projected ServiceAccount token
// (the audience its authorization server trusts), mounted into the router
// only; or a subject token from a Secret.
func TestRenderMcpTokenExchange(t *testing.T) {
	in := input(sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationStandard))
	sb := in.Sandbox
	ready := func(m karsv1.McpServer, endpoint string) karsv1.McpServer { m.Status.Endpoint = endpoint; return m }
	in.Bindings.MCP = McpServersFor(sb, []karsv1.McpServer{
		ready(mcpServer("jira", func(m *karsv1.McpServer) {
			m.Spec.Image, m.Spec.URL, m.Spec.AuthSecretRef = "", "https://mcp.jira.example/mcp", nil
			m.Spec.OAuth = &karsv1.McpOAuth{Grant: McpGrantTokenExchange, Scopes: []string{"read"}, Audience: "jira",
				SubjectToken: &karsv1.McpSubjectToken{ServiceAccountAudience: "https://idp.example", Type: "urn:ietf:params:oauth:token-type:jwt"}}
		}), "https://mcp.jira.example/mcp"),
		ready(mcpServer("wiki", func(m *karsv1.McpServer) {
			m.Spec.Image, m.Spec.URL, m.Spec.AuthSecretRef = "", "https://mcp.wiki.example/mcp", nil
			m.Spec.OAuth = &karsv1.McpOAuth{Grant: McpGrantTokenExchange, ClientID: "kars",
				ClientSecretRef: &karsv1.SecretKeyReference{Name: "wiki", Key: "client"},
				SubjectToken:    &karsv1.McpSubjectToken{SecretRef: &karsv1.SecretKeyReference{Name: "wiki", Key: "subject"}}}
		}), "https://mcp.wiki.example/mcp"),
	})
	out, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	want := []*routerconfig.MCPAuth{
		{Mode: routerconfig.MCPAuthOAuthTokenExchange, Scopes: []string{"read"}, Audience: "jira",
			SubjectTokenFile: "/var/run/secrets/kars/mcp-identity/jira/token", SubjectTokenType: "urn:ietf:params:oauth:token-type:jwt"},
		{Mode: routerconfig.MCPAuthOAuthTokenExchange, ClientID: "kars", ClientSecretFile: "/var/run/secrets/kars/mcp/wiki/client",
			SubjectTokenFile: "/var/run/secrets/kars/mcp/wiki/subject"},
	}
	for i, w := range want {
		if g := out.Config.MCP[i].Auth; !reflect.DeepEqual(g, w) {
			t.Fatalf("mcp[%d].auth = %+v, want %+v", i, g, w)
		}
	}
	if err := out.Config.Validate(); err != nil {
		t.Fatalf("rendered config: %v", err)
	}
	pod := out.Deployment.Spec.Template.Spec
	var projected, secret string
	for _, v := range pod.Volumes {
		switch {
		case v.Projected != nil && len(v.Projected.Sources) == 1 && v.Projected.Sources[0].ServiceAccountToken != nil &&
			v.Projected.Sources[0].ServiceAccountToken.Audience == "https://idp.example":
			projected = v.Name
		case v.Secret != nil && v.Secret.SecretName == "wiki":
			if len(v.Secret.Items) != 2 {
				t.Fatalf("the wiki Secret's keys: %+v", v.Secret.Items)
			}
			secret = v.Name
		}
	}
	if projected == "" || secret == "" {
		t.Fatalf("volumes %+v", pod.Volumes)
	}
	mounted := 0
	for _, c := range pod.Containers {
		for _, m := range c.VolumeMounts {
			if m.Name == projected {
				if c.Name != ContainerRouter || m.MountPath != "/var/run/secrets/kars/mcp-identity/jira" {
					t.Fatalf("container %s mounts the identity token at %s", c.Name, m.MountPath)
				}
				mounted++
			}
		}
	}
	if mounted != 1 || pod.ServiceAccountName == "" || pod.ServiceAccountName == "default" {
		t.Fatalf("identity token mounted %d times; pod ServiceAccount %q", mounted, pod.ServiceAccountName)
	}
}
