package runtimeenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/kars-io/kars/runtimes"
)

// pythonVersion asks the interpreter for its version: part of the content
// address, since a virtualenv belongs to the interpreter that made it.
func pythonVersion(python string) (string, error) {
	out, err := exec.Command(python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])").Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w (install Python 3 with venv: apt-get install python3-venv)", python, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// lockFiles are the files that pin a runtime's dependencies: they alone
// address the (expensive) dependency layer, so that a change to the shim
// reinstalls nothing.
var lockFiles = map[string]bool{"requirements.txt": true, "package.json": true, "package-lock.json": true}

// newPlan is the plan of a runtime's environment: the dependency layer
// (a virtualenv or node_modules from the lock file) and, on top, the app
// layer (the shim's files). node is the prepared Node.js for Node
// runtimes.
func newPlan(o Options, v *runtimes.Versions, rt *runtimes.Runtime, node *Env) (deps, app *plan, err error) {
	files, err := runtimes.Files(rt.ID)
	if err != nil {
		return nil, nil, &Error{Reason: ReasonUnknownRuntime, Runtime: rt.ID, Err: err}
	}
	locks := map[string][]byte{}
	for k, b := range files {
		if lockFiles[k] {
			locks[k] = b
		}
	}
	deps = &plan{o: o, name: rt.ID, rt: rt, manifest: Manifest{Runtime: rt.ID, Packages: rt.Packages}}
	quiet := o
	quiet.Progress = func(string) {} // copying the shim takes no time worth reporting
	app = &plan{o: quiet, name: rt.ID + " shim", rt: rt, manifest: Manifest{Runtime: rt.ID, Packages: rt.Packages}}
	depParts := map[string][]byte{}
	for k, b := range locks {
		depParts[k] = b
	}
	switch rt.Language {
	case runtimes.Python:
		ver, err := pythonVersion(o.Python)
		if err != nil {
			return nil, nil, &Error{Reason: ReasonInvalid, Runtime: rt.ID, Err: err}
		}
		depParts["python"] = []byte(o.Python + " " + ver)
		deps.manifest.Python, app.manifest.Python = ver, ver
		deps.install = func(ctx context.Context, tmp string, log *tail) error {
			return installPython(ctx, o, tmp, locks, log)
		}
		app.install = func(ctx context.Context, tmp string, log *tail) error {
			dir := filepath.Join(tmp, "app")
			if err := writeFiles(dir, files); err != nil {
				return err
			}
			// Compiled now: the pod cannot write bytecode.
			return runLogged(ctx, log, tmp, environWith(), filepath.Join(deps.dir, "venv", "bin", "python"), "-m", "compileall", "-q", dir)
		}
		app.run = func(dir string) (string, []string, []string) {
			// -s: no user site-packages; -E: no PYTHON* variables; -B:
			// the environment is read-only in the pod, write no bytecode.
			return filepath.Join(deps.dir, "venv", "bin", "python"), []string{"-s", "-E", "-B", filepath.Join(dir, "app", rt.Entry)}, nil
		}
	case runtimes.Node:
		depParts["node"] = []byte(node.Digest)
		deps.manifest.Node, app.manifest.Node = v.Node.Version, v.Node.Version
		deps.install = func(ctx context.Context, tmp string, log *tail) error {
			return installNodeModules(ctx, o, node, tmp, locks, log)
		}
		app.install = func(ctx context.Context, tmp string, log *tail) error {
			dir := filepath.Join(tmp, "app")
			if err := writeFiles(dir, files); err != nil {
				return err
			}
			// ES module resolution looks for node_modules beside the
			// importing file.
			return os.Symlink(filepath.Join(deps.dir, "node_modules"), filepath.Join(dir, "node_modules"))
		}
		app.run = func(dir string) (string, []string, []string) {
			return node.Path, []string{filepath.Join(dir, "app", rt.Entry)}, []string{"NODE_ENV=production"}
		}
	}
	deps.digest = digestOf(depParts)
	deps.dir = filepath.Join(o.Root, rt.ID+"-deps-"+deps.digest[:16])
	appParts := map[string][]byte{"deps": []byte(deps.digest)}
	for k, b := range files {
		appParts["app/"+k] = b
	}
	app.digest = digestOf(appParts)
	app.dir = filepath.Join(o.Root, rt.ID+"-"+app.digest[:16])
	deps.manifest.Digest, app.manifest.Digest = deps.digest, app.digest
	return deps, app, nil
}

// installPython makes a virtualenv from the pinned lock file
// (requirements.txt: every package, exact versions, --no-deps so nothing
// unpinned slips in, then pip check to prove the set is complete).
func installPython(ctx context.Context, o Options, tmp string, locks map[string][]byte, log *tail) error {
	if err := writeFiles(tmp, locks); err != nil {
		return err
	}
	venv := filepath.Join(tmp, "venv")
	env := environWith()
	if err := runLogged(ctx, log, tmp, env, o.Python, "-m", "venv", venv); err != nil {
		return err
	}
	py := filepath.Join(venv, "bin", "python")
	if err := runLogged(ctx, log, tmp, env, py, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
		"--no-warn-script-location", "--no-deps", "-r", filepath.Join(tmp, "requirements.txt")); err != nil {
		return err
	}
	if err := runLogged(ctx, log, tmp, env, py, "-m", "pip", "check", "--disable-pip-version-check"); err != nil {
		return fmt.Errorf("the lock file is incomplete: %w", err)
	}
	return nil
}
