package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoGRPCNorA2AV0: kars-router serves A2A 0.3 with its own binding
// (internal/a2a/v03), not the SDK's a2av0, which links the v0 SDK, gRPC and
// generated protobuf code: 9 MB more binary and ~4 MB more resident memory
// per router (every package's init touches its pages), against the
// router's memory goal at 1,000 streams (issue 13). Nothing in the router
// speaks gRPC; a dependency that brings it back should be a decision, not
// an accident.
func TestNoGRPCNorA2AV0(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/kars-router: %v", err)
	}
	const v0, v2 = "github.com/a2aproject/a2a-go", "github.com/a2aproject/a2a-go/v2"
	deps := strings.Fields(string(out))
	if len(deps) < 100 {
		t.Fatalf("go list named only %d dependencies: %q", len(deps), out)
	}
	var grpc, a2av0 []string
	for _, dep := range deps {
		switch {
		case dep == "google.golang.org/grpc" || strings.HasPrefix(dep, "google.golang.org/grpc/"):
			grpc = append(grpc, dep)
		case dep == v0 || strings.HasPrefix(dep, v0+"/") && dep != v2 && !strings.HasPrefix(dep, v2+"/"),
			strings.HasPrefix(dep, v2+"/a2acompat/"):
			a2av0 = append(a2av0, dep)
		}
	}
	if len(a2av0) > 0 {
		t.Errorf("kars-router links the v0 A2A Go SDK or the v2 SDK's a2acompat, which bring gRPC (issue 13); A2A 0.3 is served by internal/a2a/v03: %s",
			strings.Join(a2av0, ", "))
	}
	if len(grpc) > 0 {
		t.Errorf("kars-router links %d gRPC packages (%s, …), which cost it ~4 MB of resident memory and 9 MB of binary (issue 13); find what brings them with `go mod why -m google.golang.org/grpc`",
			len(grpc), grpc[0])
	}
}
