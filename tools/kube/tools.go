//go:build tools

// Package kube pins the Kubernetes control-plane programs that kars builds
// for its integration tests and for `kars dev`. It lives in its own module so
// that the operator's go.mod never carries k8s.io/kubernetes.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
