// Command router is kars-router's load harness. In one run it measures, at
// fixed open-loop rates, three paths to the same fake upstream (Azure OpenAI
// wire format, content-filter annotations included):
//
//	direct  load generator → upstream
//	bare    load generator → httputil.ReverseProxy → upstream   (the floor)
//	kars    load generator → kars-router → upstream             (policy, budget, audit on)
//
// kars runs twice: as cmd/kars-router runs it (audit commit window
// audit.DefaultCommitWindow) and, as the same-run baseline for that window,
// with every audit batch synced at once ("kars, window 0"). Then come the
// maximum closed-loop throughput of bare and kars, kars-router's RSS while
// it holds 1,000 concurrent streams, and failures while its config is
// swapped 20 times under 1,000 rps. The load generator and the upstream are
// pinned to CPU 0 and the proxies to CPU 1 with taskset.
//
//	go run ./bench/router -duration 5s
//
// Every process is started by this harness on loopback and stopped by it.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/kars-io/kars/internal/router"
)

func main() {
	role := flag.String("role", "", "internal: upstream, bare, kars or load")
	duration := flag.Duration("duration", 5*time.Second, "length of each fixed-rate step")
	rates := flag.String("rates", "500,1000,2000", "open-loop request rates to measure")
	flag.Parse()
	switch *role {
	case "upstream":
		runUpstream(flag.Arg(0))
	case "bare":
		runBare(flag.Arg(0))
	case "kars":
		runKars(flag.Arg(0), flag.Arg(1))
	case "load":
		runLoad(flag.Args())
	case "":
		orchestrate(*duration, *rates)
	default:
		log.Fatalf("unknown role %q", *role)
	}
}

// child is a process the harness started.
type child struct {
	cmd  *exec.Cmd
	addr string
	// admin is the router's admin API, when the role has one.
	admin string
}

// pinned runs this binary in a role, on cpu when taskset is available.
func pinned(cpu string, args ...string) *exec.Cmd {
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	if _, err := exec.LookPath("taskset"); err == nil && cpu != "" {
		return exec.Command("taskset", append([]string{"-c", cpu, self}, args...)...)
	}
	return exec.Command(self, args...)
}

// start runs a server role and waits for the address it prints.
func start(cpu string, args ...string) *child { return startEnv(cpu, nil, args...) }

// startEnv is start with extra environment variables.
func startEnv(cpu string, env []string, args ...string) *child {
	cmd := pinned(cpu, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		log.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		log.Fatalf("%v did not report its address: %v", args, err)
	}
	go io.Copy(io.Discard, out)
	f := strings.Fields(line)
	if len(f) == 0 {
		log.Fatalf("%v reported no address", args)
	}
	c := &child{cmd: cmd, addr: f[0]}
	if len(f) > 1 {
		c.admin = f[1]
	}
	return c
}

func (c *child) stop() {
	c.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(35 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// load runs the load generator role pinned to CPU 0 and decodes its result.
func load(args ...string) result {
	cmd := pinned("0", append([]string{"-role", "load"}, args...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		log.Fatalf("load %v: %v", args, err)
	}
	var r result
	if err := json.Unmarshal(out, &r); err != nil {
		log.Fatalf("load %v: %v: %s", args, err, out)
	}
	return r
}

func orchestrate(duration time.Duration, rates string) {
	work, err := os.MkdirTemp("", "kars-bench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(work)
	upstream := start("0", "-role", "upstream")
	defer upstream.stop()
	bare := start("1", "-role", "bare", upstream.addr)
	defer bare.stop()
	cfgPath := writeKarsConfig(work, upstream.addr, 0)
	kars := start("1", "-role", "kars", cfgPath)
	defer func() { kars.stop() }()
	w0Work := filepath.Join(work, "window0")
	os.Mkdir(w0Work, 0o700)
	kars0 := start("1", "-role", "kars", writeKarsConfig(w0Work, upstream.addr, 0), "0s")
	defer func() { kars0.stop() }()

	pinnedNote := "load generator and upstream on CPU 0, proxies on CPU 1 (taskset)"
	if _, err := exec.LookPath("taskset"); err != nil {
		pinnedNote = "UNPINNED: taskset not found"
	}
	fmt.Printf("# kars-router load harness — %s, %d CPUs, %s per step, %s\n\n", time.Now().UTC().Format(time.RFC3339), numCPU(), duration, pinnedNote)
	// Other work on the machine skews every number; say how busy it was.
	fmt.Printf("load average before the run: %s\n\n", loadavg())
	defer func() { fmt.Printf("\nload average after the run: %s\n", loadavg()) }()
	paths := []struct {
		name, mode string
		c          *child
	}{
		{"direct", "azure", upstream},
		{"bare", "azure", bare},
		{"kars", "openai", kars},
		{"kars, window 0", "openai", kars0},
	}
	warm := (duration / 5).String()
	fmt.Println("## Fixed-rate latency (open loop, latency from the scheduled send time)")
	fmt.Println()
	fmt.Println("| rate | path | ok | errors | achieved rps | p50 µs | p90 µs | p99 µs | max µs | added p50 vs direct µs | added p99 vs direct µs | audit syncs/s |")
	fmt.Println("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	type key struct{ rate, path string }
	res := map[key]result{}
	for _, rate := range strings.Split(rates, ",") {
		for _, p := range paths {
			r := loadCounted(p.c, "rate", p.c.addr, p.mode, rate, duration.String(), warm)
			res[key{rate, p.name}] = r
			d := res[key{rate, "direct"}]
			fmt.Printf("| %s | %s | %d | %d | %.0f | %d | %d | %d | %d | %d | %d | %s |\n", rate, p.name, r.OK, r.Errors, r.RPS,
				r.P50, r.P90, r.P99, r.Max, r.P50-d.P50, r.P99-d.P99, r.syncs())
		}
	}
	fmt.Println()
	fmt.Println("## kars-router overhead above the bare reverse proxy (goal: < 50 µs p50, < 300 µs p99)")
	fmt.Println()
	fmt.Println("| rate | path | kars − bare p50 µs | kars − bare p99 µs | p50 goal | p99 goal |")
	fmt.Println("|---:|---|---:|---:|---|---|")
	for _, rate := range strings.Split(rates, ",") {
		for _, name := range []string{"kars", "kars, window 0"} {
			k, b := res[key{rate, name}], res[key{rate, "bare"}]
			fmt.Printf("| %s | %s | %d | %d | %s | %s |\n", rate, name, k.P50-b.P50, k.P99-b.P99, verdict(k.P50-b.P50 < 50), verdict(k.P99-b.P99 < 300))
		}
	}

	fmt.Println()
	fmt.Println("## Maximum throughput (closed loop, 64 connections)")
	fmt.Println()
	fmt.Println("| path | rps | errors | p50 µs | p99 µs | audit syncs/s |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	tb := load("max", bare.addr, "azure", "64", duration.String(), warm)
	tk := loadCounted(kars, "max", kars.addr, "openai", "64", duration.String(), warm)
	tk0 := loadCounted(kars0, "max", kars0.addr, "openai", "64", duration.String(), warm)
	kars0.stop()
	for _, r := range []struct {
		name string
		r    result
	}{{"bare", tb}, {"kars", tk}, {"kars, window 0", tk0}} {
		fmt.Printf("| %s | %.0f | %d | %d | %d | %s |\n", r.name, r.r.RPS, r.r.Errors, r.r.P50, r.r.P99, r.r.syncs())
	}
	// Attribution, not a goal: the same router with its audit log on tmpfs,
	// where fdatasync costs nothing, shows what the log's durability costs.
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		shm, err := os.MkdirTemp("/dev/shm", "kars-bench-")
		if err == nil {
			shmWork := filepath.Join(work, "shm")
			os.Mkdir(shmWork, 0o700)
			k2 := start("1", "-role", "kars", writeKarsConfigAudit(shmWork, upstream.addr, 0, shm))
			ts := loadCounted(k2, "max", k2.addr, "openai", "64", duration.String(), warm)
			k2.stop()
			os.RemoveAll(shm)
			fmt.Printf("| kars, audit log on tmpfs (attribution only) | %.0f | %d | %d | %d | %s |\n", ts.RPS, ts.Errors, ts.P50, ts.P99, ts.syncs())
		}
	}
	fmt.Printf("\nkars / bare throughput: %.1f%% (goal ≥ 90%%: %s); with window 0: %.1f%%\n",
		100*tk.RPS/tb.RPS, verdict(tk.RPS >= 0.9*tb.RPS), 100*tk0.RPS/tb.RPS)

	fmt.Println()
	fmt.Println("## RSS with 1,000 concurrent streams")
	fmt.Println()
	fmt.Println("| upstream | router memory limit | RSS idle MB | RSS peak MB | router CPU s | streams open at once | completed | errors | goroutines at peak | stacks MB | heap in use MB | Go runtime MB | goal < 60 MB |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	// A fresh router for each, so that memory held since the load steps
	// does not count against the streams.
	kars.stop()
	kars = start("1", "-role", "kars", cfgPath)
	streamsRSS("HTTP/1.1 (plain, like Ollama or vLLM)", "none", kars)
	kars.stop()
	// The same with the garbage collector told of a tight container limit
	// (router.SetMemoryLimit: a soft limit of 90% of it).
	for _, limit := range []string{"96Mi", "72Mi"} {
		kars = startEnv("1", []string{router.EnvMemoryLimit + "=" + limit}, "-role", "kars", cfgPath)
		streamsRSS("HTTP/1.1", router.EnvMemoryLimit+"="+limit, kars)
		kars.stop()
	}
	// The same with an HTTPS upstream speaking HTTP/2, as Azure OpenAI,
	// OpenAI and Anthropic do: streams share connections.
	certFile := filepath.Join(work, "upstream-cert.pem")
	tlsUp := start("0", "-role", "upstream", certFile)
	tlsWork := filepath.Join(work, "tls")
	os.Mkdir(tlsWork, 0o700)
	tlsKars := startEnv("1", []string{"SSL_CERT_FILE=" + certFile}, "-role", "kars", writeKarsConfig(tlsWork, tlsUp.addr, 0))
	streamsRSS("HTTPS, HTTP/2 (like Azure OpenAI)", "none", tlsKars)
	tlsKars.stop()
	tlsUp.stop()
	kars = start("1", "-role", "kars", cfgPath)

	fmt.Println()
	fmt.Println("## Config reload under load")
	fmt.Println()
	swaps := make(chan int)
	go func() {
		n := 0
		for i := 1; i <= 20; i++ {
			time.Sleep(duration / 21)
			writeKarsConfig(work, upstream.addr, int64(i))
			n++
		}
		swaps <- n
	}()
	rl := load("rate", kars.addr, "openai", "1000", duration.String(), "0s")
	n := <-swaps
	fmt.Printf("1,000 rps for %s while the config was replaced %d times (rename over router.json): %d ok, %d failed, p99 %d µs: %s\n",
		duration, n, rl.OK, rl.Errors, rl.P99, verdict(rl.Errors == 0))
}

// streamsRSS opens 1,000 slow streams through kars at once and prints a
// table row: its RSS before and at the peak, the CPU time it spent on the
// streams, and the Go runtime's view of the peak.
func streamsRSS(label, limit string, kars *child) {
	time.Sleep(500 * time.Millisecond)
	idle := rssKB(kars.cmd.Process.Pid)
	type sample struct {
		rss int64
		rt  map[string]float64
	}
	peak := make(chan sample)
	stopSampling := make(chan struct{})
	go func() {
		var max sample
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopSampling:
				peak <- max
				return
			case <-t.C:
				if r := rssKB(kars.cmd.Process.Pid); r > max.rss {
					max = sample{r, scrape(kars.admin)}
				}
			}
		}
	}()
	cpu0 := cpuSeconds(kars.cmd.Process.Pid)
	st := load("streams", kars.addr, "openai", "1000")
	cpu := cpuSeconds(kars.cmd.Process.Pid) - cpu0
	close(stopSampling)
	p := <-peak
	fmt.Printf("| %s | %s | %.1f | %.1f | %.2f | %d | %d | %d | %.0f | %.1f | %.1f | %.1f | %s |\n", label, limit,
		float64(idle)/1024, float64(p.rss)/1024, cpu, st.Concurrent, st.OK, st.Errors,
		p.rt["go_goroutines"], p.rt["go_memstats_stack_inuse_bytes"]/(1<<20), p.rt["go_memstats_heap_inuse_bytes"]/(1<<20),
		p.rt["go_memstats_sys_bytes"]/(1<<20), verdict(p.rss < 60*1024))
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

// loadCounted is load against a router c, with the audit fdatasync calls
// it made during the step (warm-up included) from its admin metrics.
func loadCounted(c *child, args ...string) result {
	before := scrape(c.admin)[auditSyncs]
	t0 := time.Now()
	r := load(args...)
	if after, ok := scrape(c.admin)[auditSyncs]; ok {
		r.SyncsPerSec = (after - before) / time.Since(t0).Seconds()
	}
	return r
}

// auditSyncs is the router's count of audit fdatasync calls.
const auditSyncs = "kars_router_audit_syncs_total"

// syncs formats r's audit syncs a second, or nothing for a path without
// an audit log.
func (r result) syncs() string {
	if r.SyncsPerSec == 0 {
		return ""
	}
	return fmt.Sprintf("%.0f", r.SyncsPerSec)
}

// scrape reads the Go runtime gauges and the audit sync count from a
// router's admin /metrics.
func scrape(admin string) map[string]float64 {
	out := map[string]float64{}
	if admin == "" {
		return out
	}
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if ok && (name == "go_goroutines" || name == auditSyncs || strings.HasPrefix(name, "go_memstats_")) {
			var f float64
			fmt.Sscanf(v, "%g", &f)
			out[name] = f
		}
	}
	return out
}

// cpuSeconds reads the user and system CPU time pid has used.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(filepath.Join("/proc", fmt.Sprint(pid), "stat"))
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces) in parentheses;
	// utime and stime are the 14th and 15th of stat(5).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	var utime, stime float64
	fmt.Sscanf(f[11], "%g", &utime)
	fmt.Sscanf(f[12], "%g", &stime)
	return (utime + stime) / 100 // clock ticks; USER_HZ is 100 on Linux
}

// rssKB reads VmRSS of pid.
func rssKB(pid int) int64 {
	b, err := os.ReadFile(filepath.Join("/proc", fmt.Sprint(pid), "status"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb
		}
	}
	return 0
}
