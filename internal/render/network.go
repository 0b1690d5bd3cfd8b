package render

import (
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// metadataCIDR is the cloud instance-metadata endpoint. Reaching it would
// hand out the node's identity, so it is carved out of every egress rule
// unless the router itself needs it for a managed identity.
const metadataCIDR = "169.254.169.254/32"

// networkPolicy is the pod-level safety net under the egress guard and the
// router: deny everything both ways, then allow DNS, the router's upstreams
// on their ports, the mesh in the system namespace, and ingress from the
// system namespace to the router's admin port and, while the sandbox is
// exposed, from the A2A gateway's pods to its A2A port.
//
// A NetworkPolicy cannot tell the agent's packets from the router's; the
// egress guard (UID owner rules) is what keeps the agent on loopback. It
// cannot match host names either, so upstream hosts are allowed by port.
func networkPolicy(in Input, names Names, a2a bool) *networkingv1.NetworkPolicy {
	sb := in.Sandbox
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	port := func(proto corev1.Protocol, p int32) networkingv1.NetworkPolicyPort {
		return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: ptr(intstr.FromInt32(p))}
	}
	system := &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: in.Env.SystemNamespace}}

	ingress := []networkingv1.NetworkPolicyIngressRule{{
		From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: system}},
		Ports: []networkingv1.NetworkPolicyPort{port(tcp, RouterAdminPort)},
	}}
	if a2a {
		// The A2A port admits the gateway's pods only, not the whole
		// system namespace.
		ingress = append(ingress, networkingv1.NetworkPolicyIngressRule{
			From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: system, PodSelector: &metav1.LabelSelector{MatchLabels: in.Env.A2AGateway.podLabels()}}},
			Ports: []networkingv1.NetworkPolicyPort{port(tcp, RouterA2APort)},
		})
	}

	dnsPeers := []networkingv1.NetworkPolicyPeer{{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: "kube-system"}},
		PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "kube-dns"}},
	}}
	for _, a := range in.Env.ClusterDNS {
		dnsPeers = append(dnsPeers, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: netip.PrefixFrom(a, a.BitLen()).String()}})
	}
	egress := []networkingv1.NetworkPolicyEgressRule{
		{To: dnsPeers, Ports: []networkingv1.NetworkPolicyPort{port(udp, 53), port(tcp, 53)}},
		{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: system}}, Ports: []networkingv1.NetworkPolicyPort{port(tcp, MeshRegistryPort), port(tcp, MeshRelayPort)}},
	}
	if ports, all := upstreamPorts(in); all || len(ports) > 0 {
		rule := networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{
			{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0", Except: []string{metadataCIDR}}},
			{IPBlock: &networkingv1.IPBlock{CIDR: "::/0"}},
		}}
		if !all {
			for _, p := range ports {
				rule.Ports = append(rule.Ports, port(tcp, p))
			}
		} else {
			// Learn mode, or an entry for any port: the router decides
			// the port, so the net under it cannot.
			rule.Ports = []networkingv1.NetworkPolicyPort{{Protocol: &tcp}}
		}
		egress = append(egress, rule)
	}
	if usesAuth(in.Inference, karsv1.AuthManagedIdentity) {
		// Managed identity tokens come from the instance metadata service
		// on port 80; the egress guard still blocks it for the agent.
		egress = append(egress, networkingv1.NetworkPolicyEgressRule{
			To:    []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: metadataCIDR}}},
			Ports: []networkingv1.NetworkPolicyPort{port(tcp, 80)},
		})
	}
	return &networkingv1.NetworkPolicy{
		TypeMeta:   typeMeta("networking.k8s.io/v1", "NetworkPolicy"),
		ObjectMeta: meta(sb, names.Workload, "network"),
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: Selector(sb)},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress:     ingress,
			Egress:      egress,
		},
	}
}

// upstreamPorts are the TCP ports the router (or the git fetcher) needs
// outside the cluster, sorted: each model endpoint's port (443 for the
// public providers, none for Offline), the egress lists' ports
// (egressPorts), the numeric ports of allow rules on egress actions
// ("egress:host:port"), the git repository's port, each registered
// A2A peer's port (a2a:call:<agent>) and the credential bindings'
// endpoints' ports. all reports that
// the router needs every port (Learn mode).
func upstreamPorts(in Input) ([]int32, bool) {
	set := map[int32]bool{}
	eports, all := egressPorts(in)
	for _, p := range eports {
		set[p] = true
	}
	for _, t := range targets(in.Inference) {
		switch {
		case t.Provider == karsv1.ProviderOffline:
		case t.Endpoint != "":
			if p := urlPort(t.Endpoint); p != 0 {
				set[p] = true
			}
		default:
			set[443] = true
		}
	}
	if tp := in.Tools; tp != nil {
		for _, r := range tp.Spec.Rules {
			if r.Effect != karsv1.EffectAllow {
				continue
			}
			for _, a := range r.Actions {
				if p := egressActionPort(a); p != 0 {
					set[p] = true
				}
			}
		}
	}
	if code := agentCodeOf(in.Sandbox.Spec.Runtime); code != nil && code.Git != nil {
		set[gitPort(code.Git.URL)] = true
	}
	for _, p := range mcpPorts(in.Bindings.MCP) {
		set[p] = true
	}
	if m := in.Bindings.Memory; m != nil {
		if p := urlPort(m.Spec.Foundry.Endpoint); p != 0 {
			set[p] = true
		} else {
			set[443] = true
		}
	}
	for _, p := range in.A2APeers {
		if port := urlPort(p.Endpoint); port != 0 {
			set[port] = true
		} else {
			set[443] = true
		}
	}
	for _, b := range in.Credentials {
		for _, e := range b.Spec.Endpoints {
			if p := urlPort(e); p != 0 {
				set[p] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(set)), all
}

// egressActionPort returns the port of "egress:<host>:<port>" when it is a
// number, else 0 (a glob port cannot be turned into a NetworkPolicy port).
func egressActionPort(action string) int32 {
	rest, ok := strings.CutPrefix(action, "egress:")
	if !ok {
		return 0
	}
	i := strings.LastIndexByte(rest, ':')
	if i < 0 {
		return 0
	}
	n, err := strconv.ParseUint(rest[i+1:], 10, 16)
	if err != nil || n == 0 {
		return 0
	}
	return int32(n)
}

func gitPort(u string) int32 {
	if strings.HasPrefix(u, "git@") {
		return 22
	}
	if p := urlPort(u); p != 0 {
		return p
	}
	if strings.HasPrefix(u, "ssh://") {
		return 22
	}
	return 443
}

// agentCodeOf returns the agentCode of whichever runtime block is set.
func agentCodeOf(rs karsv1.RuntimeSpec) *karsv1.AgentCode {
	switch {
	case rs.OpenAIAgents != nil:
		return rs.OpenAIAgents.AgentCode
	case rs.MicrosoftAgentFramework != nil:
		return rs.MicrosoftAgentFramework.AgentCode
	case rs.LangGraph != nil:
		return rs.LangGraph.AgentCode
	case rs.Anthropic != nil:
		return rs.Anthropic.AgentCode
	case rs.PydanticAi != nil:
		return rs.PydanticAi.AgentCode
	case rs.SemanticKernel != nil:
		return rs.SemanticKernel.AgentCode
	}
	return nil
}

// service is the router's headless Service: the controller (admin API),
// the mesh and the A2A gateway reach the router through it. Headless,
// because every sandbox has one and a cluster IP each would exhaust small
// service ranges for no benefit (there is only ever one pod behind it).
func service(sb *karsv1.KarsSandbox, names Names, a2a bool) *corev1.Service {
	ports := []corev1.ServicePort{{Name: "admin", Port: RouterAdminPort, TargetPort: intstr.FromString("admin"), Protocol: corev1.ProtocolTCP}}
	if a2a {
		ports = append(ports, corev1.ServicePort{Name: "a2a", Port: RouterA2APort, TargetPort: intstr.FromString("a2a"), Protocol: corev1.ProtocolTCP})
	}
	return &corev1.Service{
		TypeMeta:   typeMeta("v1", "Service"),
		ObjectMeta: meta(sb, names.RouterService, "router"),
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			ClusterIP: corev1.ClusterIPNone,
			Selector:  Selector(sb),
			Ports:     ports,
		},
	}
}

func intOrString(name string) intstr.IntOrString { return intstr.FromString(name) }
