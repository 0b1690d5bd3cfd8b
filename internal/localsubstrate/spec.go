// Package localsubstrate is the controller's local Substrate for `kars dev`:
// it realises each rendered sandbox pod (the Deployment's PodSpec) as a local
// pod of internal/sandbox/local — the router as UID 1001 and the agent as UID
// 1000 in their own namespaces, behind the egress guard — instead of handing
// it to a kubelet. The rendered objects are the same as on a cluster; only
// the realisation differs.
//
// Like a kubelet, it materialises the router container's volumes (router
// config, admin Secret, provider Secrets, state) as files, here under the
// router's private directory, and the router resolves its configured paths
// under that directory (KARS_ROUTER_ROOT), so the compiled config and its
// digest are identical on both substrates.
package localsubstrate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/ociroot"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/runtimeenv"
	"github.com/kars-io/kars/internal/sandbox/local"
)

// podID names a sandbox's local pod: readable, unique per namespace/name,
// and within the 40 characters local.Spec allows.
func podID(sb *karsv1.KarsSandbox) string {
	sum := sha256.Sum256([]byte(sb.Namespace + "/" + sb.Name))
	name := strings.Trim(sb.Name, "-")
	if len(name) > 28 {
		name = strings.Trim(name[:28], "-")
	}
	return name + "-" + hex.EncodeToString(sum[:5])
}

// buildInput is everything buildSpec needs besides the rendered sandbox.
type buildInput struct {
	sb        *karsv1.KarsSandbox
	desired   *render.Sandbox
	stateRoot string
	workspace string
	// routerState is the router's persistent folder ("" for none).
	routerState string
	// mesh: the router reaches kars-mesh through MeshSocket.
	mesh   bool
	hide   []string
	quota  int64
	binDir string
	// secret returns a Secret of the sandbox's namespace by name.
	secret func(name string) (*corev1.Secret, error)
	// configMap returns a ConfigMap of the sandbox's namespace by name.
	configMap func(name string) (*corev1.ConfigMap, error)
	// runtimeEnv returns a runtime adapter's prepared environment, or an
	// *errPreparing while it is not ready.
	runtimeEnv func(id string) (*runtimeenv.Env, error)
	// trust runs the router-trust init container (runRouterTrust) with
	// the router's program and returns the agent's trust files.
	trust func(routerBin string, hosts []string) (map[string][]byte, error)
	// upstreamRoots replaces the router's system roots (Options.UpstreamRoots).
	upstreamRoots []byte
	// image returns an image unpacked (its label ociroot.ContractLabel
	// equal to contract unless that is empty), or an *errPreparing while
	// it is pulled.
	image func(ref, contract string, kc authn.Keychain) (*ociroot.Root, error)
}

// upstreamRootsFile is where, in the router's folder, Options.UpstreamRoots
// is placed.
const upstreamRootsFile = "etc/kars/upstream-roots.pem"

// builtSpec is a local pod spec with the parts that may change without a
// restart kept apart.
type builtSpec struct {
	spec local.Spec
	// hash identifies everything that needs a restart when it changes:
	// the pod template and the files other than the router config.
	hash string
	// routerConfig is router.json, which the router hot-reloads; relPath
	// is its place under the router's directory.
	routerConfig        []byte
	routerConfigRelPath string
	// hotFiles are the router ConfigMap's other keys (egress.json), which
	// the router watches too: updated in place, kept out of the hash.
	hotFiles  map[string][]byte
	routerDir string
	agentPort uint16
}

func buildSpec(in buildInput) (*builtSpec, error) {
	dep := in.desired.Deployment
	if dep == nil {
		return nil, fmt.Errorf("nothing to run: the rendered sandbox has no Deployment")
	}
	pod := dep.Spec.Template.Spec
	var agentC, routerC *corev1.Container
	for i := range pod.Containers {
		c := &pod.Containers[i]
		if c.Name == render.ContainerRouter {
			routerC = c
		} else if agentC == nil {
			agentC = c
		}
	}
	if agentC == nil || routerC == nil {
		return nil, fmt.Errorf("the rendered pod lacks the agent or the %s container", render.ContainerRouter)
	}
	var trustHostList []string
	for _, ic := range pod.InitContainers {
		switch ic.Name {
		case render.ContainerEgressGuard:
		case render.ContainerRouterTrust:
			trustHostList = trustHosts(ic)
		default:
			return nil, fmt.Errorf("init container %s (%s) cannot run locally: kars dev takes agent code from an image (agentCode.oci), not from git (agentCode.git); use agentCode.oci or a cluster", ic.Name, ic.Image)
		}
	}
	id := podID(in.sb)
	b := &builtSpec{routerDir: filepath.Join(in.stateRoot, id, "router")}
	agent, agentRoot, err := agentProcess(in, agentC, pod)
	if err != nil {
		return nil, err
	}
	agentCode, err := agentCodeImage(in, agentC, pod, &agent)
	if err != nil {
		return nil, err
	}
	routerPath, err := localBinary(in.binDir, routerC)
	if err != nil {
		return nil, err
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	routerFiles := map[string][]byte{}
	for _, m := range routerC.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			return nil, fmt.Errorf("router mount %s names no volume", m.Name)
		}
		files, err := volumeFiles(in, v)
		if err != nil {
			return nil, fmt.Errorf("router volume %s: %w", v.Name, err)
		}
		for rel, data := range files {
			p := strings.TrimPrefix(path.Join(m.MountPath, rel), "/")
			if v.ConfigMap != nil && v.ConfigMap.Name == in.desired.Names.RouterConfig {
				// router.json and egress.json are hot-reloaded: kept out
				// of the restart hash.
				if path.Base(p) != routerconfig.FileName {
					if b.hotFiles == nil {
						b.hotFiles = map[string][]byte{}
					}
					b.hotFiles[p] = data
					continue
				}
				b.routerConfig, b.routerConfigRelPath = data, p
				continue
			}
			routerFiles[p] = data
		}
	}
	if b.routerConfig == nil {
		return nil, fmt.Errorf("the router container mounts no router config")
	}
	if len(trustHostList) > 0 {
		if in.trust == nil {
			return nil, fmt.Errorf("the pod needs the router-trust step, which this substrate cannot run")
		}
		files, err := in.trust(routerPath, trustHostList)
		if err != nil {
			return nil, err
		}
		agentTrustFiles(files, &agent)
	}
	for _, m := range agentC.VolumeMounts {
		if m.MountPath == render.AgentTrustDir {
			continue // the trust files are in the workspace (agentTrustFiles)
		}
		if m.MountPath == render.AgentConfigDir {
			if err := agentConfigFiles(in, volumes[m.Name], &agent); err != nil {
				return nil, err
			}
			continue
		}
		if m.MountPath == render.AgentCodeDir && agentCode != "" {
			continue
		}
		if m.MountPath != render.Workspace && m.MountPath != "/tmp" {
			return nil, fmt.Errorf("agent mount %s at %s cannot be provided locally (only %s and /tmp are)", m.Name, m.MountPath, render.Workspace)
		}
	}
	for _, p := range agentC.Ports {
		b.agentPort = uint16(p.ContainerPort)
	}
	if b.agentPort == 0 {
		b.agentPort = uint16(render.DefaultAgentPort)
	}
	isolation := local.Standard
	switch in.sb.Spec.IsolationLevel() {
	case karsv1.IsolationEnhanced:
		isolation = local.Enhanced
	case karsv1.IsolationConfidential:
		isolation = local.Confidential
	}
	routerEnv := envList(routerC.Env)
	routerEnv = append(routerEnv, "KARS_ROUTER_ROOT="+b.routerDir)
	if os.Geteuid() != 0 {
		// Rootless: the router runs on the host's network stack, where
		// the egress listeners have no guard redirecting to them.
		routerEnv = append(routerEnv, "KARS_ROUTER_NO_EGRESS_LISTENERS=1")
	}
	if in.mesh {
		routerEnv = append(routerEnv, routerconfig.EnvMeshDial+"=unix:"+MeshSocket)
	}
	if len(in.upstreamRoots) > 0 {
		// Go's system roots on Linux are SSL_CERT_FILE when it is set.
		routerFiles[upstreamRootsFile] = in.upstreamRoots
		routerEnv = append(routerEnv, "SSL_CERT_FILE="+filepath.Join(b.routerDir, upstreamRootsFile))
	}
	b.spec = local.Spec{
		ID:        id,
		StateRoot: in.stateRoot,
		Workspace: in.workspace,
		Isolation: isolation,
		Router: local.Process{Path: routerPath, Args: containerArgs(routerC), Env: routerEnv,
			Files: withPlaceholders(routerFiles, b.routerConfigRelPath, b.routerConfig, b.hotFiles)},
		Agent:          agent,
		AgentRoot:      agentRoot,
		AgentCode:      agentCode,
		RouterPorts:    routerPorts(routerC),
		AgentPorts:     []uint16{b.agentPort},
		Limits:         limits(agentC.Resources),
		Hide:           in.hide,
		WorkspaceQuota: in.quota,
	}
	if in.routerState != "" {
		// The router-state claim's mount, as the router's root sees it.
		b.spec.RouterState, b.spec.RouterStateLink = in.routerState, strings.TrimPrefix(render.RouterStateRoot, "/")
	}
	h := sha256.New()
	_ = json.NewEncoder(h).Encode(struct {
		Pod   corev1.PodSpec
		Files map[string][]byte
		Iso   string
		WS    string
		Agent local.Process
		Root  string
		Code  string
	}{pod, routerFiles, isolation, in.workspace, agent, agentRoot, agentCode})
	b.hash = hex.EncodeToString(h.Sum(nil))
	return b, nil
}

// withPlaceholders adds router.json and the directories the router writes
// to, so that they exist, owned by the router, before it starts.
func withPlaceholders(files map[string][]byte, configRel string, config []byte, hot map[string][]byte) map[string][]byte {
	out := make(map[string][]byte, len(files)+len(hot)+3)
	for k, v := range files {
		out[k] = v
	}
	for k, v := range hot {
		out[k] = v
	}
	out[configRel] = config
	for _, dir := range []string{render.RouterAuditDir, render.RouterStateDir} {
		out[strings.TrimPrefix(dir, "/")+"/.kars-local"] = nil
	}
	return out
}

// localBinary maps a kars image to the host program built from the same
// source: kars dev runs kars's own binaries, not image filesystems.
func localBinary(binDir string, c *corev1.Container) (string, error) {
	repo := c.Image
	if i := strings.IndexByte(repo, '@'); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
		repo = repo[:i]
	}
	base := path.Base(repo)
	switch base {
	case "kars-agent", "kars-router":
		p := filepath.Join(binDir, base)
		for _, private := range []string{"/tmp/", "/run/", "/dev/shm/"} {
			if strings.HasPrefix(p, private) {
				return "", fmt.Errorf("%s is under %s, which is a private tmpfs inside the sandbox: keep kars's binaries elsewhere (make build puts them in bin/)", p, private)
			}
		}
		return p, nil
	}
	return "", fmt.Errorf("container %s runs image %s, which kars dev cannot run locally (it runs kars's own kars-agent and kars-router); use a Kubernetes cluster for this runtime", c.Name, c.Image)
}

// containerArgs drops an entrypoint that only names the image's own binary.
func containerArgs(c *corev1.Container) []string {
	args := append([]string(nil), c.Args...)
	if len(c.Command) > 1 {
		args = append(append([]string(nil), c.Command[1:]...), args...)
	}
	return args
}

func envList(env []corev1.EnvVar) []string {
	return append(containerEnv(env), "PATH=/usr/local/bin:/usr/bin:/bin")
}

// containerEnv is the container's own variables, without a PATH for the
// host.
func containerEnv(env []corev1.EnvVar) []string {
	out := make([]string, 0, len(env)+1)
	for _, e := range env {
		if e.ValueFrom != nil {
			continue // field and resource references have no local meaning
		}
		out = append(out, e.Name+"="+e.Value)
	}
	return out
}

// volumeFiles returns a volume's files relative to its mount point.
func volumeFiles(in buildInput, v corev1.Volume) (map[string][]byte, error) {
	switch {
	case v.EmptyDir != nil, v.PersistentVolumeClaim != nil:
		// The router's private folder already outlives its processes
		// (and `kars dev down`), which is what the claim gives on a
		// cluster.
		return map[string][]byte{".kars-local": nil}, nil
	case v.ConfigMap != nil:
		data := map[string][]byte{}
		cm := in.desired.RouterConfig
		if v.ConfigMap.Name != cm.Name {
			var err error
			if cm, err = in.configMap(v.ConfigMap.Name); err != nil {
				if apierrors.IsNotFound(err) && v.ConfigMap.Optional != nil && *v.ConfigMap.Optional {
					return map[string][]byte{}, nil // as the kubelet mounts it: empty
				}
				return nil, err
			}
		}
		for k, val := range cm.Data {
			data[k] = []byte(val)
		}
		for k, val := range cm.BinaryData {
			data[k] = val
		}
		return pick(data, v.ConfigMap.Items)
	case v.Secret != nil:
		sec := in.desired.AdminSecret
		if v.Secret.SecretName != sec.Name {
			var err error
			if sec, err = in.secret(v.Secret.SecretName); err != nil {
				if apierrors.IsNotFound(err) && v.Secret.Optional != nil && *v.Secret.Optional {
					return map[string][]byte{}, nil // as the kubelet mounts it: empty
				}
				return nil, err
			}
		}
		data := map[string][]byte{}
		for k, val := range sec.Data {
			data[k] = val
		}
		for k, val := range sec.StringData {
			data[k] = []byte(val)
		}
		return pick(data, v.Secret.Items)
	case v.Projected != nil:
		// A projected ServiceAccount token is the workload-identity
		// credential; no Entra federation trusts a laptop's API server, so
		// locally it is simply absent.
		return map[string][]byte{}, nil
	}
	return nil, fmt.Errorf("volume kind not supported locally")
}

func pick(data map[string][]byte, items []corev1.KeyToPath) (map[string][]byte, error) {
	if len(items) == 0 {
		return data, nil
	}
	out := map[string][]byte{}
	for _, it := range items {
		val, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("key %q is missing", it.Key)
		}
		out[it.Path] = val
	}
	return out, nil
}

func limits(r corev1.ResourceRequirements) local.Limits {
	l := local.Limits{PIDs: 1024}
	if q, ok := r.Limits[corev1.ResourceMemory]; ok {
		l.MemoryBytes = q.Value()
	}
	if q, ok := r.Limits[corev1.ResourceCPU]; ok {
		l.CPUMillis = q.MilliValue()
	}
	return l
}

// suspended reports whether the Deployment asks for no pod.
func suspended(d *appsv1.Deployment) bool {
	return d.Spec.Replicas != nil && *d.Spec.Replicas == 0
}

// routerPorts are the ports bound inside the pod and passed to the router:
// the agent API, the admin API, and the A2A ingress while the sandbox is
// exposed (the router container then declares it).
func routerPorts(c *corev1.Container) []uint16 {
	ports := []uint16{uint16(render.RouterAgentPort), uint16(render.RouterAdminPort)}
	for _, p := range c.Ports {
		if p.ContainerPort == render.RouterA2APort {
			ports = append(ports, uint16(render.RouterA2APort))
		}
	}
	return ports
}

// PodID is the local pod ID of a sandbox, the folder of its pod under the
// substrate's StateRoot (`kars trace` reads the pod's state there).
func PodID(sb *karsv1.KarsSandbox) string { return podID(sb) }
