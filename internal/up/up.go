// Package up is `kars up` on a cluster that already exists: it installs or
// upgrades the embedded kars Helm chart (deploy/helm) with Helm's Go SDK,
// waits until a controller is reconciling, and creates the first sandbox.
//
// Re-running it with the same chart and values changes nothing: each
// release records digests of the chart and of the values it was installed
// with (release labels kars.io/chart-digest, kars.io/values-digest), and an
// unchanged, deployed release is left alone rather than upgraded to an
// identical new revision.
package up

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"sort"
	"time"

	"helm.sh/helm/v4/pkg/action"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/kube"
	releasecommon "helm.sh/helm/v4/pkg/release/common"
	releasev1 "helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/storage/driver"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kars-io/kars/deploy/helm"
)

// Release labels that make re-runs idempotent.
const (
	LabelChartDigest  = "kars.io/chart-digest"
	LabelValuesDigest = "kars.io/values-digest"
)

// Action says what Install did to the release.
type Action string

// The actions.
const (
	Installed Action = "installed"
	Upgraded  Action = "upgraded"
	Unchanged Action = "unchanged"
)

// Target is the cluster and release to install into.
type Target struct {
	// Kubeconfig and Context select the cluster.
	Kubeconfig string
	Context    string
	// Namespace is the release (system) namespace, e.g. kars-system.
	Namespace string
	// Release is the Helm release name, e.g. kars.
	Release string
}

// Result reports what Install did.
type Result struct {
	Action   Action
	Revision int
	// Previous is the revision that was upgraded, if any.
	Previous int
}

// Digest returns a stable digest of a chart's files (templates, values,
// schema, Chart.yaml, files/): any change to the chart changes it.
func Digest(fsys fs.FS) (string, error) {
	var names []string
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, p)
		}
		return err
	})
	if err != nil {
		return "", err
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		b, err := fs.ReadFile(fsys, n)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:32], nil
}

// ValuesDigest is the digest of user-supplied values (canonical JSON: map
// keys sorted).
func ValuesDigest(vals map[string]any) (string, error) {
	if vals == nil {
		vals = map[string]any{}
	}
	b, err := json.Marshal(vals)
	if err != nil {
		return "", fmt.Errorf("values: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:32], nil
}

// Helm drives one release with Helm's Go SDK.
type Helm struct {
	cfg    *action.Configuration
	target Target
	chart  *chartv2.Chart
	digest string
	// Timeout bounds one install or upgrade; zero means 5 minutes.
	Timeout time.Duration
}

// NewHelm prepares Helm actions against t with the embedded chart. Helm's
// own logging goes to log (nil discards it).
func NewHelm(t Target, log slog.Handler) (*Helm, error) {
	if t.Namespace == "" || t.Release == "" {
		return nil, errors.New("up: target needs a namespace and a release name")
	}
	if log == nil {
		log = slog.NewTextHandler(io.Discard, nil)
	}
	ch, err := helm.Load()
	if err != nil {
		return nil, err
	}
	digest, err := Digest(helm.Files())
	if err != nil {
		return nil, err
	}
	flags := genericclioptions.NewConfigFlags(true)
	flags.KubeConfig, flags.Context, flags.Namespace = &t.Kubeconfig, &t.Context, &t.Namespace
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(log))
	if err := cfg.Init(flags, t.Namespace, "secret"); err != nil {
		return nil, fmt.Errorf("helm: %w", err)
	}
	return &Helm{cfg: cfg, target: t, chart: ch, digest: digest}, nil
}

// Current returns the deployed release, or nil when there is none.
func (h *Helm) Current() (*releasev1.Release, error) {
	r, err := action.NewGet(h.cfg).Run(h.target.Release)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read release %s/%s: %w", h.target.Namespace, h.target.Release, err)
	}
	rel, ok := r.(*releasev1.Release)
	if !ok {
		return nil, fmt.Errorf("release %s: unexpected type %T", h.target.Release, r)
	}
	return rel, nil
}

// Plan says what Install would do with vals, without changing anything.
func (h *Helm) Plan(vals map[string]any) (Action, *releasev1.Release, error) {
	cur, err := h.Current()
	if err != nil {
		return "", nil, err
	}
	if cur == nil {
		return Installed, nil, nil
	}
	vd, err := ValuesDigest(vals)
	if err != nil {
		return "", nil, err
	}
	if cur.Info != nil && cur.Info.Status == releasecommon.StatusDeployed &&
		cur.Labels[LabelChartDigest] == h.digest && cur.Labels[LabelValuesDigest] == vd {
		return Unchanged, cur, nil
	}
	return Upgraded, cur, nil
}

// Install installs the release, upgrades it when the chart or values
// changed, and does nothing when they did not. It does not wait for pods:
// WaitController does, in a way that also works where no kubelet runs.
func (h *Helm) Install(ctx context.Context, vals map[string]any) (Result, error) {
	act, cur, err := h.Plan(vals)
	if err != nil {
		return Result{}, err
	}
	vd, err := ValuesDigest(vals)
	if err != nil {
		return Result{}, err
	}
	labels := map[string]string{LabelChartDigest: h.digest, LabelValuesDigest: vd}
	timeout := h.Timeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	switch act {
	case Unchanged:
		return Result{Action: Unchanged, Revision: cur.Version}, nil
	case Installed:
		in := action.NewInstall(h.cfg)
		in.ReleaseName, in.Namespace = h.target.Release, h.target.Namespace
		in.Labels, in.Timeout = labels, timeout
		in.WaitStrategy = kube.HookOnlyStrategy
		// Objects that an earlier manual install (`kubectl apply -f config/`)
		// or `kars dev` created — the CRDs above all — are adopted rather
		// than refused; their content is replaced by the chart's.
		in.TakeOwnership = true
		in.ServerSideApply = true
		in.ForceConflicts = true
		r, err := in.RunWithContext(ctx, h.chart, vals)
		if err != nil {
			return Result{}, fmt.Errorf("helm install %s into %s: %w", h.target.Release, h.target.Namespace, err)
		}
		return Result{Action: Installed, Revision: version(r)}, nil
	default:
		up := action.NewUpgrade(h.cfg)
		up.Namespace, up.Labels, up.Timeout = h.target.Namespace, labels, timeout
		up.WaitStrategy = kube.HookOnlyStrategy
		// The values given now are the whole configuration: what an earlier
		// run set and this one does not goes back to the chart's default.
		up.ResetValues = true
		up.ServerSideApply = "true"
		up.ForceConflicts = true
		up.TakeOwnership = true
		r, err := up.RunWithContext(ctx, h.target.Release, h.chart, vals)
		if err != nil {
			return Result{}, fmt.Errorf("helm upgrade %s in %s (revision %d): %w", h.target.Release, h.target.Namespace, cur.Version, err)
		}
		return Result{Action: Upgraded, Revision: version(r), Previous: cur.Version}, nil
	}
}

// Uninstall removes the release. The CRDs (helm.sh/resource-policy=keep)
// and with them every kars object stay.
func (h *Helm) Uninstall() error {
	un := action.NewUninstall(h.cfg)
	un.WaitStrategy = kube.HookOnlyStrategy
	_, err := un.Run(h.target.Release)
	return err
}

func version(r any) int {
	if rel, ok := r.(*releasev1.Release); ok {
		return rel.Version
	}
	return 0
}

// PodSecurityLabels returns the pod-security.kubernetes.io labels of the
// release namespace: the chart's podSecurity defaults overlaid with vals'.
func PodSecurityLabels(vals map[string]any) (map[string]string, error) {
	ch, err := helm.Load()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, src := range []map[string]any{ch.Values, vals} {
		ps, _ := src["podSecurity"].(map[string]any)
		for mode, level := range ps {
			if s, ok := level.(string); ok {
				out["pod-security.kubernetes.io/"+mode] = s
			}
		}
	}
	return out, nil
}

// EnsureNamespace creates the release namespace or brings its Pod Security
// labels to labels, leaving its other labels alone.
func EnsureNamespace(ctx context.Context, c client.Client, name string, labels map[string]string) (changed bool, err error) {
	var ns corev1.Namespace
	err = c.Get(ctx, client.ObjectKey{Name: name}, &ns)
	if client.IgnoreNotFound(err) != nil {
		return false, fmt.Errorf("read namespace %s: %w", name, err)
	}
	if err != nil {
		ns = corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/part-of": "kars"}}}
		for k, v := range labels {
			ns.Labels[k] = v
		}
		if err := c.Create(ctx, &ns); err != nil {
			return false, fmt.Errorf("create namespace %s: %w", name, err)
		}
		return true, nil
	}
	before := ns.DeepCopy()
	if ns.Labels == nil {
		ns.Labels = map[string]string{}
	}
	for k, v := range labels {
		if ns.Labels[k] != v {
			ns.Labels[k] = v
			changed = true
		}
	}
	if !changed {
		return false, nil
	}
	if err := c.Patch(ctx, &ns, client.MergeFrom(before)); err != nil {
		return false, fmt.Errorf("label namespace %s: %w", name, err)
	}
	return true, nil
}
