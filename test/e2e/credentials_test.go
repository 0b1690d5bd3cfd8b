package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/botapitest"
	"github.com/kars-io/kars/internal/controlplane"
	"github.com/kars-io/kars/internal/devenv"
	"github.com/kars-io/kars/internal/egress/credbind"
	"github.com/kars-io/kars/internal/render"
)

// e2eBotToken is the fake bot's real token: it must reach the fake
// Telegram and nothing the agent can read.
const e2eBotToken = "7012345678:AAHe2e-telegram-token_abcdefghijklmnop"

// e2eGitHubToken is a GitHub-style bearer token, bound the same way.
const e2eGitHubToken = "ghp_e2eGitHubStyleToken0123456789abcdef"

// publicCA is a CA standing in for the public CAs that issue real hosts'
// certificates: the router trusts it (kars dev's SSL_CERT_FILE), the
// agent's own trust bundle does not hold it.
type publicCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newPublicCA(t *testing.T) *publicCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "e2e public CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &publicCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *publicCA) serverTLS(t *testing.T, ip string) *tls.Config {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: ip},
		IPAddresses: []net.IP{net.ParseIP(ip)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, NextProtos: []string{"http/1.1"}}
}

// TestTelegramCredentialBrokered: under kars dev, a CredentialBinding binds
// a bot token to a fake Telegram Bot API on HTTPS (its own network
// namespace, a certificate from a CA the router trusts). The reference
// agent, holding only the placeholder, calls getMe and sendMessage with
// its http_get tool: its TLS connection is terminated by the router with
// the sandbox CA (which the agent's trust bundle holds), the fake sees the
// real token, and nothing the agent can read — its environment, its
// memory, its workspace — nor the router's audit log holds it. The
// placeholder on another path or sent to another host is refused and
// audited; deleting the binding cuts the token off.
func TestTelegramCredentialBrokered(t *testing.T) {
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
	const tgIP, otherIP, ghIP = "198.51.100.30", "198.51.100.31", "198.51.100.32"
	ca := newPublicCA(t)
	bot := botapitest.New(e2eBotToken, "kars_e2e_bot")
	var (
		otherMu    sync.Mutex
		otherPaths []string
		ghAuth     []string
	)
	// A GitHub-style API that echoes the Authorization it got, as a
	// careless or hostile service might: the router scrubs it.
	github := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		otherMu.Lock()
		ghAuth = append(ghAuth, r.Header.Get("Authorization"))
		otherMu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"full_name":"kars-io/kars","you_sent":%q}`, r.Header.Get("Authorization"))
	})
	startNetnsHosts(t, []string{tgIP, otherIP, ghIP}, func(ip string) (net.Listener, *http.Server, error) {
		if ip == ghIP {
			l, err := net.Listen("tcp", ip+":443")
			if err != nil {
				return nil, nil, err
			}
			return tls.NewListener(l, ca.serverTLS(t, ip)), &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: github}, nil
		}
		if ip == tgIP {
			l, err := net.Listen("tcp", ip+":443")
			if err != nil {
				return nil, nil, err
			}
			return tls.NewListener(l, ca.serverTLS(t, ip)), &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: bot}, nil
		}
		l, err := net.Listen("tcp", ip+":80")
		return l, &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			otherMu.Lock()
			otherPaths = append(otherPaths, r.URL.Path)
			otherMu.Unlock()
			fmt.Fprintf(w, "collected %s", r.URL.Path)
		})}, err
	})

	home := t.TempDir()
	os.Chmod(home, 0o711)
	// The router verifies upstreams with kars dev's SSL_CERT_FILE: the
	// system's roots and the stand-in public CA.
	system, _ := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	roots := filepath.Join(home, "roots.pem")
	if err := os.WriteFile(roots, append(system, ca.pem...), 0o644); err != nil {
		t.Fatal(err)
	}
	k := &kars{t: t, bin: buildBinaries(t), dev: filepath.Join(home, "dev")}
	k.kube = filepath.Join(k.dev, "cluster", "kubeconfig")
	k.env = append(os.Environ(), "KARS_HOME="+home, "KUBECONFIG=", "OPENAI_API_KEY=", "AZURE_OPENAI_ENDPOINT=", "GITHUB_TOKEN=", "OLLAMA_HOST=",
		"SSL_CERT_FILE="+roots)
	t.Cleanup(func() {
		k.run("dev", "down")
		_ = os.RemoveAll(devenv.Paths{Dir: k.dev}.PodRoot())
	})
	k.must("dev", "--assets", assets)
	k.must("add", "tg", "--runtime", "kars-agent")
	waitStatus(t, k, "tg", "Running")

	cl := kubeClient(t, k)
	ctx := context.Background()
	const ns = "kars-tg"
	if err := cl.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tg-bot"},
		StringData: map[string]string{"token": e2eBotToken, "gh": e2eGitHubToken}}); err != nil {
		t.Fatal(err)
	}
	cb := &karsv1.CredentialBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "telegram"}, Spec: karsv1.CredentialBindingSpec{
		SandboxRef: karsv1.LocalObjectReference{Name: "tg"},
		SecretRef:  karsv1.SecretKeyReference{Name: "tg-bot", Key: "token"},
		Endpoints:  []string{"https://" + tgIP + "/bot"},
		Placement:  karsv1.CredentialPlacement{Type: karsv1.PlacementPath},
		AgentEnv:   "TELEGRAM_BOT_TOKEN",
	}}
	if err := cl.Create(ctx, cb); err != nil {
		t.Fatal(err)
	}
	if err := cl.Create(ctx, &karsv1.CredentialBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "github"}, Spec: karsv1.CredentialBindingSpec{
		SandboxRef: karsv1.LocalObjectReference{Name: "tg"},
		SecretRef:  karsv1.SecretKeyReference{Name: "tg-bot", Key: "gh"},
		Endpoints:  []string{"https://" + ghIP + "/repos/"},
		Placement:  karsv1.CredentialPlacement{Type: karsv1.PlacementHeader, Name: "Authorization", ValuePrefix: "Bearer "},
		AgentEnv:   "GITHUB_TOKEN",
	}}); err != nil {
		t.Fatal(err)
	}
	ghPH := waitBound(t, cl, ns, "github")
	ph := waitBound(t, cl, ns, "telegram")
	if !strings.HasPrefix(ph, credbind.Marker) {
		t.Fatalf("placeholder %q", ph)
	}
	// The agent's pod is rebuilt with the placeholder and the trust bundle.
	waitAgentEnv(t, "TELEGRAM_BOT_TOKEN="+ph)
	waitStatus(t, k, "tg", "Running")

	fetch := func(url string) string {
		t.Helper()
		return chatJSON(t, k, "tg", "use http_get for "+url).Reply
	}
	base := "https://" + tgIP + "/bot" + ph
	// getMe: the agent's TLS to the bound host is terminated by the
	// router, whose certificate the agent trusts through its bundle.
	waitFetch(t, fetch, base+"/getMe", `"username":"kars_e2e_bot"`)
	if r := fetch(base + "/sendMessage?chat_id=42&text=hello-from-the-sandbox"); !strings.Contains(r, "HTTP 200") {
		t.Fatalf("sendMessage: %q", r)
	}
	if sent := sentTo(bot, 42); len(sent) != 1 || sent[0] != "hello-from-the-sandbox" {
		t.Fatalf("the fake Telegram got %q for chat 42", sent)
	}
	sawToken := false
	for _, p := range bot.Paths() {
		if strings.Contains(p, ph) {
			t.Errorf("the fake Telegram saw the placeholder: %s", p)
		}
		sawToken = sawToken || strings.HasPrefix(p, "/bot"+e2eBotToken+"/")
	}
	if !sawToken {
		t.Fatalf("the fake Telegram never saw the real token: %v", bot.Paths())
	}

	// The GitHub-style token: http_get attaches the placeholder as a
	// bearer token on the bound prefix; the API got the real token and the
	// echo of it reaches the agent as the placeholder.
	if r := fetch("https://" + ghIP + "/repos/kars-io/kars"); !strings.Contains(r, "HTTP 200") || !strings.Contains(r, `"you_sent":"Bearer `+ghPH+`"`) {
		t.Errorf("GitHub-style call: %q", r)
	}
	otherMu.Lock()
	if len(ghAuth) != 1 || ghAuth[0] != "Bearer "+e2eGitHubToken {
		t.Errorf("the GitHub-style API got Authorization %q", ghAuth)
	}
	otherMu.Unlock()

	// The agent's Telegram channel (on since its pod got the binding): a
	// message a user sends the bot is answered through the router.
	bot.UserSays(99, "use the calculator to compute 6*7")
	for deadline := time.Now().Add(2 * time.Minute); len(sentTo(bot, 99)) == 0 && time.Now().Before(deadline); time.Sleep(time.Second) {
	}
	if sent := sentTo(bot, 99); len(sent) != 1 || !strings.Contains(sent[0], "42") {
		t.Fatalf("the agent's answer on Telegram: %q", sent)
	}

	// Misuse: the placeholder on another path of the bound host, and in a
	// plain-HTTP request to another host the agent may reach.
	k.must("egress", "tg", "--approve", otherIP, "--ports", "80", "--reason", "e2e misuse target", "--ticket", "E2E-18", "--ttl", "1h")
	waitFetch(t, fetch, "http://"+otherIP+"/hello", "collected /hello")
	for _, u := range []string{"https://" + tgIP + "/x/bot" + ph + "/getMe", "http://" + otherIP + "/bot" + ph + "/steal"} {
		if r := fetch(u); !strings.Contains(r, "HTTP 403") || !strings.Contains(r, "refused") {
			t.Errorf("misplaced placeholder %s: %q", u, r)
		}
	}
	for _, p := range bot.Paths() {
		if strings.HasPrefix(p, "/x/") {
			t.Errorf("a refused request reached the fake Telegram: %s", p)
		}
	}
	otherMu.Lock()
	for _, p := range otherPaths {
		if strings.Contains(p, "steal") {
			t.Errorf("the placeholder reached the other host: %s", p)
		}
	}
	otherMu.Unlock()

	// Nothing the agent can read holds the token.
	paths := devenv.Paths{Dir: k.dev}
	agents := agentProcesses(t, ph)
	if len(agents) == 0 {
		t.Fatal("no process holds the placeholder in its environment")
	}
	for _, pid := range agents {
		assertMemoryLacks(t, pid, e2eBotToken, e2eGitHubToken)
	}
	assertTreeLacks(t, paths.Workspaces(), e2eBotToken, e2eGitHubToken)
	assertTreeLacks(t, paths.RouterStates(), e2eBotToken, e2eGitHubToken) // the audit log and the CA
	findings := 0
	filepath.Walk(paths.RouterStates(), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && strings.Contains(p, "audit") {
			b, _ := os.ReadFile(p)
			findings += bytes.Count(b, []byte(`"finding":"true"`))
		}
		return nil
	})
	if findings < 2 {
		t.Errorf("%d credential findings in the audit log, want the 2 misuses", findings)
	}
	// Nothing but the API server's store and the router's own copy of the
	// Secret holds a token — not kars dev's or the pods' logs, not any
	// other file of a pod — and the router's copy is not readable to the
	// agent's UID.
	copies := 0
	for _, root := range []string{k.dev, paths.PodRoot()} {
		filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return nil
			}
			if fi.IsDir() {
				if p == paths.Cluster() {
					return filepath.SkipDir // etcd: where Secrets live
				}
				return nil
			}
			if !fi.Mode().IsRegular() {
				return nil
			}
			b, _ := os.ReadFile(p)
			if !bytes.Contains(b, []byte(e2eBotToken)) && !bytes.Contains(b, []byte(e2eGitHubToken)) {
				return nil
			}
			if !strings.Contains(p, "/router/") || !strings.Contains(p, render.RouterCredentialDir+"/tg-bot/") {
				t.Errorf("%s holds a token", p)
			} else if copies++; readableBy(p, 1000) {
				t.Errorf("%s holds a token and UID 1000 can read it", p)
			}
			return nil
		})
	}
	if copies == 0 {
		t.Error("found no router copy of the Secret: the walk looked in the wrong places")
	}

	// Revocation: deleting the binding cuts the token off.
	if err := cl.Delete(ctx, cb); err != nil {
		t.Fatal(err)
	}
	// The agent's pod is rebuilt without the placeholder: ask until it
	// answers again.
	// Refused by the egress proxy — the binding was what allowed the host,
	// so the CONNECT gets 403, which Go's client reports as "Forbidden" —
	// or, on a connection still open, for want of a binding.
	refused := func(out string) bool {
		return strings.Contains(out, `\"https://`+tgIP+`/bot`+ph+`/getMe\": Forbidden`) ||
			strings.Contains(out, "HTTP 403") && strings.Contains(out, "refused")
	}
	var r string
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(2 * time.Second) {
		out, code := k.run("connect", "tg", "-m", "use http_get for "+base+"/getMe", "--json")
		if r = out; code == 0 && refused(out) {
			break
		}
	}
	if !refused(r) {
		t.Errorf("after revocation: %s", r)
	}
	// From then on the token never reaches Telegram (the agent's channel
	// is off with its binding gone).
	revoked := len(bot.Paths())
	time.Sleep(5 * time.Second)
	for _, p := range bot.Paths()[revoked:] {
		if strings.Contains(p, e2eBotToken) {
			t.Errorf("after revocation the token reached Telegram: %s", p)
		}
	}
}

// sentTo is the text of the messages the bot sent to chat.
func sentTo(bot *botapitest.Server, chat int64) []string {
	var out []string
	for _, m := range bot.Sent() {
		if m.Chat.ID == chat {
			out = append(out, m.Text)
		}
	}
	return out
}

// waitBound waits for a CredentialBinding to be Ready and returns its
// placeholder.
func waitBound(t *testing.T, cl client.Client, ns, name string) string {
	t.Helper()
	var cb karsv1.CredentialBinding
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		if err := cl.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &cb); err != nil {
			t.Fatal(err)
		}
		if meta.IsStatusConditionTrue(cb.Status.Conditions, karsv1.ConditionReady) && cb.Status.Placeholder != "" {
			return cb.Status.Placeholder
		}
	}
	t.Fatalf("CredentialBinding %s/%s never bound: %+v", ns, name, cb.Status)
	return ""
}

// agentProcesses are the processes whose environment holds needle.
func agentProcesses(t *testing.T, needle string) []int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err == nil && bytes.Contains(b, []byte(needle)) {
			if bytes.Contains(b, []byte(e2eBotToken)) || bytes.Contains(b, []byte(e2eGitHubToken)) {
				t.Errorf("process %d's environment holds a token", pid)
			}
			out = append(out, pid)
		}
	}
	return out
}

func waitAgentEnv(t *testing.T, kv string) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		if len(agentProcesses(t, kv)) > 0 {
			return
		}
	}
	t.Fatalf("no agent process with %s", kv)
}

// assertMemoryLacks reads every readable mapping of pid (as root reads
// /proc/pid/mem) and fails if secret is in one.
func assertMemoryLacks(t *testing.T, pid int, secrets ...string) {
	t.Helper()
	maps, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	scanned := 0
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[1][0] != 'r' {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		a, _ := strconv.ParseUint(lo, 16, 64)
		b, _ := strconv.ParseUint(hi, 16, 64)
		if b-a > 1<<30 {
			continue
		}
		buf := make([]byte, b-a)
		n, _ := mem.ReadAt(buf, int64(a))
		scanned += n
		for _, secret := range secrets {
			if bytes.Contains(buf[:n], []byte(secret)) {
				t.Errorf("process %d holds a token in its memory (%s)", pid, sc.Text())
			}
		}
	}
	if scanned == 0 {
		t.Errorf("read nothing of process %d's memory", pid)
	}
}

func assertTreeLacks(t *testing.T, root string, secrets ...string) {
	t.Helper()
	files := 0
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		files++
		b, _ := os.ReadFile(p)
		for _, secret := range secrets {
			if bytes.Contains(b, []byte(secret)) {
				t.Errorf("%s holds a token", p)
			}
		}
		return nil
	})
	if files == 0 {
		t.Errorf("no files under %s", root)
	}
}

// readableBy reports whether uid (not root, in no group of the file) can
// read p: the file's other-read bit and every parent's other-search bit,
// or ownership.
func readableBy(p string, uid uint32) bool {
	for d := p; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return false
		}
		owner := false
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			owner = st.Uid == uid
		}
		need := os.FileMode(0o001)
		if d == p {
			need = 0o004
		}
		if owner {
			need <<= 6
		}
		if fi.Mode().Perm()&need == 0 {
			return false
		}
		if d == "/" {
			return true
		}
	}
}
