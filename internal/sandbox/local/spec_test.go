package local

import (
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
)

func TestSpecNormalize(t *testing.T) {
	ok := Spec{ID: "a-1", StateRoot: "/var/lib/kars/pods", Router: Process{Path: "/bin/router"}, Agent: Process{Path: "/bin/agent"}}
	s, err := ok.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if s.Isolation != Standard || s.Workspace != "/var/lib/kars/pods/a-1/workspace" || s.Agent.Dir != "/sandbox" ||
		s.AddressPool != DefaultAddressPool || len(s.RouterPorts) != 1 || s.RouterPorts[0] != RouterPort {
		t.Fatalf("defaults: %+v", s)
	}
	ok.RouterPorts = []uint16{9090, RouterPort}
	if s, _ := ok.normalize(); len(s.RouterPorts) != 2 || s.RouterPorts[0] != RouterPort || s.RouterPorts[1] != 9090 {
		t.Fatalf("router ports %v: want the router port first, once", s.RouterPorts)
	}
	bad := map[string]func(*Spec){
		"pod ID":                 func(s *Spec) { s.ID = "Bad_ID" },
		"absolute path":          func(s *Spec) { s.StateRoot = "rel" },
		"path \"agent\"":         func(s *Spec) { s.Agent.Path = "agent" },
		"relative path":          func(s *Spec) { s.Router.Files = map[string][]byte{"../escape": nil} },
		"unknown isolation":      func(s *Spec) { s.Isolation = "paranoid" },
		"negative limit":         func(s *Spec) { s.Limits.PIDs = -1 },
		"address pool":           func(s *Spec) { s.AddressPool = netip.MustParsePrefix("fd00::/64") },
		"confidential-computing": func(s *Spec) { s.Isolation = Confidential },
	}
	for want, mutate := range bad {
		s := ok
		mutate(&s)
		_, err := s.normalize()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v", want, err)
		}
	}
	s = ok
	s.Isolation = Confidential
	if _, err := s.normalize(); !errors.Is(err, ErrConfidentialUnsupported) {
		t.Errorf("confidential: %v", err)
	}
}

func TestLinkAllocationIsDisjoint(t *testing.T) {
	pool := netip.MustParsePrefix("10.213.0.0/16")
	if poolSize(pool) != 16384 {
		t.Fatalf("pool size %d", poolSize(pool))
	}
	seen := map[netip.Addr]bool{}
	for i := range 300 {
		l := linkFor(pool, i, "x")
		for _, a := range []netip.Addr{l.HostAddr, l.PodAddr} {
			if !pool.Contains(a) || seen[a] {
				t.Fatalf("link %d: address %s reused or outside %s", i, a, pool)
			}
			seen[a] = true
		}
		if netip.PrefixFrom(l.HostAddr, 30).Masked() != netip.PrefixFrom(l.PodAddr, 30).Masked() {
			t.Fatalf("link %d: %s and %s are not in one /30", i, l.HostAddr, l.PodAddr)
		}
		if len(l.HostIf) > 15 {
			t.Fatalf("interface name %q too long", l.HostIf)
		}
	}
	if l := linkFor(pool, 1, "p"); l.HostAddr.String() != "10.213.0.5" || l.PodAddr.String() != "10.213.0.6" || l.Table != "kars-p" {
		t.Fatalf("link 1 = %+v", l)
	}
}

// TestNoKubernetesImports keeps the isolation packages free of Kubernetes
// (they run in the agent's pod init and in the egress-guard init
// container, and the controller maps onto them, not the reverse).
func TestNoKubernetesImports(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go tool not in PATH")
	}
	out, err := exec.Command("go", "list", "-deps",
		"github.com/kars-io/kars/internal/sandbox/local",
		"github.com/kars-io/kars/internal/seccomp",
		"github.com/kars-io/kars/internal/egress").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "k8s.io/") || strings.HasPrefix(dep, "sigs.k8s.io/") {
			t.Errorf("imports %s", dep)
		}
	}
}
