//go:build tools

// Package agentsandbox pins the upstream agent-sandbox controller
// (kubernetes-sigs/agent-sandbox) that the co-existence tests of
// internal/controller run next to kars. It is a separate module so that the
// upstream's dependency versions never enter kars' own go.mod.
package agentsandbox

import _ "sigs.k8s.io/agent-sandbox/cmd/agent-sandbox-controller"
