package localsubstrate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/sandbox/local"
)

// Under `kars dev` an McpServer with an image runs as a process in the
// network namespace of each sandbox pod that lists it (local.Sidecar), as
// UID 1003 with the router's confinement: the router reaches it on
// 127.0.0.1:<port>, the agent cannot (the egress guard's owner rules and
// Landlock). As with runtime images, the image itself is not unpacked:
// the server's command runs from this machine.

var _ controller.McpRunner = (*Substrate)(nil)

// RunMcpServer implements controller.McpRunner: nothing starts here (each
// sandbox pod starts its own copy when it is realised); it checks that the
// command can run and reports the in-pod endpoint.
func (s *Substrate) RunMcpServer(_ context.Context, m *karsv1.McpServer) (controller.McpObservation, error) {
	if _, err := mcpProcess(m); err != nil {
		return controller.McpObservation{}, err
	}
	return controller.McpObservation{Endpoint: localMcpEndpoint(m), Ready: true,
		Message: "runs in the pod of each sandbox it lists"}, nil
}

func localMcpEndpoint(m *karsv1.McpServer) string {
	port := m.Spec.Port
	if port == 0 {
		port = render.DefaultMcpPort
	}
	return fmt.Sprintf("http://127.0.0.1:%d%s", port, render.McpPath(m))
}

// mcpProcess is the local program of an McpServer kars runs: its command
// (resolved on this machine's PATH) and args, with its environment.
func mcpProcess(m *karsv1.McpServer) (local.Process, error) {
	if len(m.Spec.Command) == 0 {
		return local.Process{}, fmt.Errorf("kars dev runs an McpServer's command on this machine (it does not unpack images): set spec.command, for example [node, /path/to/server/index.js]")
	}
	path := m.Spec.Command[0]
	if !filepath.IsAbs(path) {
		p, err := exec.LookPath(path)
		if err != nil {
			return local.Process{}, fmt.Errorf("McpServer %s: command %q is not on this machine's PATH: %w", m.Name, path, err)
		}
		path = p
	}
	args := append(append([]string(nil), m.Spec.Command[1:]...), m.Spec.Args...)
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	for _, e := range render.McpEnv(m) {
		env = append(env, e.Name+"="+e.Value)
	}
	return local.Process{Path: path, Args: args, Env: env}, nil
}

// sidecar is a running McpServer process in a pod, with the hash of what
// it runs.
type sidecar struct {
	sc   *local.Sidecar
	hash string
}

// syncSidecars makes the pod run exactly the McpServers of desired that
// kars runs (image servers; url servers run elsewhere): new ones start,
// changed ones restart, removed ones stop. A sidecar that exits is
// restarted at the next reconcile, which its exit triggers.
func (s *Substrate) syncSidecars(ctx context.Context, sb *karsv1.KarsSandbox, e *entry, desired *render.Sandbox) error {
	want := map[string]karsv1.McpServer{}
	for _, m := range desired.Bindings.MCP {
		if m.Spec.Image != "" && m.Spec.URL == "" {
			want[m.Name] = m
		}
	}
	s.mu.Lock()
	if e.sidecars == nil {
		e.sidecars = map[string]*sidecar{}
	}
	have := e.sidecars
	s.mu.Unlock()
	for name, sc := range have {
		m, ok := want[name]
		if ok && sc.hash == mcpHash(m) && !done(sc.sc) {
			delete(want, name)
			continue
		}
		_ = sc.sc.Stop(ctx)
		s.mu.Lock()
		delete(e.sidecars, name)
		s.mu.Unlock()
	}
	for name, m := range want {
		proc, err := mcpProcess(&m)
		if err != nil {
			return err
		}
		sc, err := e.pod.StartSidecar(name, proc)
		if err != nil {
			return fmt.Errorf("McpServer %s: %w", name, err)
		}
		s.mu.Lock()
		e.sidecars[name] = &sidecar{sc: sc, hash: mcpHash(m)}
		s.mu.Unlock()
		s.o.Log.Info("MCP server started in the pod", "sandbox", sb.Namespace+"/"+sb.Name, "mcpServer", name, "endpoint", localMcpEndpoint(&m))
		go func() {
			select {
			case <-sc.Done():
				s.nudgeAt(sb, time.Now().Add(2*time.Second))
			case <-e.pod.Done():
			}
		}()
	}
	return nil
}

func done(sc *local.Sidecar) bool {
	select {
	case <-sc.Done():
		return true
	default:
		return false
	}
}

func mcpHash(m karsv1.McpServer) string {
	b, _ := json.Marshal(struct {
		Command, Args []string
		Env           []karsv1.McpEnvVar
		Port          int32
	}{m.Spec.Command, m.Spec.Args, m.Spec.Env, m.Spec.Port})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}
