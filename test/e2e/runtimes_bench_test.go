package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/controlplane"
)

// BenchmarkRuntimeReady measures, under one `kars dev`, `kars add` → Ready
// (Running with the config enforced) and → first reply for a Python
// runtime (PydanticAI) and for OpenClaw, with warm environments, against
// kars-agent measured in the same run as the baseline. Goal: Ready < 2 s
// and < 3× kars-agent.
//
//	make runtimes   # warm the environments first
//	go test -run '^$' -bench RuntimeReady -benchtime 3x ./test/e2e
func BenchmarkRuntimeReady(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("kars dev's local sandboxes need root")
	}
	assets, err := controlplane.AssetsDir()
	if err != nil {
		b.Fatal(err)
	}
	home, err := os.MkdirTemp("", "kars-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(home)
	_ = os.Chmod(home, 0o711)
	k := &kars{t: b, bin: buildBinaries(b), env: append(os.Environ(), "KARS_HOME="+home, "KUBECONFIG=", "OPENAI_API_KEY=", "AZURE_OPENAI_ENDPOINT=", "GITHUB_TOKEN=", "OLLAMA_HOST=")}
	if out, code := k.run("dev", "--assets", assets); code != 0 {
		b.Fatalf("kars dev: %s", out)
	}
	defer k.run("dev", "down")
	kinds := []struct{ label, runtime string }{{"kars-agent", "kars-agent"}, {"pydantic-ai", "pydantic-ai"}, {"openclaw", "openclaw"}}
	ready := map[string][]time.Duration{}
	reply := map[string][]time.Duration{}
	for i := 0; i < b.N; i++ {
		for _, kd := range kinds {
			name := fmt.Sprintf("b%d-%s", i, strings.ReplaceAll(kd.label, "-", ""))
			start := time.Now()
			k.must("add", name, "--runtime", kd.runtime)
			for {
				out, _ := k.run("status", name)
				if strings.Contains(out, "Phase:       Running") && strings.Contains(out, "enforced by the router") {
					break
				}
				if time.Since(start) > 5*time.Minute {
					b.Fatalf("%s not ready in 5 minutes:\n%s", name, out)
				}
				time.Sleep(100 * time.Millisecond)
			}
			ready[kd.label] = append(ready[kd.label], time.Since(start))
			for {
				out, code := k.run("connect", name, "-m", "use the calculator for 6*7")
				if code == 0 && strings.Contains(out, "42") {
					break
				}
				if time.Since(start) > 6*time.Minute {
					b.Fatalf("%s gave no reply: %s", name, out)
				}
				time.Sleep(200 * time.Millisecond)
			}
			reply[kd.label] = append(reply[kd.label], time.Since(start))
		}
	}
	base := median(ready["kars-agent"])
	for _, kd := range kinds {
		r, f := median(ready[kd.label]), median(reply[kd.label])
		b.ReportMetric(r.Seconds(), "s-ready-"+kd.label)
		b.ReportMetric(f.Seconds(), "s-first-reply-"+kd.label)
		if kd.label != "kars-agent" {
			b.ReportMetric(float64(r)/float64(base), "x-ready-"+kd.label+"-vs-kars-agent")
		}
	}
}
