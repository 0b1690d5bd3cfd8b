#!/usr/bin/env bash
# Builds the pinned Kubernetes control plane (kube-apiserver,
# kube-controller-manager) and etcd from Go modules into
# tools/kube/bin/<pin>/, and does nothing when those binaries already exist.
# Prints the folder on stdout (the value for KUBEBUILDER_ASSETS).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s=v1.37.2
etcd=$(grep -oE "go.etcd.io/etcd/server/v3 v3\.[0-9]+\.[0-9]+" "$here/etcd/go.mod" | head -1 | cut -d" " -f2)
out="$here/bin/k8s-$k8s-etcd-$etcd"
if [[ -x $out/kube-apiserver && -x $out/kube-controller-manager && -x $out/etcd ]]; then
  echo "$out"
  exit 0
fi
mkdir -p "$out.tmp"
ld="-s -w -X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/client-go/pkg/version.gitVersion=$k8s"
start=$SECONDS
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" .)
echo "built etcd $etcd in $((SECONDS-start))s" >&2
for c in kube-apiserver kube-controller-manager; do
  start=$SECONDS
  (cd "$here" && go build -trimpath -ldflags "$ld" -o "$out.tmp/$c" "k8s.io/kubernetes/cmd/$c")
  echo "built $c $k8s in $((SECONDS-start))s" >&2
done
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
