package render

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/routerconfig"
)

func TestGoldenMeshSystem(t *testing.T) {
	env := input(sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationStandard)).Env
	objs, err := MeshSystem(MeshSystemInput{Env: env})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "mesh-system.yaml", toYAML(t, objs...))
	fed, err := MeshSystem(MeshSystemInput{Env: env, FederationPort: FederationPort, FederationSecret: FederationName,
		FederationPeers: []string{"cluster-b=wss://mesh.cluster-b.example:18766/federation"}, Redeem: true})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "mesh-system-federation.yaml", toYAML(t, fed...))
	if dep := objs[2].(*appsv1.Deployment); *dep.Spec.Template.Spec.AutomountServiceAccountToken {
		t.Fatal("kars-mesh without redemption must run without a ServiceAccount token")
	}
	dep := fed[2].(*appsv1.Deployment)
	c := dep.Spec.Template.Spec.Containers[0]
	if !*c.SecurityContext.RunAsNonRoot || !*c.SecurityContext.ReadOnlyRootFilesystem || len(fed) != 9 {
		t.Fatalf("kars-mesh must run non-root and read-only; %d objects", len(fed))
	}
	if args := strings.Join(c.Args, " "); !strings.Contains(args, "-federation-ca=") || !strings.Contains(args, "-federation-peer=cluster-b=") || !strings.Contains(args, "-redeem") {
		t.Fatalf("federation args: %v", c.Args)
	}
	if _, err := MeshSystem(MeshSystemInput{Env: env, FederationPort: 18766}); err == nil {
		t.Fatal("federation without a TLS Secret rendered")
	}
}

// TestRouterMeshSection: with the environment's mesh, every router gets the
// mesh section, the sandbox's threshold (500 when unset: gating is on by
// default) and registry mode; without it, none.
func TestRouterMeshSection(t *testing.T) {
	sb := sandbox(karsv1.RuntimeOpenClaw, karsv1.IsolationStandard)
	c, err := RouterConfig(sb, inferencePolicy(), nil, nil, Bindings{})
	if err != nil || c.Mesh != nil {
		t.Fatalf("no mesh in the environment: %+v %v", c.Mesh, err)
	}
	m := ClusterMesh("kars-system")
	c, err = RouterConfig(sb, inferencePolicy(), nil, m, Bindings{})
	if err != nil {
		t.Fatal(err)
	}
	want := routerconfig.Mesh{Registry: "http://kars-mesh.kars-system.svc:18080", Relay: "ws://kars-mesh.kars-system.svc:18765/ws",
		TrustThreshold: 500, RegistryMode: "local"}
	if *c.Mesh != want {
		t.Fatalf("mesh %+v, want %+v", *c.Mesh, want)
	}
	th := karsv1.TrustScore(700)
	sb.Spec.Governance.TrustThreshold, sb.Spec.Governance.RegistryMode = &th, "global"
	c, _ = RouterConfig(sb, inferencePolicy(), nil, m, Bindings{})
	if c.Mesh.TrustThreshold != 700 || c.Mesh.RegistryMode != "global" {
		t.Fatalf("mesh %+v", *c.Mesh)
	}
}
