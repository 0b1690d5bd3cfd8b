package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controlplane"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/egress/allowlist"
	"github.com/kars-io/kars/internal/egress/artifact"
	"github.com/kars-io/kars/internal/testenv"
)

// startWebHosts serves plain HTTP on TEST-NET-2 addresses in a network
// namespace the test creates, routed from the host through a veth pair.
func startWebHosts(t *testing.T, ips ...string) {
	t.Helper()
	startNetnsHosts(t, ips, func(ip string) (net.Listener, *http.Server, error) {
		l, err := net.Listen("tcp", ip+":80")
		return l, &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s%s", r.Host, r.URL.Path)
		})}, err
	})
}

// startNetnsHosts gives a network namespace the test creates the TEST-NET-2
// addresses ips, routed from the host through a veth pair, and starts the
// server serve returns for each, listening inside it.
func startNetnsHosts(t *testing.T, ips []string, serve func(ip string) (net.Listener, *http.Server, error)) {
	t.Helper()
	ch := make(chan netns.NsHandle, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		ns, err := netns.New()
		if err != nil {
			close(ch)
			return
		}
		ch <- ns
	}()
	ns, ok := <-ch
	if !ok {
		t.Skip("cannot create a network namespace")
	}
	t.Cleanup(func() { ns.Close() })
	hostIf := fmt.Sprintf("kege%d", time.Now().UnixNano()%100000)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}); err != nil {
		t.Fatal(err)
	}
	hl, _ := netlink.LinkByName(hostIf)
	t.Cleanup(func() { netlink.LinkDel(hl) })
	a, _ := netlink.ParseAddr("198.51.100.1/24")
	netlink.AddrAdd(hl, a)
	netlink.LinkSetUp(hl)
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth, _ := h.LinkByName("eth0")
	for _, ip := range ips {
		a, _ := netlink.ParseAddr(ip + "/24")
		h.AddrAdd(eth, a)
	}
	h.LinkSetUp(eth)
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP("198.51.100.1")}); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		for _, ip := range ips {
			l, srv, err := serve(ip)
			if err != nil {
				errc <- err
				return
			}
			go srv.Serve(l)
			t.Cleanup(func() { srv.Close() })
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestEgressLearnApproveEnforce: under kars dev, a sandbox in Learn mode
// fetches a host through the router; kars egress lists it, approves
// another, and enforces a signed allowlist pushed to the dev registry;
// from then on only listed and approved hosts are reached. An unsigned
// artifact and one signed with an untrusted key each fail closed with
// their reason.
func TestEgressLearnApproveEnforce(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	if os.Geteuid() != 0 {
		t.Skip("kars dev's local sandboxes need root (CI runs as root)")
	}
	assets, err := controlplane.AssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	const learned, approved, other = "198.51.100.10", "198.51.100.11", "198.51.100.12"
	startWebHosts(t, learned, approved, other)

	home := t.TempDir()
	os.Chmod(home, 0o711)
	k := &kars{t: t, bin: buildBinaries(t), dev: filepath.Join(home, "dev")}
	k.kube = filepath.Join(k.dev, "cluster", "kubeconfig")
	k.env = append(os.Environ(), "KARS_HOME="+home, "KUBECONFIG=", "OPENAI_API_KEY=", "AZURE_OPENAI_ENDPOINT=", "GITHUB_TOKEN=", "OLLAMA_HOST=")
	t.Cleanup(func() {
		k.run("dev", "down")
		_ = os.RemoveAll(devenv.Paths{Dir: k.dev}.PodRoot())
	})
	k.must("dev", "--assets", assets)
	k.must("add", "web", "--runtime", "kars-agent", "--learn-egress")
	waitStatus(t, k, "web", "Running")

	fetch := func(url string) string {
		t.Helper()
		return chatJSON(t, k, "web", "use http_get for "+url).Reply
	}
	// Learn: the agent reaches a host no list names, and it is recorded;
	// kars trace shows it from the kernel (eBPF) and from the router.
	trace := startTrace(t, k, "web")
	if r := fetch("http://" + learned + "/first"); !strings.Contains(r, "hello from "+learned+"/first") {
		t.Fatalf("Learn mode fetch: %q", r)
	}
	trace.expect(t, `"source":"kernel"`, `"comm":"kars-agent"`, `"dest":"127.0.0.1:8443"`, `"verdict":"accepted"`)
	trace.expect(t, `"source":"router"`, `"dest":"`+learned+`:80"`, `"verdict":"allow"`, `"rule":"learn"`)
	out := k.must("egress", "web", "--learned")
	if !strings.Contains(out, learned) || !strings.Contains(out, "learn") {
		t.Fatalf("--learned does not list %s:\n%s", learned, out)
	}
	// Approve a second host, then enforce.
	out = k.must("egress", "web", "--approve", approved, "--ports", "80", "--reason", "e2e approval", "--ticket", "E2E-1", "--ttl", "1h")
	if !strings.Contains(out, "created EgressApproval") {
		t.Fatalf("--approve: %s", out)
	}
	registry := devenv.RegistryAddr + "/policy/egress/web"
	out = k.must("egress", "web", "--enforce", "--registry", registry)
	if !strings.Contains(out, learned+":80") || !strings.Contains(out, approved+":80") || !strings.Contains(out, "egress mode Strict") {
		t.Fatalf("--enforce: %s", out)
	}
	waitAllowlist(t, k, "web", "True", "Verified")
	waitFetch(t, fetch, "http://"+learned+"/enforced", "hello from "+learned)
	waitFetch(t, fetch, "http://"+approved+"/approved", "hello from "+approved)
	waitFetch(t, fetch, "http://"+other+"/never", "refused by default rule")
	if out := k.must("egress", "web"); !strings.Contains(out, "egress mode Strict") || !strings.Contains(out, "approval web-") {
		t.Errorf("kars egress web: %s", out)
	}

	// Fail closed: an unsigned artifact, then one signed with a key the
	// controller does not trust.
	cl := kubeClient(t, k)
	reg, repo, _ := artifact.SplitReference(registry)
	// Two different lists (the same content would be the same digest).
	doc, _ := allowlist.NewDocument("kars-web/web unsigned", []allowlist.Entry{{Host: other, Ports: []uint16{80}}})
	unsigned, err := artifact.PushAllowlist(context.Background(), artifact.Options{PlainHTTP: true}, reg, repo, "", doc.Marshal(), nil)
	if err != nil {
		t.Fatal(err)
	}
	wrongKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	doc, _ = allowlist.NewDocument("kars-web/web foreign", []allowlist.Entry{{Host: other, Ports: []uint16{80}}})
	foreign, err := artifact.PushAllowlist(context.Background(), artifact.Options{PlainHTTP: true}, reg, repo, "", doc.Marshal(), wrongKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ digest, reason string }{{unsigned, "Unsigned"}, {foreign, "SignatureInvalid"}} {
		setAllowlistDigest(t, cl, c.digest)
		waitAllowlist(t, k, "web", "False", c.reason)
		// The listed host is not reached: no allowlist reaches the router.
		waitFetch(t, fetch, "http://"+other+"/untrusted", "refused by default rule")
		waitFetch(t, fetch, "http://"+learned+"/untrusted", "refused by default rule")
		// The approval is independent of the allowlist.
		waitFetch(t, fetch, "http://"+approved+"/still", "hello from "+approved)
	}
}

func kubeClient(t *testing.T, k *kars) client.Client {
	ctrllog.SetLogger(logr.Discard())
	cfg, err := clientcmd.BuildConfigFromFlags("", k.kube)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(cfg, client.Options{Scheme: testenv.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func setAllowlistDigest(t *testing.T, cl client.Client, digest string) {
	t.Helper()
	var sb karsv1.KarsSandbox
	if err := cl.Get(context.Background(), client.ObjectKey{Namespace: "kars-web", Name: "web"}, &sb); err != nil {
		t.Fatal(err)
	}
	before := sb.DeepCopy()
	sb.Spec.NetworkPolicy.AllowlistRef.Digest = karsv1.Digest(digest)
	if err := cl.Patch(context.Background(), &sb, client.MergeFrom(before)); err != nil {
		t.Fatal(err)
	}
}

// waitAllowlist waits for the sandbox's AllowlistVerified condition.
func waitAllowlist(t *testing.T, k *kars, name, status, reason string) {
	t.Helper()
	want := fmt.Sprintf("AllowlistVerified  %s    %s", status, reason)
	deadline := time.Now().Add(90 * time.Second)
	var out string
	for time.Now().Before(deadline) {
		out, _ = k.run("status", name)
		if strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " ")) {
			return
		}
		time.Sleep(2 * time.Second)
	}
	t.Fatalf("AllowlistVerified never became %s/%s:\n%s", status, reason, out)
}

// waitFetch retries a fetch until its reply contains want: the router
// reloads its egress state within a second or two of the controller
// writing it.
func waitFetch(t *testing.T, fetch func(string) string, url, want string) {
	t.Helper()
	var r string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Second) {
		if r = fetch(url); strings.Contains(r, want) {
			return
		}
	}
	t.Fatalf("fetch %s: %q, want %q", url, r, want)
}

// traceOutput is a running `kars trace --network --json`.
type traceOutput struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *traceOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func startTrace(t *testing.T, k *kars, name string) *traceOutput {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &traceOutput{}
	cmd := exec.CommandContext(ctx, filepath.Join(k.bin, "kars"), "trace", name, "--network", "--json", "--recent", "0")
	cmd.Env = k.env
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	// Attached once it says so.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		out.mu.Lock()
		s := out.buf.String()
		out.mu.Unlock()
		if strings.Contains(s, "kernel view: eBPF") {
			return out
		}
		if strings.Contains(s, "kernel view unavailable") {
			t.Fatalf("kars trace: %s", s)
		}
	}
	t.Fatalf("kars trace never attached: %s", out.buf.String())
	return nil
}

// expect waits for a trace line holding every part.
func (o *traceOutput) expect(t *testing.T, parts ...string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		o.mu.Lock()
		lines := strings.Split(o.buf.String(), "\n")
		o.mu.Unlock()
		for _, l := range lines {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(l, p)
			}
			if ok {
				return
			}
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	t.Errorf("kars trace printed no line with %q:\n%s", parts, o.buf.String())
}
