package runtimes

import (
	"fmt"
	"io/fs"
	"slices"
	"strings"
)

// ImageName is the catalog's image name of a runtime
// (internal/render/catalog.go): kars-runtime-<id>, and for OpenAI Agents
// the Python version it was built for.
func ImageName(id string) string {
	if id == "openai-agents" {
		return "kars-runtime-openai-agents-python3.12"
	}
	return "kars-runtime-" + id
}

// Dockerfile is the build definition of a runtime's image, generated from
// versions.json and the lock files so that the image and `kars dev`
// install the same thing. The build context is the runtimes directory.
func Dockerfile(id string) (string, error) {
	v, err := Load()
	if err != nil {
		return "", err
	}
	rt, ok := v.Runtimes[id]
	if !ok {
		return "", fmt.Errorf("no runtime adapter %q", id)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: the kars adapter for %s.\n", ImageName(id), rt.Summary())
	b.WriteString("# Generated from runtimes/versions.json by `go test ./runtimes -run Images -update`; do not edit.\n")
	b.WriteString("# Build context: the runtimes directory, e.g.\n")
	fmt.Fprintf(&b, "#   docker build -f runtimes/images/%s/Dockerfile -t $REGISTRY/%s:$VERSION runtimes\n", ImageName(id), ImageName(id))
	own, err := fs.ReadDir(files, id)
	if err != nil {
		return "", err
	}
	var code []string
	for _, e := range own {
		if !e.IsDir() && !lockFile(e.Name()) {
			code = append(code, id+"/"+e.Name())
		}
	}
	slices.Sort(code)
	switch rt.Language {
	case Python:
		b.WriteString("ARG PYTHON_VERSION=3.12\nFROM python:${PYTHON_VERSION}-slim-bookworm\n")
		b.WriteString("ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1\n")
		fmt.Fprintf(&b, "COPY %s/requirements.txt /opt/kars/runtime/requirements.txt\n", id)
		b.WriteString("RUN python -m venv /opt/kars/venv \\\n")
		b.WriteString(" && /opt/kars/venv/bin/pip install --no-input --no-deps -r /opt/kars/runtime/requirements.txt \\\n")
		b.WriteString(" && /opt/kars/venv/bin/pip check\n")
		fmt.Fprintf(&b, "COPY python/kars_runtime.py %s /opt/kars/runtime/app/\n", strings.Join(code, " "))
		b.WriteString("RUN /opt/kars/venv/bin/python -m compileall -q /opt/kars/runtime/app\n")
		fmt.Fprintf(&b, "ENTRYPOINT [\"/opt/kars/venv/bin/python\", \"-s\", \"-E\", \"-B\", \"/opt/kars/runtime/app/%s\"]\n", rt.Entry)
	case Node:
		fmt.Fprintf(&b, "FROM node:%s-bookworm-slim\n", v.Node.Version)
		b.WriteString("ENV NODE_ENV=production\n")
		fmt.Fprintf(&b, "COPY %s/package.json %s/package-lock.json /opt/kars/runtime/app/\n", id, id)
		b.WriteString("RUN cd /opt/kars/runtime/app && npm ci --omit=dev --no-audit --no-fund && npm cache clean --force\n")
		fmt.Fprintf(&b, "COPY node/kars-runtime.mjs %s /opt/kars/runtime/app/\n", strings.Join(code, " "))
		if sub, err := fs.Stat(files, id+"/plugin"); err == nil && sub.IsDir() {
			fmt.Fprintf(&b, "COPY %s/plugin /opt/kars/runtime/app/plugin\n", id)
		}
		fmt.Fprintf(&b, "ENTRYPOINT [\"node\", \"/opt/kars/runtime/app/%s\"]\n", rt.Entry)
	}
	fmt.Fprintf(&b, "LABEL org.kars.runtime.contract=v1 org.opencontainers.image.title=%s\n", ImageName(id))
	b.WriteString("USER 1000:1000\nWORKDIR /sandbox\n")
	return b.String(), nil
}

func lockFile(name string) bool {
	return name == "requirements.txt" || name == "package.json" || name == "package-lock.json"
}
