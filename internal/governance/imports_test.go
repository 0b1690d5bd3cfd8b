package governance

import (
	"os/exec"
	"strings"
	"testing"
)

// The governance stack is embedded by the router, the mesh and the A2A
// gateway, and sits on the trust boundary: it must stay free of Kubernetes
// client code and of network servers and clients. toolpolicy, the CRD
// converter, is the one deliberate exception and is not listed here.
func TestGovernanceStackImports(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not on PATH")
	}
	pkgs := []string{
		"github.com/kars-io/kars/internal/governance",
		"github.com/kars-io/kars/internal/governance/statefile",
		"github.com/kars-io/kars/internal/ratelimit",
		"github.com/kars-io/kars/internal/trust",
		"github.com/kars-io/kars/internal/behavior",
		"github.com/kars-io/kars/internal/audit",
	}
	for _, pkg := range pkgs {
		out, err := exec.Command(goTool, "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 5 {
			t.Fatalf("go list -deps %s listed only %v", pkg, deps)
		}
		for _, dep := range deps {
			if strings.HasPrefix(dep, "k8s.io/") || strings.HasPrefix(dep, "sigs.k8s.io/") ||
				dep == "net/http" || strings.HasPrefix(dep, "net/http/") || strings.HasPrefix(dep, "google.golang.org/grpc") {
				t.Errorf("%s depends on %s", pkg, dep)
			}
		}
	}
}
