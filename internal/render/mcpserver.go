package render

import (
	"fmt"
	"net/url"
	"path"
	"slices"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/routerconfig"
)

// McpServerUID runs the MCP servers kars runs: neither the agent's nor the
// router's UID, so that locally (where the server shares the sandbox pod's
// network namespace) the egress guard's owner rules keep the agent from
// reaching it and file modes keep it from the router's credentials.
const McpServerUID int64 = 1003

// RouterMcpDir holds the MCP servers' credentials in the router container.
const RouterMcpDir = "/var/run/secrets/kars/mcp"

// Defaults of an McpServer kars runs.
const (
	DefaultMcpPort = 8080
	DefaultMcpPath = "/mcp"
)

// McpEndpointInCluster is where routers reach an McpServer kars runs on a
// cluster: its Service.
func McpEndpointInCluster(m *karsv1.McpServer) string {
	return fmt.Sprintf("http://%s.%s.svc:%d%s", McpServiceName(m), m.Namespace, mcpPort(m), McpPath(m))
}

// McpServiceName names the Service (and Deployment) of an McpServer kars
// runs.
func McpServiceName(m *karsv1.McpServer) string { return "mcp-" + m.Name }

// McpPath is the MCP endpoint path of a server kars runs.
func McpPath(m *karsv1.McpServer) string {
	if m.Spec.Path == "" {
		return DefaultMcpPath
	}
	return m.Spec.Path
}

func mcpPort(m *karsv1.McpServer) int32 {
	if m.Spec.Port == 0 {
		return DefaultMcpPort
	}
	return m.Spec.Port
}

// McpEnv is the environment of a server kars runs: its spec's, with PORT
// set to its port unless the spec sets it.
func McpEnv(m *karsv1.McpServer) []corev1.EnvVar {
	var env []corev1.EnvVar
	port := true
	for _, e := range m.Spec.Env {
		env = append(env, corev1.EnvVar{Name: e.Name, Value: e.Value})
		if e.Name == "PORT" {
			port = false
		}
	}
	if port {
		env = append(env, corev1.EnvVar{Name: "PORT", Value: strconv.Itoa(int(mcpPort(m)))})
	}
	return env
}

// McpWorkload is what kars runs on a cluster for an McpServer with an
// image: a Deployment hardened like the router (non-root UID, read-only
// root, no capabilities, no ServiceAccount token, runtime-default seccomp),
// its Service, and a NetworkPolicy that admits only the routers of the
// sandboxes the McpServer lists.
type McpWorkload struct {
	Deployment    *appsv1.Deployment
	Service       *corev1.Service
	NetworkPolicy *networkingv1.NetworkPolicy
}

// RenderMcpServer renders the workload of an McpServer that has an image.
// A server speaking stdio cannot be reached over the network and is
// refused (the gateway speaks HTTP to servers).
func RenderMcpServer(m *karsv1.McpServer) (*McpWorkload, error) {
	if m.Spec.Image == "" {
		return nil, fmt.Errorf("McpServer %s has no image: kars runs nothing for it", m.Name)
	}
	if m.Spec.Transport == "stdio" {
		return nil, fail(ReasonInvalidSpec, "McpServer %s speaks stdio, which the router's gateway cannot reach; run it with transport streamable-http", m.Name)
	}
	name := McpServiceName(m)
	labels := map[string]string{LabelName: "kars-mcp-server", LabelInstance: m.Name, LabelComponent: "mcp-server",
		LabelPartOf: "kars", LabelManagedBy: ManagedBy}
	selector := map[string]string{LabelName: "kars-mcp-server", LabelInstance: m.Name}
	om := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: m.Namespace, Labels: labels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: karsv1.GroupVersion.String(), Kind: "McpServer", Name: m.Name, UID: m.UID,
				Controller: ptr(true), BlockOwnerDeletion: ptr(true)}}}
	}
	port := mcpPort(m)
	c := corev1.Container{
		Name:            "mcp-server",
		Image:           m.Spec.Image,
		Command:         slices.Clone(m.Spec.Command),
		Args:            slices.Clone(m.Spec.Args),
		Env:             McpEnv(m),
		Ports:           []corev1.ContainerPort{{Name: "mcp", ContainerPort: port, Protocol: corev1.ProtocolTCP}},
		SecurityContext: restricted(McpServerUID, runtimeDefault()),
		Resources:       resources("50m", "64Mi", "512Mi"),
		VolumeMounts:    []corev1.VolumeMount{{Name: "tmp", MountPath: "/tmp"}},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("mcp")}},
			PeriodSeconds: 5, TimeoutSeconds: 2},
	}
	replicas := int32(1)
	w := &McpWorkload{
		Deployment: &appsv1.Deployment{
			TypeMeta:   typeMeta("apps/v1", "Deployment"),
			ObjectMeta: om(),
			Spec: appsv1.DeploymentSpec{
				Replicas:             &replicas,
				Selector:             &metav1.LabelSelector{MatchLabels: selector},
				RevisionHistoryLimit: ptr(int32(3)),
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						AutomountServiceAccountToken: ptr(false),
						EnableServiceLinks:           ptr(false),
						SecurityContext:              &corev1.PodSecurityContext{SeccompProfile: runtimeDefault()},
						Containers:                   []corev1.Container{c},
						Volumes: []corev1.Volume{{Name: "tmp", VolumeSource: corev1.VolumeSource{
							EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: ptr(resource.MustParse("64Mi"))}}}},
					},
				},
			},
		},
		Service: &corev1.Service{
			TypeMeta:   typeMeta("v1", "Service"),
			ObjectMeta: om(),
			Spec: corev1.ServiceSpec{
				Selector: selector,
				Ports:    []corev1.ServicePort{{Name: "mcp", Port: port, TargetPort: intstr.FromString("mcp"), Protocol: corev1.ProtocolTCP}},
			},
		},
	}
	tcp := corev1.ProtocolTCP
	var from []networkingv1.NetworkPolicyPeer
	for _, sb := range slices.Sorted(slices.Values(m.Spec.Sandboxes)) {
		from = append(from, networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{
			MatchLabels: map[string]string{LabelSandbox: sb, LabelName: "kars-sandbox"}}})
	}
	ingress := []networkingv1.NetworkPolicyIngressRule{}
	if len(from) > 0 {
		ingress = append(ingress, networkingv1.NetworkPolicyIngressRule{From: from,
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: ptr(intstr.FromInt32(port))}}})
	}
	w.NetworkPolicy = &networkingv1.NetworkPolicy{
		TypeMeta:   typeMeta("networking.k8s.io/v1", "NetworkPolicy"),
		ObjectMeta: om(),
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: selector},
			// Ingress only from the listed sandboxes' pods (the router is
			// the one that connects; the egress guard keeps the agent in
			// them on loopback). Egress is the server's business.
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress:     ingress,
		},
	}
	return w, nil
}

// McpServersFor returns the McpServers of servers that sb may use — those
// in its namespace that list it and report an endpoint — sorted by name.
func McpServersFor(sb *karsv1.KarsSandbox, servers []karsv1.McpServer) []karsv1.McpServer {
	var out []karsv1.McpServer
	for _, m := range servers {
		if m.Namespace == sb.Namespace && m.Status.Endpoint != "" && slices.Contains(m.Spec.Sandboxes, sb.Name) &&
			m.DeletionTimestamp.IsZero() {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b karsv1.McpServer) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// mcpConfig compiles the gateway's servers. Credentials are files in the
// router container (mcpSecrets mounts them).
func mcpConfig(servers []karsv1.McpServer) []routerconfig.MCPServer {
	var out []routerconfig.MCPServer
	for _, m := range servers {
		s := routerconfig.MCPServer{Name: m.Name, URL: m.Status.Endpoint, Tools: slices.Clone(m.Spec.Tools)}
		if m.Spec.Transport == "sse" {
			s.Transport = "sse"
		}
		switch {
		case m.Spec.AuthSecretRef != nil:
			s.Auth = &routerconfig.MCPAuth{Mode: routerconfig.MCPAuthBearer, TokenFile: mcpSecretFile(*m.Spec.AuthSecretRef)}
		case m.Spec.OAuth != nil:
			o := m.Spec.OAuth
			a := &routerconfig.MCPAuth{Mode: routerconfig.MCPAuthOAuthClientCredentials, ClientID: o.ClientID,
				TokenURL: o.TokenURL, Scopes: slices.Clone(o.Scopes), Resource: o.Resource}
			if o.ClientSecretRef != nil {
				a.ClientSecretFile = mcpSecretFile(*o.ClientSecretRef)
			}
			if o.Grant == McpGrantTokenExchange && o.SubjectToken != nil {
				a.Mode, a.Audience, a.SubjectTokenType = routerconfig.MCPAuthOAuthTokenExchange, o.Audience, o.SubjectToken.Type
				if ref := o.SubjectToken.SecretRef; ref != nil {
					a.SubjectTokenFile = mcpSecretFile(*ref)
				} else {
					a.SubjectTokenFile = McpIdentityTokenFile(m.Name)
				}
			}
			s.Auth = a
		}
		out = append(out, s)
	}
	return out
}

func mcpSecretFile(ref karsv1.SecretKeyReference) string {
	return path.Join(RouterMcpDir, ref.Name, ref.Key)
}

// mcpSecret is one Secret the router mounts for its MCP servers, with the
// keys it needs from it.
type mcpSecret struct {
	name string
	keys []string
}

// mcpSecrets lists the Secrets the router must mount for its MCP servers,
// one volume each (a directory mount, so that a rotated Secret reaches
// the router), in first-use order.
func mcpSecrets(servers []karsv1.McpServer) []mcpSecret {
	var out []mcpSecret
	for _, m := range servers {
		var refs []*karsv1.SecretKeyReference
		switch {
		case m.Spec.AuthSecretRef != nil:
			refs = append(refs, m.Spec.AuthSecretRef)
		case m.Spec.OAuth != nil:
			refs = append(refs, m.Spec.OAuth.ClientSecretRef)
			if st := m.Spec.OAuth.SubjectToken; st != nil && m.Spec.OAuth.Grant == McpGrantTokenExchange {
				refs = append(refs, st.SecretRef)
			}
		}
		for _, ref := range refs {
			if ref == nil {
				continue
			}
			i := slices.IndexFunc(out, func(s mcpSecret) bool { return s.name == ref.Name })
			if i < 0 {
				out = append(out, mcpSecret{name: ref.Name})
				i = len(out) - 1
			}
			if !slices.Contains(out[i].keys, ref.Key) {
				out[i].keys = append(out[i].keys, ref.Key)
			}
		}
	}
	return out
}

// McpGrantTokenExchange is the McpOAuth grant of an RFC 8693 token
// exchange.
const McpGrantTokenExchange = "TokenExchange"

// RouterMcpIdentityDir holds, in the router container only, one folder
// per McpServer whose token exchange presents the sandbox's projected
// ServiceAccount token, with the token (audience the McpServer's
// serviceAccountAudience) in the file "token".
const RouterMcpIdentityDir = "/var/run/secrets/kars/mcp-identity"

// McpIdentityTokenFile is where the router reads the projected
// ServiceAccount token it exchanges for the named McpServer.
func McpIdentityTokenFile(server string) string {
	return path.Join(RouterMcpIdentityDir, server, "token")
}

// mcpIdentity is one projected ServiceAccount token for a token exchange.
type mcpIdentity struct {
	server, audience string
}

// mcpIdentities lists the projected ServiceAccount tokens the router needs
// for its MCP servers' token exchanges: one per server, since each
// authorization server trusts its own audience.
func mcpIdentities(servers []karsv1.McpServer) []mcpIdentity {
	var out []mcpIdentity
	for _, m := range servers {
		o := m.Spec.OAuth
		if o == nil || o.Grant != McpGrantTokenExchange || o.SubjectToken == nil || o.SubjectToken.ServiceAccountAudience == "" {
			continue
		}
		out = append(out, mcpIdentity{server: m.Name, audience: o.SubjectToken.ServiceAccountAudience})
	}
	return out
}

// mcpPorts are the ports of the MCP endpoints the router calls, for the
// sandbox's NetworkPolicy.
func mcpPorts(servers []karsv1.McpServer) []int32 {
	var out []int32
	for _, m := range servers {
		if p := urlPort(m.Status.Endpoint); p != 0 {
			out = append(out, p)
		} else if u, err := url.Parse(m.Status.Endpoint); err == nil && u.Scheme == "http" {
			out = append(out, 80)
		} else {
			out = append(out, 443)
		}
	}
	return out
}
