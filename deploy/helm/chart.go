// Package helm embeds the kars Helm chart (deploy/helm/kars) so that `kars up`
// installs exactly the chart it was built with, and renders it with Helm's Go
// SDK (helm.sh/helm/v4) for callers that need the manifests without a cluster.
//
// The chart's files/ folder holds copies of generated artifacts — the CRDs
// (config/crd/bases), the controller's ClusterRole (config/rbac/role.yaml) and
// the kars-strict seccomp profile (config/seccomp) — that `make generate`
// refreshes; a test fails when they drift.
package helm

import (
	"embed"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	kubefake "helm.sh/helm/v4/pkg/kube/fake"
	releasev1 "helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/storage"
	"helm.sh/helm/v4/pkg/storage/driver"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

//go:embed all:kars
var files embed.FS

// ChartName is the chart's name and the default release name.
const ChartName = "kars"

// Files returns the chart's files, rooted at the chart folder.
func Files() fs.FS {
	sub, err := fs.Sub(files, ChartName)
	if err != nil {
		panic(err) // the embed pattern guarantees the folder
	}
	return sub
}

// Load returns the embedded chart.
func Load() (*chartv2.Chart, error) {
	var bufs []*archive.BufferedFile
	err := fs.WalkDir(Files(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(Files(), p)
		if err != nil {
			return err
		}
		bufs = append(bufs, &archive.BufferedFile{Name: p, Data: data})
		return nil
	})
	if err != nil {
		return nil, err
	}
	ch, err := loader.LoadFiles(bufs)
	if err != nil {
		return nil, fmt.Errorf("embedded kars chart: %w", err)
	}
	return ch, nil
}

// DefaultKubeVersion is the Kubernetes version Render assumes: the version
// kars pins for its own control plane (tools/kube). Helm's built-in default
// is older than the chart's kubeVersion constraint.
const DefaultKubeVersion = "v1.37.2"

// RenderOptions select what Render produces.
type RenderOptions struct {
	// ReleaseName defaults to ChartName.
	ReleaseName string
	// Namespace is the release namespace; default kars-system.
	Namespace string
	// KubeVersion is the cluster version templates see; default
	// DefaultKubeVersion.
	KubeVersion string
}

// Render renders the chart with vals as `helm template` does (client-side,
// values validated against values.schema.json) and returns the manifest,
// one YAML document per object, in Helm's install order.
func Render(vals map[string]any, o RenderOptions) (string, error) {
	ch, err := Load()
	if err != nil {
		return "", err
	}
	if o.ReleaseName == "" {
		o.ReleaseName = ChartName
	}
	if o.Namespace == "" {
		o.Namespace = "kars-system"
	}
	cfg := action.NewConfiguration()
	cfg.Releases = storage.Init(driver.NewMemory())
	cfg.KubeClient = &kubefake.PrintingKubeClient{Out: io.Discard}
	in := action.NewInstall(cfg)
	in.DryRunStrategy = action.DryRunClient
	in.Replace = true
	in.ReleaseName = o.ReleaseName
	in.Namespace = o.Namespace
	if o.KubeVersion == "" {
		o.KubeVersion = DefaultKubeVersion
	}
	kv, err := common.ParseKubeVersion(o.KubeVersion)
	if err != nil {
		return "", err
	}
	in.KubeVersion = kv
	rel, err := in.Run(ch, vals)
	if err != nil {
		return "", fmt.Errorf("render the kars chart: %w", err)
	}
	r, ok := rel.(*releasev1.Release)
	if !ok {
		return "", fmt.Errorf("render the kars chart: unexpected release type %T", rel)
	}
	return r.Manifest, nil
}

// Objects splits a rendered manifest into objects, skipping empty documents.
func Objects(manifest string) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifest), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if err == io.EOF {
				return out, nil
			}
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
}
