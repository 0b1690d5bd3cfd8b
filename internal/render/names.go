package render

import (
	"fmt"

	"k8s.io/apimachinery/pkg/util/validation"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// The sandbox contract (DESIGN.md): the agent and the router never share a
// UID, and the agent reaches the outside only through the router on
// loopback.
const (
	AgentUID     int64 = 1000
	RouterUID    int64 = 1001
	AgentCodeUID int64 = 1002

	RouterAgentPort int32 = 8443
	RouterAdminPort int32 = 8444
	RouterA2APort   int32 = 8445
	// DefaultAgentPort is where first-class runtimes serve the contract's
	// chat endpoint, on loopback.
	DefaultAgentPort int32 = 18789
	// MeshRegistryPort and MeshRelayPort are the AgentMesh registry and
	// relay in the kars system namespace.
	MeshRegistryPort int32 = 18080
	MeshRelayPort    int32 = 18765
)

// Container names of the sandbox pod.
const (
	ContainerEgressGuard = "egress-guard"
	ContainerAgentCode   = "agent-code"
	ContainerRouter      = "inference-router"
)

// Paths inside the pod. The router's paths match kars-router's defaults
// (docs/router.md); the credential directories are mounted into the router
// container only.
const (
	RouterConfigDir   = "/etc/kars/router"
	RouterConfigPath  = RouterConfigDir + "/router.json"
	RouterAdminDir    = "/var/run/secrets/kars/admin"
	RouterProviderDir = "/var/run/secrets/kars/providers"
	RouterStateRoot   = "/var/lib/kars"
	RouterAuditDir    = RouterStateRoot + "/audit"
	RouterStateDir    = RouterStateRoot + "/state"
	// WorkloadIdentityTokenDir and -File follow the Azure Workload Identity
	// webhook's layout so that existing tooling recognises them; kars
	// renders the projection itself (into the router only) instead of
	// letting the webhook inject it into every container.
	WorkloadIdentityTokenDir  = "/var/run/secrets/azure/tokens"
	WorkloadIdentityTokenFile = WorkloadIdentityTokenDir + "/azure-identity-token"
	// WorkloadIdentityAudience is the audience Microsoft Entra accepts for
	// federated workload identity credentials.
	WorkloadIdentityAudience = "api://AzureADTokenExchange"

	Workspace      = "/sandbox"
	AgentCodeDir   = "/opt/kars/agent"
	AgentConfigDir = "/etc/kars/agent"
)

// Keys of the router admin Secret.
const (
	AdminTokenKey = "token"
	AdminCertKey  = "tls.crt"
	AdminKeyKey   = "tls.key"
)

// RouterCheckpointKey is the Ed25519 key (PKCS#8 PEM) the router signs its
// audit checkpoints with. The router generates it on its state volume the
// first time it starts; it never leaves the router (no Secret a tenant
// could read holds it), and the controller pins its public half in the
// sandbox's status.
const RouterCheckpointKey = RouterStateRoot + "/keys/checkpoint.key"

// Labels and annotations kars puts on what it renders.
const (
	LabelSandbox   = "kars.io/sandbox"
	LabelComponent = "app.kubernetes.io/component"
	LabelManagedBy = "app.kubernetes.io/managed-by"
	LabelPartOf    = "app.kubernetes.io/part-of"
	LabelName      = "app.kubernetes.io/name"
	LabelInstance  = "app.kubernetes.io/instance"
	// ManagedBy is the value of LabelManagedBy and the server-side apply
	// field owner.
	ManagedBy = "kars-controller"

	// AnnotationConfigDigest on the router ConfigMap is the digest of the
	// compiled router config it holds.
	AnnotationConfigDigest = "kars.io/config-digest"
	// AnnotationAgentConfigDigest on the pod template rolls the pod when
	// the agent's own configuration (not the router's) changes.
	AnnotationAgentConfigDigest = "kars.io/agent-config-digest"
	// AnnotationVerifiedImage on the pod template records the BYO image
	// reference whose contract label was verified.
	AnnotationVerifiedImage = "kars.io/verified-image"
	// AnnotationAdminCert on the pod template is the digest of the
	// router's admin certificate: the router loads it at start, so a
	// renewed certificate must roll the pod.
	AnnotationAdminCert = "kars.io/admin-cert-digest"
)

// Names are the names of the objects rendered for one sandbox, all in the
// sandbox's namespace.
type Names struct {
	Workload       string // Deployment, ServiceAccount and NetworkPolicy
	RouterConfig   string // ConfigMap holding router.json
	AgentConfig    string // ConfigMap holding the runtime's own configuration
	RouterAdmin    string // Secret with the admin token and TLS key pair
	RouterService  string // headless Service in front of the router
	RouterHostname string // the Service's in-cluster DNS name
	RouterState    string // PersistentVolumeClaim of the router's audit log, ledger, trust and keys
	Workspace      string // PersistentVolumeClaim of the agent's /sandbox
}

// maxNameLen leaves room for the longest suffix ("-router-admin") inside a
// 63-character DNS label, which a Service name must be.
const maxNameLen = 63 - len("-router-admin")

// NamesFor returns the object names for sb, or an error when the sandbox's
// name cannot name a Service.
func NamesFor(sb *karsv1.KarsSandbox) (Names, error) {
	n := sb.Name
	if len(n) > maxNameLen {
		return Names{}, fmt.Errorf("sandbox name %q is %d characters; at most %d fit the names of its Service and Secret", n, len(n), maxNameLen)
	}
	if errs := validation.IsDNS1035Label(n); len(errs) > 0 {
		return Names{}, fmt.Errorf("sandbox name %q cannot name its router Service: %s", n, errs[0])
	}
	return Names{
		Workload:       n,
		RouterConfig:   n + "-router",
		AgentConfig:    n + "-agent",
		RouterAdmin:    n + "-router-admin",
		RouterService:  n + "-router",
		RouterHostname: n + "-router." + sb.Namespace + ".svc",
		RouterState:    n + "-router-state",
		Workspace:      n + "-workspace",
	}, nil
}

// Labels returns the labels of every object rendered for sb.
func Labels(sb *karsv1.KarsSandbox, component string) map[string]string {
	return map[string]string{
		LabelName:      "kars-sandbox",
		LabelInstance:  sb.Name,
		LabelComponent: component,
		LabelPartOf:    "kars",
		LabelManagedBy: ManagedBy,
		LabelSandbox:   sb.Name,
	}
}

// Selector returns the labels that select the sandbox's pod.
func Selector(sb *karsv1.KarsSandbox) map[string]string {
	return map[string]string{LabelSandbox: sb.Name, LabelName: "kars-sandbox"}
}
