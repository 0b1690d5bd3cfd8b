package localsubstrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/runtimeenv"
	"github.com/kars-io/kars/internal/sandbox/local"
	"github.com/kars-io/kars/runtimes"
)

// runtimeID maps a catalog image (kars-runtime-<id>[-python3.N]:<tag>) to
// the runtime adapter it packages, or "" when the image is not one of
// kars's runtime images.
func runtimeID(image string) string {
	repo := image
	if i := strings.IndexByte(repo, '@'); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
		repo = repo[:i]
	}
	id, ok := strings.CutPrefix(path.Base(repo), "kars-runtime-")
	if !ok {
		return ""
	}
	// The OpenAI Agents image carries the Python version it was built for;
	// locally the environment's interpreter is the machine's.
	if i := strings.LastIndex(id, "-python3."); i > 0 {
		id = id[:i]
	}
	if _, ok := runtimes.MustLoad().Runtimes[id]; !ok {
		return ""
	}
	return id
}

// errPreparing says a runtime's environment is not ready yet; Realize
// reports it and reconciles again when the environment is.
type errPreparing struct {
	runtime  string
	progress string
	failure  *runtimeenv.Error
	retryAt  time.Time
}

func (e *errPreparing) Error() string {
	if e.failure != nil {
		return fmt.Sprintf("%v; retrying in %s", e.failure, time.Until(e.retryAt).Round(time.Second))
	}
	return e.progress
}

// envs prepares runtime environments in the background, one preparation
// per runtime at a time, and retries failures with backoff. Sandboxes ask
// again on every reconcile; waiters are nudged when a preparation ends.
type envs struct {
	opts runtimeenv.Options
	// backoff is the first retry delay; it doubles up to maxBackoff.
	backoff, maxBackoff time.Duration

	mu    sync.Mutex
	state map[string]*envState
}

type envState struct {
	env      *runtimeenv.Env
	running  bool
	progress string
	failure  *runtimeenv.Error
	failures int
	retryAt  time.Time
	waiters  []func()
}

func newEnvs(o runtimeenv.Options) *envs {
	return &envs{opts: o, backoff: 5 * time.Second, maxBackoff: 5 * time.Minute, state: map[string]*envState{}}
}

// get returns the runtime's environment, or an *errPreparing while it is
// being prepared or waiting to retry. notify is called when a preparation
// it waited for ends.
func (e *envs) get(id string, notify func()) (*runtimeenv.Env, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.state[id]
	if st == nil {
		st = &envState{}
		e.state[id] = st
	}
	if st.env != nil {
		return st.env, nil
	}
	st.waiters = append(st.waiters, notify)
	switch {
	case st.running:
		return nil, &errPreparing{runtime: id, progress: st.progress}
	case st.failure != nil && time.Now().Before(st.retryAt):
		return nil, &errPreparing{runtime: id, failure: st.failure, retryAt: st.retryAt}
	}
	v := runtimes.MustLoad().Runtimes[id]
	st.running, st.progress = true, "preparing the "+id+" runtime environment: "+v.Summary()
	go e.prepare(id)
	return nil, &errPreparing{runtime: id, progress: st.progress}
}

func (e *envs) prepare(id string) {
	o := e.opts
	o.Progress = func(line string) {
		e.mu.Lock()
		e.state[id].progress = line
		e.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	env, err := runtimeenv.Prepare(ctx, o, id)
	e.mu.Lock()
	st := e.state[id]
	st.running = false
	if err != nil {
		var re *runtimeenv.Error
		if !errors.As(err, &re) {
			re = &runtimeenv.Error{Reason: runtimeenv.ReasonInstallFailed, Runtime: id, Err: err}
		}
		st.failures++
		st.failure = re
		d := e.backoff
		for i := 1; i < st.failures && d < e.maxBackoff; i++ {
			d *= 2
		}
		st.retryAt = time.Now().Add(min(d, e.maxBackoff))
	} else {
		st.env, st.failure, st.failures = env, nil, 0
	}
	waiters, retryAt := st.waiters, st.retryAt
	st.waiters = nil
	e.mu.Unlock()
	for _, w := range waiters {
		w()
	}
	if err != nil {
		// Reconcile the waiters again once the retry is due.
		time.AfterFunc(time.Until(retryAt), func() {
			for _, w := range waiters {
				w()
			}
		})
	}
}

// agentProcess is the agent container as a local process: a runtime
// adapter's shim from its prepared environment, or kars's own kars-agent
// from binDir.
func agentProcess(in buildInput, c *corev1.Container) (local.Process, error) {
	if id := runtimeID(c.Image); id != "" {
		if in.runtimeEnv == nil {
			return local.Process{}, fmt.Errorf("container %s runs runtime %s, but no runtime environments are configured", c.Name, id)
		}
		env, err := in.runtimeEnv(id)
		if err != nil {
			return local.Process{}, err
		}
		return local.Process{Path: env.Path, Args: append(slices.Clone(env.Args), c.Args...),
			Env: append(envList(c.Env), env.Environ...)}, nil
	}
	p, err := localBinary(in.binDir, c)
	if err != nil {
		return local.Process{}, err
	}
	return local.Process{Path: p, Args: containerArgs(c), Env: envList(c.Env)}, nil
}

// agentConfigDir is where the runtime's own configuration (a ConfigMap
// mounted at render.AgentConfigDir on a cluster) is placed in the
// workspace locally: the pod's root is the host's, read-only.
const agentConfigDir = ".kars-agent/config"

// agentConfigFiles writes the agent-config volume's files into the
// workspace and points the variables naming render.AgentConfigDir there.
func agentConfigFiles(in buildInput, v corev1.Volume, p *local.Process) error {
	files, err := volumeFiles(in, v)
	if err != nil {
		return fmt.Errorf("agent volume %s: %w", v.Name, err)
	}
	if p.Files == nil {
		p.Files = map[string][]byte{}
	}
	for rel, data := range files {
		p.Files[path.Join(agentConfigDir, rel)] = data
	}
	dir := path.Join(render.Workspace, agentConfigDir)
	for i, kv := range p.Env {
		k, val, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(val, render.AgentConfigDir+"/") {
			p.Env[i] = k + "=" + dir + strings.TrimPrefix(val, render.AgentConfigDir)
		}
	}
	return nil
}

// agentReady is the runtime contract's readiness check: /readyz when the
// agent serves it (OpenClaw's gateway answers /healthz as soon as it is
// live, well before it can take a turn), else /healthz.
func agentReady(ctx context.Context, c *http.Client) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/readyz", nil)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusNotFound:
		return get(ctx, c, "http://agent/healthz")
	}
	return fmt.Errorf("/readyz answered %d", resp.StatusCode)
}
