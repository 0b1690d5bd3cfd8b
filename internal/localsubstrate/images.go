package localsubstrate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	corev1 "k8s.io/api/core/v1"

	"github.com/kars-io/kars/internal/ociimage"
	"github.com/kars-io/kars/internal/ociroot"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/sandbox/local"
)

// Reasons RuntimeReady carries while an image cannot be unpacked.
const (
	ReasonImagePullFailed    = "ImagePullFailed"
	ReasonImageContract      = "BYOContractInvalid"
	ReasonImageUnpackInvalid = "ImageUnpackFailed"
)

// images pulls and unpacks the images kars dev runs without a container
// runtime: BYO agent images (their tree becomes the agent's read-only
// root) and agentCode.oci images (bound read-only at local.AgentCodeMount).
// Unpacked trees are content-addressed by digest in the cache and shared
// between sandboxes.
type images struct {
	p preparer[*ociroot.Root]

	mu sync.Mutex
	// keychains are the pull credentials the last sandbox that asked for
	// a key brought (its image pull secrets).
	keychains map[string]authn.Keychain
}

// imageKey names one preparation: the contract to require and the
// reference.
func imageKey(ref, contract string) string { return contract + " " + ref }

func newImages(cache string) *images {
	im := &images{keychains: map[string]authn.Keychain{}}
	im.p = preparer[*ociroot.Root]{
		run: func(ctx context.Context, key string, progress func(string)) (*ociroot.Root, error) {
			contract, ref, _ := strings.Cut(key, " ")
			im.mu.Lock()
			kc := im.keychains[key]
			im.mu.Unlock()
			return ociroot.Unpack(ctx, ref, ociroot.Options{Cache: cache, Keychain: kc, Contract: contract})
		},
		first: func(key string) string {
			_, ref, _ := strings.Cut(key, " ")
			return "pulling and unpacking image " + ref
		},
		reason: func(err error) string {
			var ce *ociroot.ContractError
			var ue *ociroot.UnpackError
			switch {
			case errors.As(err, &ce):
				return ReasonImageContract
			case errors.As(err, &ue):
				return ReasonImageUnpackInvalid
			}
			return ReasonImagePullFailed
		},
	}
	return im
}

// get returns ref unpacked, or an *errPreparing while it is being pulled.
func (im *images) get(ref, contract string, kc authn.Keychain, notify func()) (*ociroot.Root, error) {
	key := imageKey(ref, contract)
	im.mu.Lock()
	if kc != nil {
		im.keychains[key] = kc
	}
	im.mu.Unlock()
	return im.p.get(key, notify)
}

// pullKeychain reads the pod's image pull secrets the way the kubelet
// does; a secret that is missing or malformed is an error the user sees.
func pullKeychain(in buildInput, pod corev1.PodSpec) (authn.Keychain, error) {
	if len(pod.ImagePullSecrets) == 0 {
		return nil, nil
	}
	kc := &ociimage.Keychain{}
	for _, ref := range pod.ImagePullSecrets {
		sec, err := in.secret(ref.Name)
		if err != nil {
			return nil, fmt.Errorf("image pull secret %s: %w", ref.Name, err)
		}
		switch {
		case len(sec.Data[corev1.DockerConfigJsonKey]) > 0:
			err = kc.ParseDockerConfigJSON(sec.Data[corev1.DockerConfigJsonKey])
		case len(sec.Data[corev1.DockerConfigKey]) > 0:
			err = kc.ParseDockerCfg(sec.Data[corev1.DockerConfigKey])
		default:
			err = fmt.Errorf("holds neither %s nor %s", corev1.DockerConfigJsonKey, corev1.DockerConfigKey)
		}
		if err != nil {
			return nil, fmt.Errorf("image pull secret %s: %w", ref.Name, err)
		}
	}
	return kc, nil
}

// imageProcess is container c run from its unpacked image, with the
// Kubernetes rules for command and args: command replaces the image's
// entrypoint (and drops its cmd), args replace its cmd. A relative
// program is looked up on the image's PATH inside the image's tree.
func imageProcess(root *ociroot.Root, c *corev1.Container) (local.Process, error) {
	cfg := root.Config
	var argv []string
	switch {
	case len(c.Command) > 0:
		argv = append(slices.Clone(c.Command), c.Args...)
	case len(c.Args) > 0:
		argv = append(slices.Clone(cfg.Entrypoint), c.Args...)
	default:
		argv = append(slices.Clone(cfg.Entrypoint), cfg.Cmd...)
	}
	if len(argv) == 0 {
		return local.Process{}, fmt.Errorf("image %s names no entrypoint or command, and container %s gives none", root.Digest, c.Name)
	}
	env := mergeEnv(cfg.Env, containerEnv(c.Env))
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "PATH=") }) {
		// What container runtimes give an image that sets none.
		env = append(env, "PATH="+defaultPath)
	}
	prog, err := lookPathIn(root.Dir, argv[0], env)
	if err != nil {
		return local.Process{}, fmt.Errorf("image %s: %w", root.Digest, err)
	}
	dir := c.WorkingDir
	if dir == "" {
		dir = cfg.WorkingDir
	}
	return local.Process{Path: prog, Args: argv[1:], Env: env, Dir: dir}, nil
}

// defaultPath is the PATH of an image that sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// mergeEnv is the image's environment overridden by the container's.
func mergeEnv(image, container []string) []string {
	out := slices.Clone(container)
	set := map[string]bool{}
	for _, kv := range container {
		k, _, _ := strings.Cut(kv, "=")
		set[k] = true
	}
	for _, kv := range image {
		if k, _, _ := strings.Cut(kv, "="); !set[k] {
			out = append(out, kv)
		}
	}
	return out
}

// lookPathIn resolves prog as the image's root would: an absolute path is
// used as is, a bare name is searched on PATH (the image's default when it
// sets none). Links are not followed on the host (they point inside the
// image), so an entry that exists at all is taken.
func lookPathIn(rootDir, prog string, env []string) (string, error) {
	if path.IsAbs(prog) {
		return prog, nil
	}
	if strings.Contains(prog, "/") {
		return "", fmt.Errorf("program %q is relative to a working directory; give an absolute path or a name on PATH", prog)
	}
	search := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			search = v
		}
	}
	for _, dir := range filepath.SplitList(search) {
		if !path.IsAbs(dir) {
			continue
		}
		p := path.Join(dir, prog)
		if _, err := lstatIn(rootDir, p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("program %q is not on the image's PATH (%s)", prog, search)
}

// agentCodeEnv points the variables naming render.AgentCodeDir at where
// the code is bound locally.
func agentCodeEnv(env []string) {
	for i, kv := range env {
		k, val, _ := strings.Cut(kv, "=")
		if val == render.AgentCodeDir || strings.HasPrefix(val, render.AgentCodeDir+"/") {
			env[i] = k + "=" + local.AgentCodeMount + strings.TrimPrefix(val, render.AgentCodeDir)
		}
	}
}

// lstatIn stats p as seen from inside rootDir: symbolic links, absolute
// or relative, resolve against rootDir and never leave it.
func lstatIn(rootDir, p string) (os.FileInfo, error) {
	parts := strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/")
	cur := "/"
	for hops := 0; len(parts) > 0; {
		name := parts[0]
		parts = parts[1:]
		next := path.Join(cur, name)
		fi, err := os.Lstat(filepath.Join(rootDir, next))
		if err != nil {
			return nil, err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			if len(parts) == 0 {
				return fi, nil
			}
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return nil, fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		target, err := os.Readlink(filepath.Join(rootDir, next))
		if err != nil {
			return nil, err
		}
		if !path.IsAbs(target) {
			target = path.Join(cur, target)
		}
		rest := strings.Split(strings.TrimPrefix(path.Clean(target), "/"), "/")
		if path.Clean(target) == "/" {
			rest = nil
		}
		parts = append(rest, parts...)
		cur = "/"
		if len(parts) == 0 {
			return os.Lstat(rootDir)
		}
	}
	return os.Lstat(filepath.Join(rootDir, cur))
}
