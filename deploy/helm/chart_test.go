package helm

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
)

// allFeatures turns on every optional part of the chart.
func allFeatures() map[string]any {
	return map[string]any{
		"namespace": map[string]any{"create": true},
		"mesh": map[string]any{
			"enabled": true,
			"exposeRegistry": map[string]any{"enabled": true, "host": "mesh.example.com", "ingressClassName": "azure-application-gateway",
				"tlsSecretName": "mesh-tls", "annotations": map[string]any{"appgw.ingress.kubernetes.io/ssl-redirect": "true"}},
		},
		"image":      map[string]any{"pullSecrets": []any{"acr"}},
		"a2aGateway": map[string]any{"enabled": true, "url": "https://a2a.example.com"},
	}
}

// `helm lint --strict` on the source folder, with the defaults and with
// every feature on: no warning and no error.
func TestLintStrict(t *testing.T) {
	for name, vals := range map[string]map[string]any{"defaults": nil, "all-features": allFeatures()} {
		t.Run(name, func(t *testing.T) {
			l := action.NewLint()
			l.Strict = true
			l.Namespace = "kars-system"
			res := l.Run([]string{"kars"}, vals)
			for _, m := range res.Messages {
				if m.Severity > support.InfoSev {
					t.Errorf("lint: %s", m)
				} else {
					t.Logf("lint: %s", m)
				}
			}
			for _, err := range res.Errors {
				t.Errorf("lint error: %v", err)
			}
			if res.TotalChartsLinted != 1 {
				t.Fatalf("linted %d charts, want 1", res.TotalChartsLinted)
			}
		})
	}
}

// The chart's copies of generated files are what `make generate` produced.
func TestGeneratedCopiesInSync(t *testing.T) {
	pairs := map[string]string{
		"../../config/rbac/role.yaml":           "kars/files/rbac/role.yaml",
		"../../config/seccomp/kars-strict.json": "kars/files/seccomp/kars-strict.json",
	}
	crds, err := filepath.Glob("../../config/crd/bases/*.yaml")
	if err != nil || len(crds) == 0 {
		t.Fatalf("no CRDs in config/crd/bases (%v)", err)
	}
	for _, c := range crds {
		pairs[c] = filepath.Join("kars/files/crds", filepath.Base(c))
	}
	copies, _ := filepath.Glob("kars/files/crds/*.yaml")
	if len(copies) != len(crds) {
		t.Errorf("chart has %d CRDs, config/crd/bases %d: run make generate", len(copies), len(crds))
	}
	for src, dst := range pairs {
		a, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(dst)
		if err != nil {
			t.Fatalf("%v: run make generate", err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs from %s: run make generate", dst, src)
		}
	}
}

// The embedded chart is the source folder.
func TestEmbeddedChartIsTheSource(t *testing.T) {
	ch, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if ch.Metadata.Name != ChartName || ch.Metadata.AppVersion == "" {
		t.Fatalf("chart metadata %+v", ch.Metadata)
	}
	var n int
	for _, f := range ch.Templates {
		src, err := os.ReadFile(filepath.Join("kars", f.Name))
		if err != nil || !bytes.Equal(src, f.Data) {
			t.Errorf("embedded %s differs from the source (%v)", f.Name, err)
		}
		n++
	}
	if n < 8 {
		t.Fatalf("only %d templates embedded", n)
	}
}

func kinds(t *testing.T, vals map[string]any) map[string][]string {
	t.Helper()
	m, err := Render(vals, RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := Objects(m)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, o := range objs {
		out[o.GetKind()] = append(out[o.GetKind()], o.GetName())
	}
	return out
}

// Optional parts appear only when enabled; the CRDs, controller, RBAC,
// seccomp installer and admission policies are there by default.
func TestRenderParts(t *testing.T) {
	def := kinds(t, nil)
	crds, err := filepath.Glob("../../config/crd/bases/*.yaml")
	if err != nil || len(crds) == 0 {
		t.Fatalf("no generated CRDs: %v", err)
	}
	if len(def["CustomResourceDefinition"]) != len(crds) {
		t.Errorf("CRDs: %v, want the %d in config/crd/bases", def["CustomResourceDefinition"], len(crds))
	}
	for kind, want := range map[string]string{
		"Deployment": "kars-controller", "DaemonSet": "kars-seccomp-installer", "ClusterRole": "kars-controller",
		"ValidatingAdmissionPolicy": "kars-router-exec", "Namespace": "kars-node",
	} {
		if !strings.Contains(strings.Join(def[kind], ","), want) {
			t.Errorf("default render lacks %s %s (has %v)", kind, want, def[kind])
		}
	}
	if len(def["Ingress"]) != 0 || strings.Contains(strings.Join(def["Deployment"], ","), "kars-mesh") {
		t.Errorf("mesh rendered without mesh.enabled: %v %v", def["Deployment"], def["Ingress"])
	}
	all := kinds(t, allFeatures())
	if len(all["Ingress"]) != 1 || !strings.Contains(strings.Join(all["Deployment"], ","), "kars-mesh") {
		t.Errorf("mesh with exposeRegistry: %v %v", all["Deployment"], all["Ingress"])
	}
	if strings.Contains(strings.Join(def["Deployment"], ","), "kars-a2a-gateway") {
		t.Errorf("a2a gateway rendered without a2aGateway.enabled: %v", def["Deployment"])
	}
	for kind, want := range map[string]string{"Deployment": "kars-a2a-gateway", "Service": "kars-a2a-gateway", "NetworkPolicy": "kars-a2a-gateway",
		"Role": "kars-a2a-gateway", "PersistentVolumeClaim": "kars-a2a-gateway-state"} {
		if !strings.Contains(strings.Join(all[kind], ","), want) {
			t.Errorf("a2aGateway.enabled render lacks %s %s (has %v)", kind, want, all[kind])
		}
	}
	m, err := Render(allFeatures(), RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m, "- --a2a-gateway-url=https://a2a.example.com") {
		t.Error("the controller is not told the gateway's URL")
	}
	none := kinds(t, map[string]any{"crds": map[string]any{"install": false}, "admission": map[string]any{"enabled": false},
		"seccomp": map[string]any{"installer": map[string]any{"enabled": false}}, "rbac": map[string]any{"userRoles": false}})
	if len(none["CustomResourceDefinition"])+len(none["ValidatingAdmissionPolicy"])+len(none["DaemonSet"]) != 0 || len(none["ClusterRole"]) != 1 {
		t.Errorf("disabled parts still rendered: %v", none)
	}
}

// Every CRD carries helm.sh/resource-policy=keep unless crds.keep is false.
func TestCRDsKept(t *testing.T) {
	for _, keep := range []bool{true, false} {
		m, err := Render(map[string]any{"crds": map[string]any{"keep": keep}}, RenderOptions{})
		if err != nil {
			t.Fatal(err)
		}
		objs, _ := Objects(m)
		for _, o := range objs {
			if o.GetKind() == "CustomResourceDefinition" && (o.GetAnnotations()["helm.sh/resource-policy"] == "keep") != keep {
				t.Errorf("keep=%v: CRD %s annotations %v", keep, o.GetName(), o.GetAnnotations())
			}
		}
	}
}

// Values that cannot work are refused with a message saying why.
func TestRenderRefuses(t *testing.T) {
	for name, c := range map[string]struct {
		vals map[string]any
		want string
	}{
		"a2a gateway without a url":   {map[string]any{"a2aGateway": map[string]any{"enabled": true}}, "a2aGateway.url: set the gateway's public https:// base URL"},
		"expose without mesh":         {map[string]any{"mesh": map[string]any{"exposeRegistry": map[string]any{"enabled": true, "host": "m.example.com"}}}, "needs mesh.enabled"},
		"expose without host":         {map[string]any{"mesh": map[string]any{"enabled": true, "exposeRegistry": map[string]any{"enabled": true}}}, "needs mesh.exposeRegistry.host"},
		"replicas without election":   {map[string]any{"controller": map[string]any{"leaderElection": map[string]any{"enabled": false}}}, "needs controller.leaderElection.enabled"},
		"installer in release ns":     {map[string]any{"seccomp": map[string]any{"installer": map[string]any{"namespace": "kars-system"}}}, "must differ from the release namespace"},
		"unknown value (schema)":      {map[string]any{"controler": map[string]any{}}, "controler"},
		"bad pod security level":      {map[string]any{"podSecurity": map[string]any{"enforce": "strict"}}, "podSecurity"},
		"quote in exempt group (CEL)": {map[string]any{"admission": map[string]any{"exemptGroups": []any{"a'b"}}}, "exemptGroups"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Render(c.vals, RenderOptions{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
}
