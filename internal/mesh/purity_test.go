// Package mesh_test checks the shape of the mesh packages as a whole.
package mesh_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The protocol packages are pure (no network, no processes, no other
// kars packages than each other and the pure encoders they share — JCS
// and strict JSON, held to the same rule here): what they compute depends
// only on their inputs, which is what lets their vectors and fuzz targets
// speak for them.
func TestProtocolPackagesArePure(t *testing.T) {
	const internal = "github.com/kars-io/kars/internal/"
	pure := []string{"mesh/identity", "mesh/x3dh", "mesh/ratchet", "mesh/wire", "mesh/session", "jcs", "strictjson"}
	allowed := map[string]bool{}
	for _, p := range pure {
		allowed[internal+p] = true
	}
	for _, p := range pure {
		out, err := exec.Command("go", "list", "-deps", internal+p).Output()
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
