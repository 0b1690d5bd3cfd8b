package render

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/routerconfig"
)

// DefaultSeccompProfile is the kars-strict profile's path relative to the
// kubelet's seccomp directory (config/seccomp/kars-strict.json installed on
// every node that runs enhanced or confidential sandboxes).
const DefaultSeccompProfile = "kars-strict.json"

// ConfidentialRuntimeClass is the RuntimeClass of confidential sandboxes: a
// Kata Containers VM with its own kernel (AKS's name for it).
const ConfidentialRuntimeClass = "kata-vm-isolation"

// Environment is what rendering needs to know about the cluster and the
// installation, as opposed to the sandbox.
type Environment struct {
	Catalog Catalog
	// SystemNamespace is where the controller, the mesh and the A2A gateway
	// run; only it may reach the router's admin and A2A ports.
	SystemNamespace string
	// ClusterDNS are the resolvers the agent may query (the egress guard
	// allows port 53 to them, and the NetworkPolicy allows them too).
	ClusterDNS []netip.Addr
	// SeccompProfile is the Localhost profile of enhanced isolation;
	// empty means DefaultSeccompProfile.
	SeccompProfile string
	// StorageClass names the StorageClass of the sandbox's volume claims
	// (router state, workspace); empty means the cluster's default.
	StorageClass string
	// A2AGateway is the installation's kars-a2a-gateway.
	A2AGateway A2AGateway
	// Blocklist is where every router fetches the egress blocklist from
	// (the controller's --egress-blocklist); nil means none.
	Blocklist *routerconfig.Blocklist
	// BlocklistConfigMap, when set, is a ConfigMap in each sandbox's
	// namespace whose key is mounted into the router as a further
	// blocklist source (kubelet-updated, reread at every refresh).
	BlocklistConfigMap *ConfigMapKey
	// Mesh, when set, makes every router the agent's AgentMesh endpoint
	// on these kars-mesh endpoints (MeshEndpoints); nil leaves the mesh
	// off.
	Mesh *MeshEndpoints
}

// ConfigMapKey names one key of a ConfigMap.
type ConfigMapKey struct{ Name, Key string }

// AdminCredentials are the router's admin API credentials. The controller
// generates them once per sandbox and keeps them in the admin Secret; the
// router reads them from files only it mounts.
type AdminCredentials struct {
	Token   []byte
	CertPEM []byte
	KeyPEM  []byte
}

// Input is everything one sandbox's rendering depends on.
type Input struct {
	Sandbox   *karsv1.KarsSandbox
	Inference *karsv1.InferencePolicy
	// Tools is the referenced ToolPolicy, nil when governance is off or no
	// ToolPolicy is referenced.
	Tools *karsv1.ToolPolicy
	Admin AdminCredentials
	// Bindings are the McpServers the sandbox may use.
	Bindings Bindings
	// BYOImage is the digest-pinned image reference whose contract label
	// the controller verified; required for BYO runtimes.
	BYOImage string
	// Now decides whether an A2A exposure window is still open.
	Now time.Time
	// A2A, when set, lets spec.a2a expose the sandbox (the controller
	// checked the window's length and the gateway); nil never exposes.
	A2A *A2AInput
	// A2APeers are the verified A2AAgents the agent may call.
	A2APeers []routerconfig.A2APeer
	Env      Environment
	// Egress is the sandbox's verified allowlist and active approvals, as
	// the controller established them (docs/egress.md).
	Egress EgressInput
	// Credentials are the sandbox's usable CredentialBindings
	// (UsableCredentials), compiled into router.json, mounted into the
	// router and announced to the agent as placeholders.
	Credentials []karsv1.CredentialBinding
}

// EgressInput is the part of a sandbox's egress policy that lives outside
// its spec: the allowlist artifact after signature verification, and the
// EgressApprovals that are active.
type EgressInput struct {
	Allowlist *routerconfig.EgressAllowlist
	Approvals []routerconfig.EgressApproval
}

// Sandbox is the rendered desired state of one sandbox.
type Sandbox struct {
	Names   Names
	Runtime *Runtime
	// Config is the compiled router configuration and ConfigDigest its
	// digest, as the router will compute it.
	Config       *routerconfig.Config
	ConfigDigest string
	// A2AExposed is true while the sandbox accepts inbound A2A calls.
	A2AExposed bool
	// Bindings are the McpServers the router is given; the local
	// substrate runs the ones kars runs inside the pod.
	Bindings Bindings

	ServiceAccount *corev1.ServiceAccount
	AdminSecret    *corev1.Secret
	RouterConfig   *corev1.ConfigMap
	// AgentConfig is nil when the runtime has no configuration document.
	AgentConfig   *corev1.ConfigMap
	Service       *corev1.Service
	NetworkPolicy *networkingv1.NetworkPolicy
	// RouterState and Workspace are the sandbox's volume claims: they
	// outlive its pods, so neither an eviction nor a deleted pod resets
	// the router's audit log, budget ledger, trust or quarantine, and the
	// agent's workspace fills up (ENOSPC) instead of getting the pod
	// evicted.
	RouterState *corev1.PersistentVolumeClaim
	Workspace   *corev1.PersistentVolumeClaim
	Deployment  *appsv1.Deployment
}

// Objects returns the rendered objects in the order they should be applied:
// everything the pod references before the Deployment, so a new pod never
// waits on a missing ConfigMap or Secret.
func (s *Sandbox) Objects() []client.Object {
	objs := []client.Object{s.ServiceAccount, s.AdminSecret, s.RouterConfig}
	if s.AgentConfig != nil {
		objs = append(objs, s.AgentConfig)
	}
	return append(objs, s.RouterState, s.Workspace, s.NetworkPolicy, s.Service, s.Deployment)
}

// Render renders the sandbox. A returned *Error says what in the specs must
// change; the caller reports it and creates no workload.
func Render(in Input) (*Sandbox, error) {
	sb := in.Sandbox
	names, err := NamesFor(sb)
	if err != nil {
		return nil, fail(ReasonInvalidSpec, "%v", err)
	}
	if err := in.Env.Catalog.Validate(); err != nil {
		return nil, err
	}
	rt, err := in.Env.Catalog.Runtime(sb, in.BYOImage)
	if err != nil {
		return nil, err
	}
	cfg, err := RouterConfig(sb, in.Inference, in.Tools, in.Env.Mesh, in.Bindings, in.Credentials...)
	if err != nil {
		return nil, err
	}
	exposed := in.A2A != nil && a2aOpen(sb, in.Now)
	if exposed {
		cfg.A2A = a2aSection(in, rt)
	}
	cfg.A2APeers = in.A2APeers
	if exposed || len(in.A2APeers) > 0 {
		if err := cfg.Validate(); err != nil {
			return nil, fail(ReasonInvalidSpec, "spec.a2a compiles to a router config the router refuses: %v", err)
		}
	}
	cfgJSON, err := routerconfig.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	digest, err := routerconfig.Digest(cfg)
	if err != nil {
		return nil, err
	}
	out := &Sandbox{Names: names, Runtime: rt, Config: cfg, ConfigDigest: digest, A2AExposed: exposed, Bindings: in.Bindings}

	out.ServiceAccount = &corev1.ServiceAccount{
		TypeMeta:                     typeMeta("v1", "ServiceAccount"),
		ObjectMeta:                   meta(sb, names.Workload, "workload"),
		AutomountServiceAccountToken: ptr(false),
	}
	out.AdminSecret = &corev1.Secret{
		TypeMeta:   typeMeta("v1", "Secret"),
		ObjectMeta: meta(sb, names.RouterAdmin, "router"),
		Type:       corev1.SecretTypeOpaque,
		Data: map[string][]byte{
			AdminTokenKey: in.Admin.Token,
			AdminCertKey:  in.Admin.CertPEM,
			AdminKeyKey:   in.Admin.KeyPEM,
		},
	}
	out.RouterConfig = &corev1.ConfigMap{
		TypeMeta:   typeMeta("v1", "ConfigMap"),
		ObjectMeta: meta(sb, names.RouterConfig, "router"),
		Data:       map[string]string{routerconfig.FileName: string(cfgJSON), routerconfig.EgressStateFile: egressState(in)},
	}
	out.RouterConfig.Annotations = map[string]string{AnnotationConfigDigest: digest}
	if rt.Config != nil {
		out.AgentConfig = &corev1.ConfigMap{
			TypeMeta:   typeMeta("v1", "ConfigMap"),
			ObjectMeta: meta(sb, names.AgentConfig, "agent"),
			Data:       map[string]string{rt.ConfigFile: string(rt.Config)},
		}
	}
	out.RouterState = claim(sb, in.Env, names.RouterState, "router", RouterStateSize)
	out.Workspace = claim(sb, in.Env, names.Workspace, "workload", WorkspaceSize)
	out.NetworkPolicy = networkPolicy(in, names, out.A2AExposed)
	out.Service = service(sb, names, out.A2AExposed)
	tmpl, err := podTemplate(in, names, rt, out.A2AExposed)
	if err != nil {
		return nil, err
	}
	replicas := int32(1)
	if sb.Spec.Suspended {
		replicas = 0
	}
	out.Deployment = &appsv1.Deployment{
		TypeMeta:   typeMeta("apps/v1", "Deployment"),
		ObjectMeta: meta(sb, names.Workload, "workload"),
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: Selector(sb)},
			// One agent at a time: two routers would each hold a budget
			// ledger and could together overspend, and the agent's
			// workspace is not shared.
			Strategy:             appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			RevisionHistoryLimit: ptr(int32(3)),
			Template:             tmpl,
		},
	}
	return out, nil
}

// a2aOpen reports whether inbound A2A is enabled and its window has not
// ended.
func a2aOpen(sb *karsv1.KarsSandbox, now time.Time) bool {
	a := sb.Spec.A2A
	return a.Enabled && a.ExpiresAt != nil && now.Before(a.ExpiresAt.Time)
}

// Sizes of the sandbox's volume claims.
const (
	RouterStateSize = "1Gi"
	WorkspaceSize   = "10Gi"
)

// claim renders a ReadWriteOnce volume claim owned by the sandbox: it is
// deleted with the sandbox, never with a pod.
func claim(sb *karsv1.KarsSandbox, env Environment, name, component, size string) *corev1.PersistentVolumeClaim {
	c := &corev1.PersistentVolumeClaim{
		TypeMeta:   typeMeta("v1", "PersistentVolumeClaim"),
		ObjectMeta: meta(sb, name, component),
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
		},
	}
	if env.StorageClass != "" {
		c.Spec.StorageClassName = ptr(env.StorageClass)
	}
	return c
}

func typeMeta(apiVersion, kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: apiVersion, Kind: kind}
}

// meta returns the metadata of a rendered object: in the sandbox's
// namespace, labelled, and controlled by the sandbox so that deleting the
// sandbox garbage-collects it.
func meta(sb *karsv1.KarsSandbox, name, component string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:            name,
		Namespace:       sb.Namespace,
		Labels:          Labels(sb, component),
		OwnerReferences: []metav1.OwnerReference{OwnerReference(sb)},
	}
}

// OwnerReference is the controller reference every rendered object carries.
func OwnerReference(sb *karsv1.KarsSandbox) metav1.OwnerReference {
	return metav1.OwnerReference{
		APIVersion:         karsv1.GroupVersion.String(),
		Kind:               "KarsSandbox",
		Name:               sb.Name,
		UID:                sb.UID,
		Controller:         ptr(true),
		BlockOwnerDeletion: ptr(true),
	}
}

func ptr[T any](v T) *T { return &v }

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}
