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

// envs prepares runtime environments in the background (see preparer).
type envs = preparer[*runtimeenv.Env]

func newEnvs(o runtimeenv.Options) *envs {
	return &envs{
		run: func(ctx context.Context, id string, progress func(string)) (*runtimeenv.Env, error) {
			o := o
			o.Progress = progress
			env, err := runtimeenv.Prepare(ctx, o, id)
			if err != nil {
				var re *runtimeenv.Error
				if !errors.As(err, &re) {
					err = &runtimeenv.Error{Reason: runtimeenv.ReasonInstallFailed, Runtime: id, Err: err}
				}
			}
			return env, err
		},
		first: func(id string) string {
			return "preparing the " + id + " runtime environment: " + runtimes.MustLoad().Runtimes[id].Summary()
		},
		reason: func(err error) string {
			var re *runtimeenv.Error
			if errors.As(err, &re) {
				return re.Reason
			}
			return runtimeenv.ReasonInstallFailed
		},
	}
}

// agentProcess is the agent container as a local process: a runtime
// adapter's shim from its prepared environment, kars's own kars-agent from
// binDir, or any other image unpacked as the agent's root (root is then
// its directory).
func agentProcess(in buildInput, c *corev1.Container, pod corev1.PodSpec) (p local.Process, root string, err error) {
	if id := runtimeID(c.Image); id != "" {
		if in.runtimeEnv == nil {
			return local.Process{}, "", fmt.Errorf("container %s runs runtime %s, but no runtime environments are configured", c.Name, id)
		}
		env, err := in.runtimeEnv(id)
		if err != nil {
			return local.Process{}, "", err
		}
		return local.Process{Path: env.Path, Args: append(slices.Clone(env.Args), c.Args...),
			Env: append(envList(c.Env), env.Environ...)}, "", nil
	}
	if path, err := localBinary(in.binDir, c); err == nil {
		return local.Process{Path: path, Args: containerArgs(c), Env: envList(c.Env)}, "", nil
	} else if in.image == nil {
		return local.Process{}, "", err
	}
	// Any other image: the controller has checked a BYO image's contract
	// label and pinned its digest; it is checked again on the bytes
	// actually unpacked.
	contract := "v1"
	if b := in.sb.Spec.Runtime.BYO; b != nil && b.ContractVersion != "" {
		contract = b.ContractVersion
	}
	kc, err := pullKeychain(in, pod)
	if err != nil {
		return local.Process{}, "", err
	}
	r, err := in.image(c.Image, contract, kc)
	if err != nil {
		return local.Process{}, "", err
	}
	p, err = imageProcess(r, c)
	return p, r.Dir, err
}

// agentCodeImage unpacks the agentCode.oci image the agent container
// mounts at render.AgentCodeDir (an image volume on a cluster) and returns
// its directory, pointing the agent's variables at local.AgentCodeMount.
// It returns "" when the agent mounts no code image.
func agentCodeImage(in buildInput, c *corev1.Container, pod corev1.PodSpec, p *local.Process) (string, error) {
	var ref string
	for _, m := range c.VolumeMounts {
		if m.MountPath != render.AgentCodeDir {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.Image != nil {
				ref = v.Image.Reference
			}
		}
	}
	if ref == "" {
		return "", nil
	}
	if in.image == nil {
		return "", fmt.Errorf("agent code image %s: this substrate unpacks no images", ref)
	}
	kc, err := pullKeychain(in, pod)
	if err != nil {
		return "", err
	}
	r, err := in.image(ref, "", kc)
	if err != nil {
		return "", err
	}
	agentCodeEnv(p.Env)
	return r.Dir, nil
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
