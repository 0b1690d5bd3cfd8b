// Package controller reconciles the kars CRDs into governed sandboxes.
//
// The KarsSandbox reconciler follows one path: fetch the sandbox and the
// policies it references, render the desired objects (internal/render, pure),
// apply them, let the Substrate realise the pod, ask the router which config
// it enforces, and report conditions derived from what was observed. The
// InferencePolicy and ToolPolicy reconcilers only report status: a policy is
// RouterEnforcing once every running router that uses it serves the digest
// compiled from its current spec.
//
// The Substrate seam separates where the pod runs from everything else. The
// Kubernetes substrate (this package) applies the Deployment; the local
// substrate of `kars dev` realises the same rendered PodSpec as local
// processes. Either way the policy artifacts (router ConfigMap, admin
// Secret, …) are Kubernetes objects in the sandbox's namespace, applied with
// server-side apply under the field owner kars-controller, and only written
// when what is stored differs from what is rendered.
//
// Start it in-process with Setup on a controller-runtime manager built with
// CacheOptions.
package controller
