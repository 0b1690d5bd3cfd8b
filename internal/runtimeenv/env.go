// Package runtimeenv prepares the environment a runtime adapter runs in on
// this machine: the pinned framework (a Python virtualenv or an npm tree on
// the pinned Node.js) plus the shim, installed from the package registries
// once, content-addressed and cached, and never changed afterwards.
//
// An environment's directory is named by the SHA-256 of everything that
// goes into it (the shim's files, its lock file, the pins in
// runtimes/versions.json, the interpreter's version), so a new kars build
// with other pins gets a new directory and sandboxes still running keep
// theirs. It is built in a temporary directory and renamed into place only
// when complete: a failed or interrupted install leaves nothing half-built
// behind. Concurrent preparers of the same environment wait on one lock
// and share the result.
//
// The local substrate runs the shim from here as UID 1000 under the same
// isolation as kars-agent; the pod sees the directory read-only like the
// rest of the host's root. On a cluster the same shims and lock files are
// built into the kars-runtime-* images instead (runtimes/images).
package runtimeenv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/kars-io/kars/runtimes"
)

// Options configure where environments live and how they are installed.
type Options struct {
	// Root is the cache directory holding one directory per environment.
	// Every directory above it must be traversable by UID 1000, and it
	// must not lie under /tmp, /run or /dev/shm (private in the pod).
	Root string
	// Python is the interpreter virtualenvs are made from (default: the
	// one versions.json names, /usr/bin/python3).
	Python string
	// NPM is npm's CLI script (npm-cli.js), run on the pinned Node.js so
	// that packages requiring a newer Node install (default: the npm on
	// PATH).
	NPM string
	// Progress receives one line per step while installing; nil discards.
	Progress func(string)
	// Tick is how often Progress hears "still installing"; default 10 s.
	Tick time.Duration
}

// Env is a prepared environment.
type Env struct {
	Runtime *runtimes.Runtime
	// Dir is the environment's directory; App is the shim's directory
	// inside it (the working directory of the program).
	Dir, App string
	// Digest is the content address of the environment.
	Digest string
	// Path and Args run the shim; Environ is what the shim needs on top of
	// the contract's variables.
	Path    string
	Args    []string
	Environ []string
}

// manifestName marks a complete environment and records what it holds.
const manifestName = ".kars-env.json"

// Manifest describes a prepared environment.
type Manifest struct {
	Runtime    string            `json:"runtime"`
	Digest     string            `json:"digest"`
	Packages   map[string]string `json:"packages"`
	Node       string            `json:"node,omitempty"`
	Python     string            `json:"python,omitempty"`
	Prepared   time.Time         `json:"prepared"`
	InstallSec float64           `json:"installSeconds"`
}

// DefaultRoot is where `kars dev` caches environments: $KARS_RUNTIME_CACHE,
// else /var/lib/kars/runtimes as root (beside the staged kars binaries),
// else the user's cache directory (not ~/.kars, which rootless sandboxes
// do not see).
func DefaultRoot() string {
	if d := os.Getenv("KARS_RUNTIME_CACHE"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/kars/runtimes"
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "kars", "runtimes")
	}
	return filepath.Join(os.TempDir(), "kars-runtimes")
}

func (o *Options) defaults(v *runtimes.Versions) error {
	if o.Root == "" {
		o.Root = DefaultRoot()
	}
	if !filepath.IsAbs(o.Root) {
		return fmt.Errorf("runtime cache %q must be an absolute path", o.Root)
	}
	for _, private := range []string{"/tmp/", "/run/", "/dev/shm/"} {
		if strings.HasPrefix(o.Root+"/", private) {
			return fmt.Errorf("runtime cache %s is under %s, which is private inside a sandbox: set KARS_RUNTIME_CACHE elsewhere", o.Root, private)
		}
	}
	if o.Python == "" {
		o.Python = v.Python.Interpreter
	}
	if o.Progress == nil {
		o.Progress = func(string) {}
	}
	if o.Tick == 0 {
		o.Tick = 10 * time.Second
	}
	return nil
}

// Prepare returns runtime id's environment, installing it first when it is
// not cached. Installing needs the package registries; a cached
// environment needs nothing. Errors are *Error, with a reason a status
// condition can carry.
func Prepare(ctx context.Context, o Options, id string) (*Env, error) {
	v, err := runtimes.Load()
	if err != nil {
		return nil, err
	}
	if err := o.defaults(v); err != nil {
		return nil, &Error{Reason: ReasonInvalid, Runtime: id, Err: err}
	}
	rt, ok := v.Runtimes[id]
	if !ok {
		return nil, &Error{Reason: ReasonUnknownRuntime, Runtime: id, Err: fmt.Errorf("no runtime adapter %q (known: %s)", id, strings.Join(v.IDs(), ", "))}
	}
	var node *Env
	if rt.Language == runtimes.Node {
		if node, err = prepareNode(ctx, o, v); err != nil {
			return nil, err
		}
	}
	deps, app, err := newPlan(o, v, rt, node)
	if err != nil {
		return nil, err
	}
	if err := deps.ensure(ctx); err != nil {
		return nil, err
	}
	if err := app.ensure(ctx); err != nil {
		return nil, err
	}
	return app.env(), nil
}

// Cached reports whether runtime id's environment is prepared, without
// installing anything.
func Cached(o Options, id string) bool {
	v, err := runtimes.Load()
	if err != nil || o.defaults(v) != nil {
		return false
	}
	rt, ok := v.Runtimes[id]
	if !ok {
		return false
	}
	var node *Env
	if rt.Language == runtimes.Node {
		np, err := nodePlan(o, v)
		if err != nil || !complete(np.dir) {
			return false
		}
		node = np.env()
	}
	deps, app, err := newPlan(o, v, rt, node)
	return err == nil && complete(deps.dir) && complete(app.dir)
}

// plan is one environment to ensure: its content address, directory and
// the installer that fills a temporary copy of it.
type plan struct {
	o        Options
	name     string // runtime id, or "node"
	digest   string
	dir      string
	manifest Manifest
	install  func(ctx context.Context, tmp string, log *tail) error
	run      func(dir string) (path string, args, environ []string)
	rt       *runtimes.Runtime
}

func (p *plan) env() *Env {
	path, args, environ := p.run(p.dir)
	return &Env{Runtime: p.rt, Dir: p.dir, App: filepath.Join(p.dir, "app"), Digest: p.digest, Path: path, Args: args, Environ: environ}
}

func complete(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, manifestName))
	return err == nil
}

// digestOf is the content address of an environment's inputs.
func digestOf(parts map[string][]byte) string {
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(parts)) {
		fmt.Fprintf(h, "%s\x00%d\x00", k, len(parts[k]))
		h.Write(parts[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ensure installs the environment unless it exists, under a lock that
// makes concurrent preparers wait for one install.
func (p *plan) ensure(ctx context.Context) error {
	if complete(p.dir) {
		return nil
	}
	for _, d := range []string{p.o.Root, filepath.Join(p.o.Root, ".locks"), filepath.Join(p.o.Root, ".tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return classify(p.name, err, nil)
		}
	}
	_ = os.Chmod(p.o.Root, 0o755) // UID 1000 runs what is inside
	lock, err := os.OpenFile(filepath.Join(p.o.Root, ".locks", filepath.Base(p.dir)+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return classify(p.name, err, nil)
	}
	defer lock.Close()
	if err := flock(ctx, lock); err != nil {
		return &Error{Reason: ReasonInterrupted, Runtime: p.name, Err: err}
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck // released on close anyway
	if complete(p.dir) {
		return nil // another preparer finished while we waited
	}
	// Leftovers of an install that crashed (we hold its lock now) and a
	// directory without a manifest are incomplete: start afresh.
	stale, _ := filepath.Glob(filepath.Join(p.o.Root, ".tmp", filepath.Base(p.dir)+"-*"))
	for _, s := range append(stale, p.dir) {
		_ = os.RemoveAll(s)
	}
	tmp, err := os.MkdirTemp(filepath.Join(p.o.Root, ".tmp"), filepath.Base(p.dir)+"-")
	if err != nil {
		return classify(p.name, err, nil)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return classify(p.name, err, nil)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(tmp)
		}
	}()
	start := time.Now()
	p.o.Progress(fmt.Sprintf("preparing the %s environment (first use; later sandboxes reuse it): %s", p.name, packagesLine(p.manifest.Packages)))
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(p.o.Tick)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				p.o.Progress(fmt.Sprintf("still preparing the %s environment (%s so far)", p.name, time.Since(start).Round(time.Second)))
			}
		}
	}()
	log := &tail{max: 8 << 10}
	if err := p.install(ctx, tmp, log); err != nil {
		return classify(p.name, err, log)
	}
	p.manifest.Prepared = time.Now().UTC()
	p.manifest.InstallSec = time.Since(start).Seconds()
	raw, _ := json.MarshalIndent(p.manifest, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, manifestName), raw, 0o644); err != nil {
		return classify(p.name, err, log)
	}
	if err := os.Rename(tmp, p.dir); err != nil {
		return classify(p.name, err, log)
	}
	ok = true
	p.o.Progress(fmt.Sprintf("prepared the %s environment in %s (%s)", p.name, time.Since(start).Round(time.Second), p.dir))
	return nil
}

func packagesLine(pk map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(pk)) {
		parts = append(parts, k+" "+pk[k])
	}
	return strings.Join(parts, ", ")
}

// flock takes an exclusive lock, giving up when ctx ends.
func flock(ctx context.Context, f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// runLogged runs a command, its output going to log.
func runLogged(ctx context.Context, log *tail, dir string, env []string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = dir, env
	cmd.Stdout, cmd.Stderr = log, log
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", filepath.Base(name), strings.Join(args, " "), err)
	}
	return nil
}

// writeFiles writes an environment's app files.
func writeFiles(dir string, files map[string][]byte) error {
	for rel, b := range files {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// environWith is the installer processes' environment: the caller's, with
// PATH led by extra directories.
func environWith(pathFirst ...string) []string {
	var out []string
	path := os.Getenv("PATH")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PATH=") {
			out = append(out, kv)
		}
	}
	return append(out, "PATH="+strings.Join(append(pathFirst, path), string(os.PathListSeparator)))
}
