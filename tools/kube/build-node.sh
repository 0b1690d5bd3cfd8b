#!/usr/bin/env bash
# Builds the pinned node programs (kubelet, kube-scheduler) and kubectl from
# Go modules into tools/kube/bin/node-<version>/, each only when it is not
# there yet. The real-node proof (make realnode) runs them next to the
# control plane build.sh builds; the operator's e2e test uses this kubectl
# when the machine has none. Prints the folder on stdout (KARS_NODE_BIN).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s=v1.37.2
out="$here/bin/node-$k8s"
mkdir -p "$out"
ld="-s -w -X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/client-go/pkg/version.gitVersion=$k8s"
for c in kubelet kube-scheduler kubectl; do
  [[ -x $out/$c ]] && continue
  start=$SECONDS
  # Built beside the folder and moved in whole, so a killed build never
  # leaves a half-written program that the check above would skip.
  (cd "$here" && go build -trimpath -ldflags "$ld" -o "$out/.$c.tmp" "k8s.io/kubernetes/cmd/$c")
  mv "$out/.$c.tmp" "$out/$c"
  echo "built $c $k8s in $((SECONDS-start))s" >&2
done
echo "$out"
