package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/charmbracelet/x/ansi"
	"github.com/creack/pty"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/testenv"
)

// ptyScreen is what a program wrote to its pseudo-terminal, escape
// sequences removed.
type ptyScreen struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *ptyScreen) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

// since is the text written after offset mark, and the new mark.
func (s *ptyScreen) since(mark int) (string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buf.Bytes()
	return ansi.Strip(string(b[min(mark, len(b)):])), len(b)
}

// wait returns once one of wants was written after mark: its index.
func (s *ptyScreen) wait(t *testing.T, mark int, d time.Duration, wants ...string) int {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		text, _ := s.since(mark)
		for i, w := range wants {
			if strings.Contains(text, w) {
				return i
			}
		}
		if time.Now().After(deadline) {
			all, _ := s.since(0)
			t.Fatalf("none of %q on the screen within %s; screen:\n%s", wants, d, all[max(0, len(all)-6000):])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestOperatorUnderKarsDev is issue 22's smoke test: the real kars binary
// runs `kars operator` in a pseudo-terminal against kars dev; a sandbox
// created with kubectl appears on its screen; the agent's fetch of a host
// no rule allows is refused, the refusal shows in the live audit tail, and
// approving it from the TUI creates an EgressApproval that becomes Active
// and lets the next fetch through.
// findKubectl returns the machine's kubectl, else the one make test builds
// from the pinned modules (tools/kube/build-node.sh) when the machine has
// none. CI (KARS_REQUIRE_INTEROP=1) fails rather than skips without one.
func findKubectl(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("kubectl"); err == nil {
		return p
	}
	built := filepath.Join("..", "..", "tools", "kube", "bin", "node-v1.37.2", "kubectl")
	if _, err := os.Stat(built); err == nil {
		p, err := filepath.Abs(built)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	if os.Getenv("KARS_REQUIRE_INTEROP") == "1" {
		t.Fatal("no kubectl: not on PATH and not built (tools/kube/build-node.sh; make test builds it)")
	}
	t.Skip("kubectl is not installed (tools/kube/build-node.sh builds one)")
	return ""
}

func TestOperatorUnderKarsDev(t *testing.T) {
	const host = "198.51.100.20"
	kubectlBin := findKubectl(t)
	k, cl := startDev(t)
	startWebHosts(t, host)
	began := time.Now()

	cmd := exec.Command(filepath.Join(k.bin, "kars"), "operator", "--kubeconfig", k.kube)
	cmd.Env = append(k.env, "TERM=xterm-256color")
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 45, Cols: 160})
	if err != nil {
		t.Fatal(err)
	}
	var scr ptyScreen
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := tty.Read(buf)
			scr.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		tty.Close()
	})
	press := func(keys string) int {
		_, mark := scr.since(0)
		tty.Write([]byte(keys))
		return mark
	}
	scr.wait(t, 0, 30*time.Second, "· live")

	// The sandbox, exactly as `kars add` would create it, created by
	// kubectl: its namespace and policies first, then the KarsSandbox
	// alone, so that what is timed is the sandbox's creation.
	var rest, sandbox []string
	for _, doc := range strings.Split(k.must("add", "web", "--runtime", "kars-agent", "--dry-run"), "---\n") {
		switch {
		case strings.TrimSpace(doc) == "":
		case strings.Contains(doc, "\nkind: KarsSandbox\n"):
			sandbox = append(sandbox, doc)
		default:
			rest = append(rest, doc)
		}
	}
	dir := t.TempDir()
	kubectl := func(docs []string) {
		t.Helper()
		f := filepath.Join(dir, "objects.yaml")
		os.WriteFile(f, []byte("---\n"+strings.Join(docs, "---\n")), 0o600)
		if out, err := exec.Command(kubectlBin, "--kubeconfig", k.kube, "create", "-f", f).CombinedOutput(); err != nil {
			t.Fatalf("kubectl create: %v\n%s", err, out)
		}
	}
	if len(sandbox) != 1 {
		t.Fatalf("kars add --dry-run printed %d KarsSandboxes", len(sandbox))
	}
	kubectl(rest)
	// When the API server has it, as the test's own watch sees it.
	cfg, err := clientcmd.BuildConfigFromFlags("", k.kube)
	if err != nil {
		t.Fatal(err)
	}
	wcl, err := client.NewWithWatch(cfg, client.Options{Scheme: testenv.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	w, err := wcl.Watch(context.Background(), &karsv1.KarsSandboxList{}, client.InNamespace("kars-web"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	stored := make(chan time.Time, 1)
	go func() {
		for ev := range w.ResultChan() {
			if ev.Type == watch.Added {
				stored <- time.Now()
				return
			}
		}
	}()
	_, mark := scr.since(0)
	start := time.Now()
	kubectl(sandbox)
	returned := time.Now()
	// Generous bound; the measured numbers are logged, not asserted.
	scr.wait(t, mark, 10*time.Second, "kars-web/web")
	shown := time.Now()
	var inAPI time.Time
	select {
	case inAPI = <-stored:
	case <-time.After(20 * time.Second):
		t.Fatal("the client never saw the sandbox")
	}
	t.Logf("kubectl create of the KarsSandbox → on the operator's screen: %v from kubectl's start (kubectl returned after %v); %v after the test's own watch saw it",
		shown.Sub(start).Round(time.Millisecond), returned.Sub(start).Round(time.Millisecond), shown.Sub(inAPI).Round(time.Millisecond))

	waitStatus(t, k, "web", "Running")
	t.Logf("web Running %v after kars dev started", time.Since(began).Round(time.Second))
	fetch := func(url string) string {
		t.Helper()
		return chatJSON(t, k, "web", "use http_get for "+url).Reply
	}
	if r := fetch("http://" + host + "/first"); !strings.Contains(r, "refused by default rule") {
		t.Fatalf("a host no rule allows: %q", r)
	}

	// kars dev's own dev-agent sorts first: select web, then its audit
	// page shows the refusal; walk the entries until "a" offers to
	// approve it.
	scr.wait(t, press("j"), 5*time.Second, "── kars-web/web")
	scr.wait(t, press("5"), 10*time.Second, "egress:"+host+":80")
	press("\t")
	prompt := "approve egress to " + host + ":80 for kars-web/web for 24h"
	for i := 0; ; i++ {
		if i == 20 {
			t.Fatal("no audit entry offered the refused host for approval")
		}
		if scr.wait(t, press("a"), 5*time.Second, prompt, "only those can be approved here", "does not lift that") == 0 {
			break
		}
		press("j")
		time.Sleep(50 * time.Millisecond)
	}
	scr.wait(t, press("y"), 20*time.Second, "done: approve egress to "+host+":80 for kars-web/web")

	// The approval exists for that host and port, turns Active once the
	// router confirms it, and the TUI shows that.
	var approved *karsv1.EgressApproval
	for deadline := time.Now().Add(60 * time.Second); approved == nil; time.Sleep(200 * time.Millisecond) {
		var l karsv1.EgressApprovalList
		if err := cl.List(context.Background(), &l, client.InNamespace("kars-web")); err != nil {
			t.Fatal(err)
		}
		for i := range l.Items {
			if a := &l.Items[i]; a.Status.Phase == "Active" {
				approved = a
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no Active EgressApproval within 60 s: %+v", l.Items)
		}
	}
	if a := approved.Spec; a.Sandbox != "web" || len(a.Hosts) != 1 || a.Hosts[0] != host || len(a.Ports) != 1 || a.Ports[0] != 80 {
		t.Fatalf("approval %+v", a)
	}
	scr.wait(t, press("1"), 10*time.Second, "Active   "+host)
	waitFetch(t, fetch, "http://"+host+"/second", "hello from "+host+"/second")
	// The trust page has the router's own mesh view (kars dev always runs
	// the mesh; web has no peers).
	scr.wait(t, press("3"), 15*time.Second, "connected to kars-mesh · threshold 500 · 0 peers")

	press("q")
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("kars operator exited: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("q did not quit")
	}
	t.Logf("the test's own time after kars dev started: %v", time.Since(began).Round(time.Second))
}
