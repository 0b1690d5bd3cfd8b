#!/usr/bin/env bash
# Builds the pinned node programs (kubelet, kube-scheduler) from Go modules
# into tools/kube/bin/node-<version>/, and does nothing when they already
# exist. The real-node proof (make realnode) runs them next to the control
# plane build.sh builds. Prints the folder on stdout (KARS_NODE_BIN).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s=v1.37.2
out="$here/bin/node-$k8s"
if [[ -x $out/kubelet && -x $out/kube-scheduler ]]; then
  echo "$out"
  exit 0
fi
mkdir -p "$out.tmp"
ld="-s -w -X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/client-go/pkg/version.gitVersion=$k8s"
for c in kubelet kube-scheduler; do
  start=$SECONDS
  (cd "$here" && go build -trimpath -ldflags "$ld" -o "$out.tmp/$c" "k8s.io/kubernetes/cmd/$c")
  echo "built $c $k8s in $((SECONDS-start))s" >&2
done
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
