# kars — the project's vocabulary. `make help` lists the targets.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

BIN        := $(CURDIR)/bin
GEN        := $(CURDIR)/tools/gen
CMDS       := $(notdir $(wildcard cmd/*))
GOFLAGS    ?=
export GOFLAGS

.PHONY: help build generate verify-generated lint test test-unit controlplane agentsandbox dev bench tools clean interop-clients interop-mcp egress-clients images runtimes realnode node-deps plugin-deps

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

build: ## build every kars binary into bin/
	@mkdir -p $(BIN)
	go build -trimpath -o $(BIN)/ ./cmd/...

tools: $(BIN)/controller-gen $(BIN)/staticcheck ## build the pinned code generators and linters

$(BIN)/controller-gen: $(GEN)/go.mod $(GEN)/go.sum
	@mkdir -p $(BIN)
	cd $(GEN) && go build -o $(BIN)/controller-gen sigs.k8s.io/controller-tools/cmd/controller-gen

$(BIN)/staticcheck: $(GEN)/go.mod $(GEN)/go.sum
	@mkdir -p $(BIN)
	cd $(GEN) && go build -o $(BIN)/staticcheck honnef.co/go/tools/cmd/staticcheck

generate: $(BIN)/controller-gen ## regenerate deepcopy code and CRD YAML from api/, RBAC from internal/controller, the chart's copies of both
	$(BIN)/controller-gen object:headerFile=hack/boilerplate.go.txt paths=./api/...
	$(BIN)/controller-gen crd:maxDescLen=400 paths=./api/... output:crd:artifacts:config=config/crd/bases
	$(BIN)/controller-gen rbac:roleName=kars-controller paths=./internal/controller/... output:rbac:artifacts:config=config/rbac
	rm -f deploy/helm/kars/files/crds/*.yaml && cp config/crd/bases/*.yaml deploy/helm/kars/files/crds/
	cp config/rbac/role.yaml deploy/helm/kars/files/rbac/role.yaml
	cp config/seccomp/kars-strict.json deploy/helm/kars/files/seccomp/kars-strict.json

verify-generated: generate ## fail when generated files differ from what is committed
	@if [ -n "$$(git status --porcelain -- api config deploy/helm/kars/files)" ]; then \
	  git status --porcelain -- api config deploy/helm/kars/files; git diff --stat -- api config deploy/helm/kars/files; \
	  echo "generated code is stale: run 'make generate' and commit the result"; exit 1; fi

lint: $(BIN)/staticcheck ## gofmt, go vet and staticcheck
	@bad=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^tools/')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	go vet ./...
	$(BIN)/staticcheck ./...

controlplane: ## build kube-apiserver, kube-controller-manager and etcd (skipped when present)
	@tools/kube/build.sh >/dev/null

# Debian 12's packages the real-node proof runs (containerd, runc, the CNI
# bridge/host-local plugins); installed only when one is missing.
NODE_DEBS := containerd=1.6.20~ds1-1+deb12u3 runc=1.1.5+ds1-1+deb12u1 containernetworking-plugins=1.1.1+ds1-3+b5

node-deps: ## install containerd, runc and the CNI plugins from Debian's packages (skipped when present; root)
	@if ! command -v containerd >/dev/null || ! command -v runc >/dev/null || [ ! -x /usr/lib/cni/bridge ]; then \
	  apt-get install -y --no-install-recommends $(NODE_DEBS) || { apt-get update && apt-get install -y --no-install-recommends $(NODE_DEBS); } || \
	  { echo "node-deps: the pinned versions are gone from the mirror; installing its current ones" >&2; \
	    apt-get install -y --no-install-recommends $(foreach d,$(NODE_DEBS),$(firstword $(subst =, ,$(d)))); }; fi

realnode: controlplane node-deps ## the proof on a real node: kubelet+kube-scheduler (built once) with containerd/runc, the kars pod reconciled and connected to (root; docs/realnode.md)
	@tools/kube/build-node.sh >/dev/null
	KARS_REAL_NODE=1 KUBEBUILDER_ASSETS=$$(tools/kube/build.sh) KARS_NODE_BIN=$$(tools/kube/build-node.sh) go test -count=1 -timeout 20m -v -run TestRealNode ./test/realnode/

agentsandbox: ## build the pinned upstream agent-sandbox controller the co-existence tests run (skipped when present)
	@tools/agentsandbox/build.sh >/dev/null

test-unit: ## unit tests only (integration tests skip under -short)
	go test -short ./...

interop-clients: test/interop/.venv/bin/python test/interop/node_modules/openai ## install the official OpenAI Python and npm clients, the Agent Governance Toolkit's agentmesh and the A2A Python and JS SDKs the interop tests drive
	test/interop/mesh/setup.sh
	test/interop/a2a/setup.sh

test/interop/.venv/bin/python test/interop/node_modules/openai: test/interop/setup.sh test/interop/package-lock.json
	test/interop/setup.sh

interop-mcp: ## install the pinned MCP reference server, conformance suite and Python SDK the MCP gateway interop tests drive
	test/interop/mcp/setup.sh

plugin-deps: ## install the OpenClaw plugin's pinned dev dependencies (typescript, @types/node, Node 24) from its package-lock.json (skipped when present)
	plugins/openclaw-kars-mesh/setup.sh

egress-clients: test/egress/.venv/bin/python ## install the Python httpx and requests clients the egress sandbox tests run

test/egress/.venv/bin/python: test/egress/setup.sh test/egress/requirements.txt
	test/egress/setup.sh

test: controlplane agentsandbox verify-generated lint interop-clients interop-mcp egress-clients plugin-deps ## everything CI runs: generated code, lint, unit, integration, interop and e2e tests, then the real-node proof (as root)
	$(MAKE) runtimes
	@command -v kubectl >/dev/null || tools/kube/build-node.sh >/dev/null
	KUBEBUILDER_ASSETS=$$(tools/kube/build.sh) KARS_AGENT_SANDBOX_DIR=$$(tools/agentsandbox/build.sh) KARS_REQUIRE_INTEROP=1 KARS_REQUIRE_RUNTIMES=1 KARS_REQUIRE_EGRESS_CLIENTS=1 go test -count=1 -timeout 45m ./...
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) realnode; else echo "test: the real-node proof needs root; skipped (make realnode)"; fi

VERSION    ?= v0.0.0-dev
REGISTRY   ?=

images: ## build kars's Go images without Docker: push to $(REGISTRY) or write an OCI layout to bin/images
	@if [ -n "$(REGISTRY)" ]; then go run ./hack/images -version $(VERSION) -registry $(REGISTRY); \
	 else go run ./hack/images -version $(VERSION) -out $(BIN)/images; fi

runtimes: ## prepare every runtime adapter's environment in the cache (KARS_RUNTIME_CACHE, default /var/lib/kars/runtimes); skipped when present
	go run ./hack/runtimes

dev: build controlplane ## run kars dev: the governed stack on this machine
	$(BIN)/kars dev

bench: controlplane ## run the benchmarks and load harnesses under bench/
	KUBEBUILDER_ASSETS=$$(tools/kube/build.sh) go test -run '^$$' -bench . -benchmem ./...

clean: ## remove build output (keeps the control-plane binaries)
	rm -rf $(BIN)
