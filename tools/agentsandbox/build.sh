#!/usr/bin/env bash
# Builds the pinned upstream agent-sandbox controller (sigs.k8s.io/agent-sandbox)
# from the Go module proxy into tools/agentsandbox/bin/<version>/, next to the
# Sandbox CRD of the same release, and does nothing when both already exist.
# Prints the folder on stdout (the value for KARS_AGENT_SANDBOX_DIR).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(grep -oE "sigs.k8s.io/agent-sandbox v[0-9.]+" "$here/go.mod" | head -1 | cut -d" " -f2)
out="$here/bin/$version"
if [[ -x $out/agent-sandbox-controller && -f $out/agents.x-k8s.io_sandboxes.yaml ]]; then
  echo "$out"
  exit 0
fi
mkdir -p "$out.tmp"
start=$SECONDS
(cd "$here" && go build -trimpath -ldflags "-s -w" -o "$out.tmp/agent-sandbox-controller" sigs.k8s.io/agent-sandbox/cmd/agent-sandbox-controller)
src=$(cd "$here" && go list -m -f '{{.Dir}}' sigs.k8s.io/agent-sandbox)
install -m 0644 "$src/k8s/crds/agents.x-k8s.io_sandboxes.yaml" "$out.tmp/"
echo "built agent-sandbox-controller $version in $((SECONDS-start))s" >&2
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
