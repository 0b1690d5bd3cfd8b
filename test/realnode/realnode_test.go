//go:build linux

// Package realnode is the proof that the pod kars renders runs on a real
// node: a kubelet built from the pinned Kubernetes modules, containerd and
// runc, joined to a real control plane (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler), pulling kars's images from a
// local OCI registry. It needs root and is opt-in: KARS_REAL_NODE=1
// (`make realnode`). docs/operate.md "Proof on a real node" has the steps
// and the results.
package realnode

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	kscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/config/crd"
	"github.com/kars-io/kars/internal/controlplane"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/scheme"
)

// readyLine is kars status's Ready condition line when it is True.
var readyLine = regexp.MustCompile(`(?m)^\s+Ready\s+True\b`)

// nodeName is the Node the kubelet registers.
const nodeName = "kars-realnode"

// node is everything the proof started, for the clean-up.
type node struct {
	state, logs, repo string
	sock              string
	bridge            string
	cgroup            string
	procs             []*proc
	netnsBefore       map[string]bool
	cs                *kubernetes.Clientset
	cl                client.Client
	cfg               *rest.Config
	kubeconfig        string
	registry          string
	timings           []string
}

func (n *node) took(step string, d time.Duration) {
	n.timings = append(n.timings, fmt.Sprintf("%-44s %6.1fs", step, d.Seconds()))
}

func TestRealNode(t *testing.T) {
	if os.Getenv("KARS_REAL_NODE") != "1" {
		t.Skip("set KARS_REAL_NODE=1 (make realnode) to run the proof on a real node; it needs root, containerd, runc and the CNI plugins")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the real-node proof needs root (kubelet, containerd, network namespaces)")
	}
	// One proof at a time per machine: the node name, the pod subnet and
	// the kubelet's cgroup root are fixed.
	lock, err := os.OpenFile("/tmp/kars-realnode.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	// Released after the teardown (cleanups run last-registered first).
	t.Cleanup(func() { lock.Close() })
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctrllog.SetLogger(logr.Discard())
	total := time.Now()
	n := &node{}
	if n.repo, err = filepath.Abs("../.."); err != nil {
		t.Fatal(err)
	}
	assets, err := controlplane.AssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	nodeBin := os.Getenv("KARS_NODE_BIN")
	if nodeBin == "" {
		nodeBin = filepath.Join(n.repo, "tools", "kube", "bin", "node-"+controlplane.KubernetesVersion)
	}
	for _, b := range []string{filepath.Join(nodeBin, "kubelet"), filepath.Join(nodeBin, "kube-scheduler")} {
		if _, err := os.Stat(b); err != nil {
			t.Fatalf("%v: run `make realnode` (tools/kube/build-node.sh builds them)", err)
		}
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "nft", "nsenter", "ip"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s: %v (apt-get install containerd runc containernetworking-plugins nftables)", b, err)
		}
	}
	cniBin := "/usr/lib/cni"
	if _, err := os.Stat(filepath.Join(cniBin, "bridge")); err != nil {
		t.Fatalf("CNI plugins: %v (apt-get install containernetworking-plugins)", err)
	}
	nodeIP := os.Getenv("KARS_REAL_NODE_IP")
	if nodeIP == "" {
		nodeIP = defaultRouteIP(t)
	}

	if n.state, err = os.MkdirTemp("/var/lib", "kars-realnode-"); err != nil {
		t.Fatal(err)
	}
	n.logs = filepath.Join(n.state, "logs")
	n.sock = filepath.Join("/run", filepath.Base(n.state), "containerd.sock")
	n.bridge = "karsrn" + strconv.Itoa(os.Getpid()%10000)
	n.cgroup = filepath.Base(n.state)
	for _, d := range []string{n.logs, filepath.Join(n.state, "pki"), filepath.Join(n.state, "net.d"), filepath.Join(n.state, "bin")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { n.teardown(t) })
	t.Logf("state in %s, node IP %s", n.state, nodeIP)

	// --- kars's programs ------------------------------------------------
	step := time.Now()
	ctrlBin, karsBin := filepath.Join(n.state, "bin", "kars-controller"), filepath.Join(n.state, "bin", "kars")
	probe := filepath.Join(n.state, "bin", "probe")
	for bin, pkg := range map[string]string{ctrlBin: "./cmd/kars-controller", karsBin: "./cmd/kars", probe: "./test/realnode/probe"} {
		if out, err := n.goBuild(t, bin, pkg); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	n.took("build kars-controller, kars, probe", time.Since(step))

	// --- control plane -------------------------------------------------
	step = time.Now()
	pk := newCA(t, filepath.Join(n.state, "pki"))
	pk.serviceAccountKey(t)
	pk.issue(t, "apiserver", "kube-apiserver", nil, []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")}, []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"})
	pk.issue(t, "admin", "kars-realnode-admin", []string{"system:masters"}, nil, nil)
	pk.issue(t, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil)
	pk.issue(t, "kubelet-client", "system:node:"+nodeName, []string{"system:nodes"}, nil, nil)
	pk.issue(t, "kubelet-serving", "system:node:"+nodeName, []string{"system:nodes"}, []net.IP{net.ParseIP(nodeIP)}, []string{nodeName})

	etcdPort, apiPort := freePort(t), freePort(t)
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(freePort(t))
	etcd := n.start(t, "etcd", nil, filepath.Join(assets, "etcd"),
		"--name=realnode", "--data-dir="+filepath.Join(n.state, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=realnode="+peerURL, "--listen-metrics-urls=", "--log-level=warn")
	ctx := context.Background()
	waitFor(t, "etcd healthy", time.Minute, etcd, func() (bool, error) { return httpOK(ctx, nil, etcdURL+"/health") })

	server := "https://127.0.0.1:" + strconv.Itoa(apiPort)
	api := n.start(t, "kube-apiserver", nil, filepath.Join(assets, "kube-apiserver"),
		"--etcd-servers="+etcdURL, "--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(apiPort),
		"--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
		"--tls-cert-file="+pk.path("apiserver.crt"), "--tls-private-key-file="+pk.path("apiserver.key"),
		"--client-ca-file="+pk.path("ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+pk.path("sa.pub"), "--service-account-signing-key-file="+pk.path("sa.key"),
		"--service-cluster-ip-range=10.96.0.0/24",
		// The node authorizer and NodeRestriction confine the kubelet
		// to its own Node and the pods bound to it, as on a real cluster.
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		// Logs, exec and port-forward go API server → kubelet over
		// mutually authenticated TLS.
		"--kubelet-client-certificate="+pk.path("apiserver-kubelet-client.crt"),
		"--kubelet-client-key="+pk.path("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority="+pk.path("ca.crt"),
		"--kubelet-preferred-address-types=InternalIP",
		"--cert-dir="+filepath.Join(n.state, "pki", "generated"))
	caPEM, _ := os.ReadFile(pk.path("ca.crt"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	pair, err := tls.LoadX509KeyPair(pk.path("admin.crt"), pk.path("admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	adminTLS := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	waitFor(t, "kube-apiserver ready", 2*time.Minute, api, func() (bool, error) { return httpOK(ctx, adminTLS, server+"/readyz") })
	n.kubeconfig = pk.kubeconfig(t, "admin", server)
	kubeletKubeconfig := pk.kubeconfig(t, "kubelet-client", server)
	if n.cfg, err = clientcmd.BuildConfigFromFlags("", n.kubeconfig); err != nil {
		t.Fatal(err)
	}
	n.cs = kubernetes.NewForConfigOrDie(n.cfg)
	if n.cl, err = client.New(n.cfg, client.Options{Scheme: scheme.New()}); err != nil {
		t.Fatal(err)
	}
	n.start(t, "kube-controller-manager", nil, filepath.Join(assets, "kube-controller-manager"),
		"--kubeconfig="+n.kubeconfig, "--authentication-kubeconfig="+n.kubeconfig, "--authorization-kubeconfig="+n.kubeconfig,
		"--secure-port=0", "--leader-elect=false", "--use-service-account-credentials=false",
		"--controllers=node-lifecycle-controller,deployment-controller,replicaset-controller,namespace-controller,garbage-collector-controller,serviceaccount-controller,root-ca-certificate-publisher-controller,persistentvolume-binder-controller,persistentvolumeclaim-protection-controller",
		"--service-account-private-key-file="+pk.path("sa.key"), "--root-ca-file="+pk.path("ca.crt"))
	n.start(t, "kube-scheduler", nil, filepath.Join(nodeBin, "kube-scheduler"),
		"--kubeconfig="+n.kubeconfig, "--authentication-kubeconfig="+n.kubeconfig, "--authorization-kubeconfig="+n.kubeconfig,
		"--secure-port=0", "--leader-elect=false")
	installCRDs(t, n.cfg, n.cl)
	n.took("control plane up (etcd, apiserver, kcm, scheduler, CRDs)", time.Since(step))

	// --- images --------------------------------------------------------
	step = time.Now()
	regL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	regSrv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = regSrv.Serve(regL) }()
	t.Cleanup(func() { _ = regSrv.Close() })
	n.registry = regL.Addr().String()
	prefix := n.registry + "/kars"
	// make images, pushing to the local registry.
	if out, err := n.goRun(t, "./hack/images", "-version", "realnode", "-registry", prefix, "-insecure"); err != nil {
		t.Fatalf("make images: %v\n%s", err, out)
	}
	pauseImage := prefix + "/pause:realnode"
	pushProbeImage(t, probe, empty.Image, pauseImage, []string{"/usr/local/bin/probe", "pause"}, nil)
	// The BYO agent: kars-agent as `make images` built it, with the probe
	// added so that the proof can exec it inside the agent container.
	agentImage := prefix + "/proof-agent:realnode"
	base, err := remote.Image(mustRef(t, prefix+"/kars-agent:realnode"))
	if err != nil {
		t.Fatalf("pull kars-agent from the local registry: %v", err)
	}
	pushProbeImage(t, probe, base, agentImage, nil, map[string]string{"org.kars.runtime.contract": "v1"})
	n.took("make images + pause and BYO agent image pushed", time.Since(step))

	// --- the node ------------------------------------------------------
	step = time.Now()
	kubeletRoot := filepath.Join(n.state, "kubelet")
	seccompDir := filepath.Join(kubeletRoot, "seccomp")
	if err := os.MkdirAll(seccompDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The chart's DaemonSet runs this installer on every node.
	if out, err := n.goRun(t, "./cmd/kars-seccomp-installer", "-src", filepath.Join(n.repo, "config", "seccomp"), "-dst", seccompDir, "-interval", "0"); err != nil {
		t.Fatalf("kars-seccomp-installer: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(seccompDir, "kars-strict.json")); err != nil {
		t.Fatalf("seccomp profile not installed: %v", err)
	}
	writeFile(t, filepath.Join(n.state, "net.d", "10-kars-realnode.conflist"), fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "kars-realnode",
  "plugins": [
    {"type": "bridge", "bridge": %q, "isGateway": true, "isDefaultGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.77.0/24"}]], "dataDir": %q}}
  ]
}`, n.bridge, filepath.Join(n.state, "cni-ipam")))
	cdState := filepath.Dir(n.sock)
	writeFile(t, filepath.Join(n.state, "containerd.toml"), fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # Lowering oom_score_adj below containerd's own needs CAP_SYS_RESOURCE,
  # which this container lacks: runc's nsexec would die writing -998.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors.%q]
    endpoint = ["http://%s"]
`, filepath.Join(n.state, "containerd"), cdState, n.sock, pauseImage, cniBin, filepath.Join(n.state, "net.d"), n.registry, n.registry))
	n.netnsBefore = listNetns()
	cd := n.start(t, "containerd", nil, "containerd", "--config", filepath.Join(n.state, "containerd.toml"))
	waitFor(t, "containerd socket", 30*time.Second, cd, func() (bool, error) {
		_, err := os.Stat(n.sock)
		return err == nil, err
	})
	// A cgroup of its own under each v1 hierarchy, so the kubelet's
	// kubepods tree never meets anything else on the machine.
	for _, h := range cgroupHierarchies() {
		if err := os.MkdirAll(filepath.Join(h, n.cgroup), 0o755); err != nil {
			t.Fatalf("cgroup: %v", err)
		}
	}
	kubeletPort := freePort(t)
	writeFile(t, filepath.Join(n.state, "kubelet.yaml"), fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host has cgroup v1 only; kubelets since 1.35 refuse it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /%s
containerRuntimeEndpoint: unix://%s
address: %s
port: %d
readOnlyPort: 0
healthzPort: 0
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %s}
authorization:
  mode: AlwaysAllow
failSwapOn: false
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
evictionHard: {memory.available: "50Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
`, n.cgroup, n.sock, nodeIP, kubeletPort, pk.path("kubelet-serving.crt"), pk.path("kubelet-serving.key"), pk.path("ca.crt")))
	kubelet := n.start(t, "kubelet", nil, filepath.Join(nodeBin, "kubelet"),
		"--config="+filepath.Join(n.state, "kubelet.yaml"), "--kubeconfig="+kubeletKubeconfig,
		"--root-dir="+kubeletRoot, "--cert-dir="+filepath.Join(n.state, "kubelet-pki"),
		"--hostname-override="+nodeName, "--node-ip="+nodeIP, "--v=1")
	// (a) a Ready Node.
	d := waitFor(t, "Node "+nodeName+" Ready", 3*time.Minute, kubelet, func() (bool, error) {
		no, err := n.cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range no.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue, fmt.Errorf("Ready=%s: %s", c.Status, c.Message)
			}
		}
		return false, fmt.Errorf("no Ready condition")
	})
	n.took("(a) kubelet start -> Node Ready", d)
	no, _ := n.cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	t.Logf("(a) Node %s Ready: kubelet %s, runtime %s, kernel %s", nodeName, no.Status.NodeInfo.KubeletVersion, no.Status.NodeInfo.ContainerRuntimeVersion, no.Status.NodeInfo.KernelVersion)
	n.took("node up (seccomp, CNI, containerd, kubelet)", time.Since(step))

	// --- (b) a trivial pod ----------------------------------------------
	step = time.Now()
	mkNamespace(t, n.cs, "realnode-trivial")
	trivial := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "realnode-trivial", Name: "baseline"},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken: ptr(false),
			RestartPolicy:                corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "probe", Image: pauseImage, Command: []string{"/usr/local/bin/probe", "syscalls", "--wait"},
				SecurityContext: &corev1.SecurityContext{
					RunAsUser: ptr(int64(1000)), RunAsGroup: ptr(int64(1000)), AllowPrivilegeEscalation: ptr(false),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
					// The baseline: the same calls without a filter.
					SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined},
				},
			}},
		},
	}
	if _, err := n.cs.CoreV1().Pods("realnode-trivial").Create(ctx, trivial, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d = n.waitPodRunning(t, "realnode-trivial", "baseline", kubelet)
	n.took("(b) trivial pod created -> Running", d)
	var baseline string
	waitFor(t, "baseline probe output", 30*time.Second, nil, func() (bool, error) {
		b, err := n.cs.CoreV1().Pods("realnode-trivial").GetLogs("baseline", &corev1.PodLogOptions{Container: "probe"}).DoRaw(ctx)
		baseline = string(b)
		return err == nil && strings.Contains(baseline, "syslog="), err
	})
	t.Logf("(b) trivial pod (UID 1000, no capabilities, seccomp Unconfined), logs through the kubelet:\n%s", baseline)
	if !strings.Contains(baseline, "uid=1000") || !strings.Contains(baseline, "seccomp=0") || !strings.Contains(baseline, "keyctl=ok") {
		t.Fatalf("baseline pod: want uid=1000, seccomp=0, keyctl=ok; got\n%s", baseline)
	}
	n.took("(b) trivial pod total", time.Since(step))

	// --- (c) the kars controller reconciles a KarsSandbox ----------------
	step = time.Now()
	const ns, sbName = "kars-proof", "proof"
	mkNamespace(t, n.cs, "kars-system")
	mkNamespace(t, n.cs, ns)
	// Stand-ins for a storage provisioner: two hostPath volumes the
	// binder matches to the sandbox's claims, owned by the UIDs that
	// write them (the agent's workspace, the router's state).
	for _, pv := range []struct {
		name, size string
		uid        int
	}{{"proof-workspace", "10Gi", 1000}, {"proof-router-state", "1Gi", 1001}} {
		dir := filepath.Join(n.state, "volumes", pv.name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, pv.uid, pv.uid); err != nil {
			t.Fatal(err)
		}
		hp := corev1.HostPathDirectory
		if _, err := n.cs.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: pv.name},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(pv.size)},
				AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
				PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &hp}},
			},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range []client.Object{
		&karsv1.InferencePolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "proof-inference"},
			Spec: karsv1.InferencePolicySpec{
				ModelPreference: karsv1.ModelPreference{Primary: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "offline-small"}},
				TokenBudget:     &karsv1.TokenBudget{Daily: 100000},
			},
		},
		&karsv1.ToolPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "proof-policy"},
			Spec: karsv1.ToolPolicySpec{Rules: []karsv1.ToolRule{
				{Name: "inference", Effect: karsv1.EffectAllow, Actions: []string{"inference:*"}},
			}},
		},
		&karsv1.KarsSandbox{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sbName},
			Spec: karsv1.KarsSandboxSpec{
				Runtime:      karsv1.RuntimeSpec{Kind: karsv1.RuntimeBYO, BYO: &karsv1.BYORuntime{Image: agentImage, ContractVersion: "v1"}},
				InferenceRef: karsv1.LocalObjectReference{Name: "proof-inference"},
				Governance:   karsv1.GovernanceSpec{ToolPolicyRef: &karsv1.LocalObjectReference{Name: "proof-policy"}},
			},
		},
	} {
		if err := n.cl.Create(ctx, o); err != nil {
			t.Fatalf("create %T: %v", o, err)
		}
	}
	ctrlStart := time.Now()
	// The controller runs on the host, outside the pod network, with no
	// cluster DNS or kube-proxy: it reaches the router's admin API (the
	// headless Service's name) through a private /etc/hosts in a mount
	// namespace of its own, filled in with the pod's IP below.
	hostsFile := filepath.Join(n.state, "controller-hosts")
	hostsBase, _ := os.ReadFile("/etc/hosts")
	writeFile(t, hostsFile, string(hostsBase))
	if err := os.Chmod(hostsFile, 0o644); err != nil {
		t.Fatal(err)
	}
	controller := n.start(t, "kars-controller", []string{"KUBECONFIG=" + n.kubeconfig, "KARS_HOSTS=" + hostsFile, "KARS_CONTROLLER=" + ctrlBin},
		"unshare", "--mount", "--propagation", "private", "sh", "-c", `mount --bind "$KARS_HOSTS" /etc/hosts && exec "$KARS_CONTROLLER" "$@"`, "kars-controller",
		"--leader-elect=false", "--metrics-bind-address=0", "--health-probe-bind-address=0",
		"--system-namespace=kars-system", "--image-registry="+prefix, "--image-version=realnode",
		"--cluster-dns=10.96.0.10", "--mesh=false")
	var pod corev1.Pod
	waitFor(t, "the sandbox's pod Running and Ready", 4*time.Minute, controller, func() (bool, error) {
		if err := kubelet.exited(); err != nil {
			return false, err
		}
		var pods corev1.PodList
		if err := n.cl.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels{"kars.io/sandbox": sbName}); err != nil {
			return false, err
		}
		if len(pods.Items) == 0 {
			return false, fmt.Errorf("no pod yet")
		}
		pod = pods.Items[0]
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, fmt.Errorf("pod %s phase %s: %s", pod.Name, pod.Status.Phase, podProblems(&pod))
	})
	n.took("(c) KarsSandbox created -> pod Ready", time.Since(ctrlStart))
	t.Logf("(c) pod %s/%s Ready on %s", ns, pod.Name, pod.Spec.NodeName)

	// The router's Service name resolves, for the controller, to the pod.
	names, err := render.NamesFor(&karsv1.KarsSandbox{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sbName}})
	if err != nil {
		t.Fatal(err)
	}
	hf, err := os.OpenFile(hostsFile, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(hf, "%s %s\n", pod.Status.PodIP, names.RouterHostname)
	hf.Close()
	d = waitFor(t, "KarsSandbox Ready (the router enforces the controller's config)", 2*time.Minute, controller, func() (bool, error) {
		var sb karsv1.KarsSandbox
		if err := n.cl.Get(ctx, client.ObjectKey{Namespace: ns, Name: sbName}, &sb); err != nil {
			return false, err
		}
		for _, c := range sb.Status.Conditions {
			if c.Type == "Ready" {
				return c.Status == metav1.ConditionTrue, fmt.Errorf("Ready=%s %s: %s", c.Status, c.Reason, c.Message)
			}
		}
		return false, fmt.Errorf("no Ready condition")
	})
	n.took("(c) pod Ready -> KarsSandbox Ready", d)
	n.took("(c) KarsSandbox created -> KarsSandbox Ready", time.Since(ctrlStart))

	// The egress guard ran to completion.
	guard := containerStatus(pod.Status.InitContainerStatuses, "egress-guard")
	if guard == nil || guard.State.Terminated == nil || guard.State.Terminated.ExitCode != 0 {
		t.Fatalf("egress-guard init container did not complete: %+v", guard)
	}
	t.Logf("(c) egress-guard init container: exit %d (%s)", guard.State.Terminated.ExitCode, guard.State.Terminated.Reason)
	agentPID := n.taskPID(t, containerStatus(pod.Status.ContainerStatuses, "agent"))
	routerPID := n.taskPID(t, containerStatus(pod.Status.ContainerStatuses, "inference-router"))
	// Its rules are in the pod's network namespace, read from the host.
	rules, err := run(t, nil, "nsenter", "-t", strconv.Itoa(agentPID), "-n", "nft", "list", "table", "inet", "kars")
	if err != nil {
		t.Fatalf("nft in the pod's netns: %v\n%s", err, rules)
	}
	t.Logf("(c) nft table inet kars in the pod's network namespace:\n%s", rules)
	if !strings.Contains(rules, "skuid 1000") {
		t.Fatalf("the guard's rules do not confine UID 1000:\n%s", rules)
	}
	// The kernel's view of the two processes.
	agentUID, routerUID := procStatus(agentPID, "Uid"), procStatus(routerPID, "Uid")
	agentSeccomp, routerSeccomp := procStatus(agentPID, "Seccomp"), procStatus(routerPID, "Seccomp")
	t.Logf("(c) agent pid %d: Uid %s, Seccomp %s, NoNewPrivs %s, CapEff %s", agentPID, agentUID, agentSeccomp, procStatus(agentPID, "NoNewPrivs"), procStatus(agentPID, "CapEff"))
	t.Logf("(c) router pid %d: Uid %s, Seccomp %s, NoNewPrivs %s, CapEff %s", routerPID, routerUID, routerSeccomp, procStatus(routerPID, "NoNewPrivs"), procStatus(routerPID, "CapEff"))
	if agentUID != "1000 1000 1000 1000" || routerUID != "1001 1001 1001 1001" {
		t.Fatalf("agent Uid %q (want 1000), router Uid %q (want 1001)", agentUID, routerUID)
	}
	if agentSeccomp != "2" {
		t.Fatalf("agent Seccomp %q, want 2 (filter)", agentSeccomp)
	}
	// A denied system call, through a real exec (API server → kubelet →
	// containerd) into the agent container.
	var stdout, stderr bytes.Buffer
	if err := n.exec(ctx, ns, pod.Name, "agent", []string{"/usr/local/bin/probe", "syscalls"}, &stdout, &stderr); err != nil {
		t.Fatalf("exec probe in the agent container: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	t.Logf("(c) probe exec'd in the agent container (kars-strict):\n%s", stdout.String())
	for _, want := range []string{"uid=1000", "seccomp=2", "keyctl=EPERM", "add_key=EPERM"} {
		if !strings.Contains(stdout.String(), want) {
			t.Fatalf("agent container probe: want %s in\n%s", want, stdout.String())
		}
	}
	// The guard at work: the agent's connection to the instance metadata
	// address is reset by its rule (the host itself reaches that address).
	stdout.Reset()
	stderr.Reset()
	if err := n.exec(ctx, ns, pod.Name, "agent", []string{"/usr/local/bin/probe", "dial", "169.254.169.254:80"}, &stdout, &stderr); err != nil {
		t.Fatalf("exec probe dial in the agent container: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	t.Logf("(c) agent (UID 1000) dials 169.254.169.254:80: %s", strings.TrimSpace(stdout.String()))
	if !strings.Contains(stdout.String(), "dial=ECONNREFUSED") {
		t.Fatalf("the agent's connection to the metadata address was not reset: %s", stdout.String())
	}
	n.took("(c) total (reconcile, checks)", time.Since(step))

	// --- (d) kars connect / status / audit through real port-forwards ---
	step = time.Now()
	kenv := []string{"KUBECONFIG=" + n.kubeconfig, "HOME=" + n.state}
	out, err := run(t, kenv, karsBin, "status", sbName)
	if err != nil {
		t.Fatalf("kars status: %v\n%s", err, out)
	}
	statusOut := out
	t.Logf("(d) kars status %s:\n%s", sbName, statusOut)
	if !readyLine.MatchString(statusOut) {
		t.Fatalf("kars status does not report Ready True:\n%s", statusOut)
	}
	connectStart := time.Now()
	out, err = run(t, kenv, karsBin, "connect", sbName, "-m", "hello from a real node")
	if err != nil {
		t.Fatalf("kars connect: %v\n%s", err, out)
	}
	n.took("(d) kars connect -m (port-forward + one turn)", time.Since(connectStart))
	t.Logf("(d) kars connect %s -m ...:\n%s", sbName, out)
	if strings.TrimSpace(out) == "" {
		t.Fatal("kars connect printed no answer")
	}
	out, err = run(t, kenv, karsBin, "audit", "tail", sbName)
	if err != nil {
		t.Fatalf("kars audit tail: %v\n%s", err, out)
	}
	t.Logf("(d) kars audit tail %s:\n%s", sbName, out)
	if !strings.Contains(out, "inference") {
		t.Fatalf("kars audit tail shows no inference entry for the turn:\n%s", out)
	}
	n.took("(d) total", time.Since(step))
	n.took("proof total (without teardown)", time.Since(total))
	t.Logf("timings:\n%s", strings.Join(n.timings, "\n"))
}

func (n *node) start(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := start(t, n.logs, name, env, bin, args...)
	n.procs = append(n.procs, p)
	return p
}

func (n *node) goRun(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("go", append([]string{"run"}, args...)...)
	cmd.Dir = n.repo
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (n *node) goBuild(t *testing.T, out, pkg string) (string, error) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir, cmd.Env = n.repo, append(os.Environ(), "CGO_ENABLED=0")
	b, err := cmd.CombinedOutput()
	return string(b), err
}

func (n *node) waitPodRunning(t *testing.T, ns, name string, kubelet *proc) time.Duration {
	t.Helper()
	return waitFor(t, "pod "+ns+"/"+name+" Running", 3*time.Minute, kubelet, func() (bool, error) {
		p, err := n.cs.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return p.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s: %s", p.Status.Phase, podProblems(p))
	})
}

// taskPID is the host PID of a running container, from containerd.
func (n *node) taskPID(t *testing.T, st *corev1.ContainerStatus) int {
	t.Helper()
	if st == nil || st.ContainerID == "" {
		t.Fatalf("container has no ID: %+v", st)
	}
	id := strings.TrimPrefix(st.ContainerID, "containerd://")
	out, err := run(t, nil, "ctr", "--address", n.sock, "--namespace", "k8s.io", "tasks", "ls")
	if err != nil {
		t.Fatalf("ctr tasks ls: %v\n%s", err, out)
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return pid
		}
	}
	t.Fatalf("no containerd task %s in\n%s", id, out)
	return 0
}

func (n *node) exec(ctx context.Context, ns, pod, container string, cmd []string, stdout, stderr io.Writer) error {
	req := n.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: cmd, Stdout: true, Stderr: true}, kscheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(n.cfg, http.MethodPost, req.URL())
	if err != nil {
		return err
	}
	return ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: stdout, Stderr: stderr})
}

// teardown stops everything in reverse order and removes what the node
// left behind: pods (through the kubelet, so CNI tears down their network),
// containerd's shims, mounts, network namespaces, the bridge, cgroups.
func (n *node) teardown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if os.Getenv("KARS_REAL_NODE_KEEP") == "1" {
		t.Logf("KARS_REAL_NODE_KEEP=1: leaving everything running in %s", n.state)
		return
	}
	begin := time.Now()
	defer func() { t.Logf("teardown took %.1fs", time.Since(begin).Seconds()) }()
	var kubelet, cd *proc
	for _, p := range n.procs {
		switch p.name {
		case "kars-controller":
			p.stop(10 * time.Second)
		case "kubelet":
			kubelet = p
		case "containerd":
			cd = p
		}
	}
	// Deleting the pods lets the kubelet stop them through the CRI.
	if n.cs != nil && kubelet != nil && kubelet.exited() == nil {
		for _, ns := range []string{"kars-proof", "realnode-trivial"} {
			// The workload first, or its ReplicaSet replaces the pods.
			_ = n.cs.AppsV1().Deployments(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
			_ = n.cs.AppsV1().ReplicaSets(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
			_ = n.cs.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}, metav1.ListOptions{})
		}
		deleted := time.Now()
		for time.Since(deleted) < time.Minute {
			out, _ := run(t, nil, "ctr", "--address", n.sock, "--namespace", "k8s.io", "tasks", "ls", "-q")
			pods, _ := n.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
			if strings.TrimSpace(out) == "" && (pods == nil || len(pods.Items) == 0) {
				break
			}
			time.Sleep(time.Second)
		}
	}
	kubelet.stop(20 * time.Second)
	// Whatever is left: kill its tasks.
	if cd != nil && cd.exited() == nil {
		out, _ := run(t, nil, "ctr", "--address", n.sock, "--namespace", "k8s.io", "tasks", "ls", "-q")
		for _, id := range strings.Fields(out) {
			_, _ = run(t, nil, "ctr", "--address", n.sock, "--namespace", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id)
			_, _ = run(t, nil, "ctr", "--address", n.sock, "--namespace", "k8s.io", "tasks", "delete", "-f", id)
		}
	}
	cd.stop(20 * time.Second)
	// containerd's shims outlive it; they name its socket.
	for _, pid := range pidsWithArg(n.sock) {
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Kill()
		}
	}
	for i := len(n.procs) - 1; i >= 0; i-- {
		n.procs[i].stop(15 * time.Second)
	}
	for ns := range listNetns() {
		if !n.netnsBefore[ns] && strings.HasPrefix(ns, "cni-") {
			p := filepath.Join("/var/run/netns", ns)
			_ = unmount(p)
			_ = os.Remove(p)
			t.Logf("teardown: removed leftover network namespace %s", ns)
		}
	}
	if n.bridge != "" {
		_, _ = run(t, nil, "ip", "link", "del", n.bridge)
	}
	for _, dir := range []string{filepath.Dir(n.sock), n.state} {
		for _, m := range mountsUnder(dir) {
			if err := unmount(m); err != nil {
				t.Logf("teardown: umount %s: %v", m, err)
			}
		}
	}
	for _, h := range cgroupHierarchies() {
		removeCgroupTree(filepath.Join(h, n.cgroup))
	}
	if t.Failed() {
		// Keep the logs of a failed run next to the state's name.
		keep := n.state + ".logs"
		_ = os.Rename(n.logs, keep)
		t.Logf("logs kept in %s", keep)
	}
	_ = os.RemoveAll(filepath.Dir(n.sock))
	if err := os.RemoveAll(n.state); err != nil {
		t.Logf("teardown: remove %s: %v", n.state, err)
	}
}

func installCRDs(t *testing.T, cfg *rest.Config, cl client.Client) {
	t.Helper()
	defs, err := crd.Definitions()
	if err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	if err := apiextensionsv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	crdClient, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range defs {
		if err := crdClient.Create(context.Background(), d.DeepCopy()); err != nil {
			t.Fatalf("install CRD %s: %v", d.Name, err)
		}
	}
	waitFor(t, "CRDs established", time.Minute, nil, func() (bool, error) {
		var l karsv1.KarsSandboxList
		err := cl.List(context.Background(), &l)
		return err == nil, err
	})
}

func mkNamespace(t *testing.T, cs *kubernetes.Clientset, name string) {
	t.Helper()
	_, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// The ServiceAccount admission plugin needs the namespace's default
	// ServiceAccount, which kube-controller-manager creates.
	waitFor(t, "ServiceAccount "+name+"/default", time.Minute, nil, func() (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts(name).Get(context.Background(), "default", metav1.GetOptions{})
		return err == nil, err
	})
}

func pushProbeImage(t *testing.T, probe string, base v1.Image, ref string, entrypoint []string, labels map[string]string) {
	t.Helper()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return tarFile(probe, "usr/local/bin/probe")
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg := cf.Config
	if entrypoint != nil {
		cfg.Entrypoint = entrypoint
	}
	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}
	for k, v := range labels {
		cfg.Labels[k] = v
	}
	if img, err = mutate.Config(img, cfg); err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(mustRef(t, ref), img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

func mustRef(t *testing.T, ref string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func containerStatus(sts []corev1.ContainerStatus, name string) *corev1.ContainerStatus {
	for i := range sts {
		if sts[i].Name == name {
			return &sts[i]
		}
	}
	return nil
}

// podProblems summarises why a pod is not running yet.
func podProblems(p *corev1.Pod) string {
	var out []string
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			out = append(out, string(c.Type)+": "+c.Message)
		}
	}
	for _, sts := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses} {
		for _, s := range sts {
			switch {
			case s.State.Waiting != nil:
				out = append(out, s.Name+" waiting: "+s.State.Waiting.Reason+" "+s.State.Waiting.Message)
			case s.State.Terminated != nil && s.State.Terminated.ExitCode != 0:
				out = append(out, fmt.Sprintf("%s terminated: exit %d %s", s.Name, s.State.Terminated.ExitCode, s.State.Terminated.Message))
			}
		}
	}
	return strings.Join(out, "; ")
}

func ptr[T any](v T) *T { return &v }
