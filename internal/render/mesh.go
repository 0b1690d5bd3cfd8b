package render

import (
	"fmt"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/routerconfig"
)

// MeshEndpoints locate kars-mesh for the routers.
type MeshEndpoints struct {
	// Registry is the registry's base URL, Relay the relay's WebSocket
	// URL.
	Registry, Relay string
}

// MeshName names kars-mesh's objects in the system namespace.
const MeshName = "kars-mesh"

// ClusterMesh returns the endpoints of the kars-mesh Service rendered by
// MeshSystem in the system namespace.
func ClusterMesh(systemNamespace string) *MeshEndpoints {
	host := MeshName + "." + systemNamespace + ".svc"
	return &MeshEndpoints{
		Registry: fmt.Sprintf("http://%s:%d", host, MeshRegistryPort),
		Relay:    fmt.Sprintf("ws://%s:%d/ws", host, MeshRelayPort),
	}
}

// DefaultTrustThreshold is the trust score a mesh peer needs when the
// sandbox does not say (the CRD's default too): trust gating is on by
// default, with no accept-all setting.
const DefaultTrustThreshold = 500

// meshConfig is the router's mesh section: the endpoints and the
// sandbox's trust threshold and registry mode.
func meshConfig(sb *karsv1.KarsSandbox, m *MeshEndpoints) *routerconfig.Mesh {
	if m == nil {
		return nil
	}
	g := sb.Spec.Governance
	th := DefaultTrustThreshold
	if g.TrustThreshold != nil {
		th = int(*g.TrustThreshold)
	}
	mode := string(g.RegistryMode)
	if mode == "" {
		mode = "local"
	}
	return &routerconfig.Mesh{Registry: m.Registry, Relay: m.Relay, TrustThreshold: th, RegistryMode: mode}
}

// MeshSystemInput is what kars-mesh's rendering depends on.
type MeshSystemInput struct {
	Env Environment
	// StateSize is the journal volume's size; empty means 5Gi.
	StateSize string
	// FederationPort, when positive, also exposes the relay-to-relay
	// federation listener (mutual TLS) on this port.
	FederationPort int32
	// FederationSecret names the Secret holding the federation TLS
	// certificate, key and the peers' CA (tls.crt, tls.key, ca.crt).
	FederationSecret string
	// FederationPeers are the meshes to dial, "name=wss://host:port/federation".
	FederationPeers []string
	// Redeem lets kars-mesh redeem pairing tokens: it gets a
	// ServiceAccount token and the RBAC to bind KarsPairings (their
	// status) and to read the pairing key's public half, nothing more.
	Redeem bool
}

// MeshSystem renders kars-mesh into the system namespace: a
// ServiceAccount without a token, a volume claim for its journals, a
// one-replica Deployment (the journals are single-writer: Recreate, never
// two at once), a Service with the registry and relay ports, and a
// NetworkPolicy that lets only sandbox pods (and, with federation, the
// federation port from anywhere) in.
func MeshSystem(in MeshSystemInput) ([]client.Object, error) {
	env := in.Env
	if env.SystemNamespace == "" {
		return nil, fmt.Errorf("render: kars-mesh needs the system namespace")
	}
	if err := env.Catalog.Validate(); err != nil {
		return nil, err
	}
	size := in.StateSize
	if size == "" {
		size = "5Gi"
	}
	q, err := resource.ParseQuantity(size)
	if err != nil {
		return nil, fmt.Errorf("render: kars-mesh state size %q: %w", size, err)
	}
	labels := map[string]string{LabelName: MeshName, LabelPartOf: "kars", LabelManagedBy: ManagedBy}
	selector := map[string]string{LabelName: MeshName}
	om := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: MeshName, Namespace: env.SystemNamespace, Labels: labels}
	}
	const uid int64 = 65532
	args := []string{
		"-state=/var/lib/kars-mesh",
		"-registry-listen=:" + strconv.Itoa(int(MeshRegistryPort)),
		"-relay-listen=:" + strconv.Itoa(int(MeshRelayPort)),
	}
	ports := []corev1.ContainerPort{
		{Name: "registry", ContainerPort: MeshRegistryPort, Protocol: corev1.ProtocolTCP},
		{Name: "relay", ContainerPort: MeshRelayPort, Protocol: corev1.ProtocolTCP},
	}
	svcPorts := []corev1.ServicePort{
		{Name: "registry", Port: MeshRegistryPort, TargetPort: intstr.FromString("registry"), Protocol: corev1.ProtocolTCP},
		{Name: "relay", Port: MeshRelayPort, TargetPort: intstr.FromString("relay"), Protocol: corev1.ProtocolTCP},
	}
	volumes := []corev1.Volume{{Name: "state", VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: MeshName}}}}
	mounts := []corev1.VolumeMount{{Name: "state", MountPath: "/var/lib/kars-mesh"}}
	if in.FederationPort > 0 {
		if in.FederationSecret == "" {
			return nil, fmt.Errorf("render: kars-mesh federation needs a TLS Secret")
		}
		args = append(args, "-federation-listen=:"+strconv.Itoa(int(in.FederationPort)),
			"-federation-cert=/var/run/secrets/kars-mesh/federation/tls.crt",
			"-federation-key=/var/run/secrets/kars-mesh/federation/tls.key",
			"-federation-ca=/var/run/secrets/kars-mesh/federation/ca.crt")
		ports = append(ports, corev1.ContainerPort{Name: "federation", ContainerPort: in.FederationPort, Protocol: corev1.ProtocolTCP})
		svcPorts = append(svcPorts, corev1.ServicePort{Name: "federation", Port: in.FederationPort, TargetPort: intstr.FromString("federation"), Protocol: corev1.ProtocolTCP})
		volumes = append(volumes, corev1.Volume{Name: "federation", VolumeSource: corev1.VolumeSource{
			Secret: &corev1.SecretVolumeSource{SecretName: in.FederationSecret, DefaultMode: ptr(int32(0o400))}}})
		mounts = append(mounts, corev1.VolumeMount{Name: "federation", MountPath: "/var/run/secrets/kars-mesh/federation", ReadOnly: true})
		for _, p := range in.FederationPeers {
			args = append(args, "-federation-peer="+p)
		}
	}
	if in.Redeem {
		args = append(args, "-redeem", "-system-namespace="+env.SystemNamespace)
	}
	sa := &corev1.ServiceAccount{TypeMeta: typeMeta("v1", "ServiceAccount"), ObjectMeta: om(),
		AutomountServiceAccountToken: ptr(in.Redeem)}
	pvc := &corev1.PersistentVolumeClaim{TypeMeta: typeMeta("v1", "PersistentVolumeClaim"), ObjectMeta: om(),
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: q}},
		}}
	if env.StorageClass != "" {
		pvc.Spec.StorageClassName = ptr(env.StorageClass)
	}
	probe := func(path, port string) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString(port)}},
			PeriodSeconds: 10}
	}
	sc := restricted(uid, runtimeDefault())
	dep := &appsv1.Deployment{TypeMeta: typeMeta("apps/v1", "Deployment"), ObjectMeta: om(),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: selector},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName:           MeshName,
					AutomountServiceAccountToken: ptr(in.Redeem),
					SecurityContext:              &corev1.PodSecurityContext{FSGroup: ptr(uid), RunAsNonRoot: ptr(true), SeccompProfile: runtimeDefault()},
					Containers: []corev1.Container{{
						Name: MeshName, Image: env.Catalog.Image(MeshName), Args: args, Ports: ports,
						SecurityContext: sc, VolumeMounts: mounts,
						Resources:      resources("100m", "64Mi", "1536Mi"),
						ReadinessProbe: probe("/health", "registry"),
						LivenessProbe:  probe("/health", "registry"),
					}},
					Volumes: volumes,
				},
			},
		}}
	svc := &corev1.Service{TypeMeta: typeMeta("v1", "Service"), ObjectMeta: om(),
		Spec: corev1.ServiceSpec{Selector: selector, Ports: svcPorts}}
	tcp := corev1.ProtocolTCP
	np := &networkingv1.NetworkPolicy{TypeMeta: typeMeta("networking.k8s.io/v1", "NetworkPolicy"), ObjectMeta: om(),
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: selector},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				// Routers of every sandbox (and port-forwards, which
				// NetworkPolicy does not see) reach registry and relay.
				From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{},
					PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelName: "kars-sandbox"}}}},
				Ports: []networkingv1.NetworkPolicyPort{
					{Protocol: &tcp, Port: ptr(intstr.FromInt32(MeshRegistryPort))},
					{Protocol: &tcp, Port: ptr(intstr.FromInt32(MeshRelayPort))},
				},
			}},
		}}
	if in.FederationPort > 0 {
		// Peer relays authenticate with mutual TLS; the port is open to
		// the network, the certificate is the gate.
		np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: ptr(intstr.FromInt32(in.FederationPort))}}})
	}
	objs := []client.Object{sa, pvc, dep, svc, np}
	if in.Redeem {
		objs = append(objs, meshRBAC(env.SystemNamespace, labels)...)
	}
	return objs, nil
}

// meshRBAC lets kars-mesh redeem tokens: find KarsPairings by their
// token-hash label and bind one through its status (optimistic
// concurrency on the status subresource), and read the pairing key's
// public half. It can neither create pairings nor read any Secret.
func meshRBAC(ns string, labels map[string]string) []client.Object {
	cr := &rbacv1.ClusterRole{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "ClusterRole"),
		ObjectMeta: metav1.ObjectMeta{Name: MeshName, Labels: labels},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{karsv1.GroupVersion.Group}, Resources: []string{"karspairings"}, Verbs: []string{"get", "list"}},
			{APIGroups: []string{karsv1.GroupVersion.Group}, Resources: []string{"karspairings/status"}, Verbs: []string{"get", "update"}},
		}}
	crb := &rbacv1.ClusterRoleBinding{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
		ObjectMeta: metav1.ObjectMeta{Name: MeshName, Labels: labels},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: MeshName},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: MeshName, Namespace: ns}}}
	role := &rbacv1.Role{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "Role"),
		ObjectMeta: metav1.ObjectMeta{Name: MeshName, Namespace: ns, Labels: labels},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{PairingKeyName}, Verbs: []string{"get"}}}}
	rb := &rbacv1.RoleBinding{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "RoleBinding"),
		ObjectMeta: metav1.ObjectMeta{Name: MeshName, Namespace: ns, Labels: labels},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: MeshName},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: MeshName, Namespace: ns}}}
	return []client.Object{cr, crb, role, rb}
}

// PairingKeyName is the pairing key's Secret and ConfigMap in the system
// namespace (internal/pairing/apiserver.KeyName).
const PairingKeyName = "kars-pairing-key"

// FederationName names the federation Secret (tls.crt, tls.key, ca.crt)
// and ConfigMap (data "peers": one name=url per line) in the system
// namespace that `kars mesh peer enable` writes.
const FederationName = "kars-mesh-federation"

// FederationPort is kars-mesh's federation listener.
const FederationPort int32 = 18766
