package operator

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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/blueprint"
	"github.com/kars-io/kars/internal/testenv"
)

// screen collects what a program writes to its terminal, without escape
// sequences.
type screen struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *screen) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *screen) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return ansi.Strip(s.buf.String())
}

func (s *screen) wait(t *testing.T, what, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(s.text(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q not on the screen within 20 s; screen:\n%s", what, want, s.text())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The real kars binary in a pseudo-terminal against a real API server: a
// sandbox created with a client appears, and approving an SRE action with
// the keyboard records the approval.
func TestOperatorInAPseudoTerminal(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	bin := filepath.Join(t.TempDir(), "kars")
	build := exec.Command("go", "build", "-o", bin, "github.com/kars-io/kars/cmd/kars")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	cmd := exec.Command(bin, "operator", "--kubeconfig", env.Kubeconfig)
	cmd.Env = append(os.Environ(), "TERM=xterm-256color")
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 140})
	if err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	var scr screen
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
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		tty.Close()
	})
	scr.wait(t, "start", "· live")

	ctx := context.Background()
	objs, err := blueprint.Build(blueprint.Options{Name: "bot", Target: karsv1.ModelTarget{Provider: karsv1.ProviderOffline, Model: "kars-offline"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if err := env.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	created := time.Now()
	scr.wait(t, "new sandbox", "kars-bot/bot")
	t.Logf("sandbox created → on the terminal: %v", time.Since(created))

	a := &karsv1.KarsSREAction{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-bot", Name: "restart-bot"}, Spec: karsv1.KarsSREActionSpec{
		Action: karsv1.SRERestartSandbox, Target: karsv1.SREActionTarget{Kind: "KarsSandbox", Name: "bot"}, Reason: "stuck on a tool call",
		ProposedBy: "sre-agent", Approval: karsv1.SREApproval{State: "Pending"}}}
	if err := env.Client.Create(ctx, a); err != nil {
		t.Fatal(err)
	}
	scr.wait(t, "proposal", "restart-bot")
	for _, k := range []string{"\t", "a"} {
		tty.Write([]byte(k))
		time.Sleep(100 * time.Millisecond)
	}
	scr.wait(t, "prompt", "approve kars-bot/restart-bot (RestartSandbox on bot)? [y/N]")
	tty.Write([]byte("y"))
	scr.wait(t, "result", "done: approve kars-bot/restart-bot")
	var got karsv1.KarsSREAction
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(a), &got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.Approval.State != "Approved" || got.Spec.Approval.DecidedBy != "kars-admin" {
		t.Fatalf("approval %+v", got.Spec.Approval)
	}
	tty.Write([]byte("q"))
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("kars operator exited: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("q did not quit")
	}
}
