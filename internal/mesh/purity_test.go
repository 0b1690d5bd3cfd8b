// Package mesh_test checks the shape of the mesh packages as a whole.
package mesh_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The protocol packages are pure (no network, no processes, no other
// kars packages than each other): what they compute depends only on
// their inputs, which is what lets their vectors and fuzz targets speak
// for them.
func TestProtocolPackagesArePure(t *testing.T) {
	pure := []string{"identity", "x3dh", "ratchet", "wire", "session"}
	allowed := map[string]bool{}
	for _, p := range pure {
		allowed["github.com/kars-io/kars/internal/mesh/"+p] = true
	}
	for _, p := range pure {
		out, err := exec.Command("go", "list", "-deps", "./"+p).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", p, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			switch {
			case dep == "net" || strings.HasPrefix(dep, "net/") || dep == "os/exec":
				t.Errorf("%s depends on %s", p, dep)
			case strings.HasPrefix(dep, "github.com/kars-io/kars/") && !allowed[dep]:
				t.Errorf("%s depends on %s", p, dep)
			}
		}
	}
}
