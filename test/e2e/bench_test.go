package e2e

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/kars-io/kars/internal/controlplane"
	"github.com/kars-io/kars/internal/devcluster"
)

// BenchmarkKarsDevColdStart measures `kars dev` from nothing (a fresh state
// folder, warm binaries) to the first chat reply of dev-agent, against the
// floor measured in the same run: starting the bare control plane (etcd,
// kube-apiserver, kube-controller-manager, CRDs) alone.
//
//	go test -run '^$' -bench KarsDevColdStart -benchtime 3x ./test/e2e
func BenchmarkKarsDevColdStart(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("kars dev's local sandboxes need root")
	}
	assets, err := controlplane.AssetsDir()
	if err != nil {
		b.Fatal(err)
	}
	ctrllog.SetLogger(logr.Discard())
	bin := buildBinaries(b)
	var full, floor []time.Duration
	for i := 0; i < b.N; i++ {
		home, err := os.MkdirTemp("", "kars-bench-")
		if err != nil {
			b.Fatal(err)
		}
		_ = os.Chmod(home, 0o711)

		start := time.Now()
		c, err := devcluster.Start(context.Background(), devcluster.Options{Dir: filepath.Join(home, "floor"), Assets: assets})
		if err != nil {
			b.Fatal(err)
		}
		floor = append(floor, time.Since(start))
		c.Stop()

		k := &kars{t: b, bin: bin, env: append(os.Environ(), "KARS_HOME="+home, "KUBECONFIG=", "OPENAI_API_KEY=", "AZURE_OPENAI_ENDPOINT=", "GITHUB_TOKEN=", "OLLAMA_HOST=")}
		start = time.Now()
		if out, code := k.run("dev", "--assets", assets); code != 0 {
			b.Fatalf("kars dev: %s", out)
		}
		out, code := k.run("connect", "dev-agent", "-m", "hello")
		full = append(full, time.Since(start))
		if code != 0 || !strings.Contains(out, "hello") {
			b.Fatalf("first chat: %s", out)
		}
		k.run("dev", "down")
		os.RemoveAll(home)
	}
	b.ReportMetric(median(full).Seconds(), "s-to-first-reply")
	b.ReportMetric(median(floor).Seconds(), "s-control-plane-floor")
	b.ReportMetric(float64(median(full))/float64(median(floor)), "x-floor")
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
