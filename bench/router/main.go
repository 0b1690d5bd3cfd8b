// Command router is kars-router's load harness. In one run it measures, at
// fixed open-loop rates, three paths to the same fake upstream (Azure OpenAI
// wire format, content-filter annotations included):
//
//	direct  load generator → upstream
//	bare    load generator → httputil.ReverseProxy → upstream   (the floor)
//	kars    load generator → kars-router → upstream             (policy, budget, audit on)
//
// and, after each rate, a bare write+fdatasync loop on the disk that holds
// kars's audit log: the price of one durable entry, which every kars answer
// waits for. Then come the maximum closed-loop throughput of bare and of
// kars with its audit log on disk and on tmpfs, kars-router's RSS and CPU
// while it holds 1,000 concurrent streams (HTTP/1.1 upstream, and HTTPS
// with HTTP/2), and failures while its config is swapped 20 times under
// 1,000 rps. The load generator and the upstream are pinned to CPU 0 and
// the proxies (and the fdatasync loop) to CPU 1 with taskset.
//
//	go run ./bench/router -duration 5s
//	go run ./bench/router -steps streams     # one step; see -h
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
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	role := flag.String("role", "", "internal: upstream, bare, kars, load, fsync or config")
	duration := flag.Duration("duration", 5*time.Second, "length of each fixed-rate and throughput step")
	rates := flag.String("rates", "100,500,1000,2000", "open-loop request rates to measure")
	steps := flag.String("steps", "latency,throughput,streams,reload", "steps to run, comma-separated (also: cpu)")
	flag.IntVar(&cpuRounds, "cpu-rounds", 8, "rounds of the cpu step")
	flag.StringVar(&otherRouter, "other-router", "", "cpu step: another kars-router binary (e.g. main's) measured in the same rounds")
	streams := flag.Int("streams", 1000, "concurrent streams in the streams step")
	flag.Func("kars-env", "extra NAME=value for kars-router's environment, e.g. GOGC=50 (repeatable)", func(v string) error {
		karsEnv = append(karsEnv, v)
		return nil
	})
	flag.StringVar(&karsBinary, "kars-router", "", "kars-router binary to measure (default: go build ./cmd/kars-router); \"role\" runs the router inside this harness instead, where KARS_BENCH_CPUPROFILE, KARS_BENCH_PPROF and KARS_BENCH_MAXSTACK work")
	flag.Parse()
	switch *role {
	case "upstream":
		runUpstream(flag.Arg(0))
	case "bare":
		runBare(flag.Arg(0))
	case "kars":
		runKars(flag.Arg(0))
	case "load":
		runLoad(flag.Args())
	case "fsync":
		runFsync(flag.Arg(0), flag.Arg(1), flag.Arg(2))
	case "config":
		// For running the roles by hand: write a router config for the
		// upstream at flag.Arg(1) in flag.Arg(0) and print its path.
		fmt.Println(writeKarsConfig(flag.Arg(0), flag.Arg(1), 0))
	case "":
		orchestrate(*duration, strings.Split(*rates, ","), strings.Split(*steps, ","), *streams)
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

// karsBinary is the kars-router binary the harness measures, or "role";
// karsEnv is added to its environment.
var (
	karsBinary string
	karsEnv    []string
)

// startKars starts kars-router on cfgPath, pinned to CPU 1, with extra
// environment variables, logging to router.log beside the config as it
// would log to its container's stdout, and waits until it is healthy.
func startKars(env []string, cfgPath string) *child { return startKarsBinary(karsBinary, env, cfgPath) }

// startKarsBinary is startKars for the kars-router binary karsBinary.
func startKarsBinary(karsBinary string, env []string, cfgPath string) *child {
	env = append(env, karsEnv...)
	if karsBinary == "role" {
		return startEnv("1", env, "-role", "kars", cfgPath)
	}
	agent, admin := karsPorts(filepath.Dir(cfgPath))
	cmd := exec.Command(karsBinary, "-config", cfgPath)
	if _, err := exec.LookPath("taskset"); err == nil {
		cmd = exec.Command("taskset", "-c", "1", karsBinary, "-config", cfgPath)
	}
	cmd.Env = append(os.Environ(), env...)
	logf, err := os.OpenFile(filepath.Join(filepath.Dir(cfgPath), "router.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		log.Fatal(err)
	}
	defer logf.Close()
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	c := &child{cmd: cmd, addr: "http://" + agent, admin: "http://" + admin}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(c.admin + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return c
			}
		}
		if time.Now().After(deadline) {
			log.Fatalf("kars-router on %s did not become healthy; see %s", cfgPath, logf.Name())
		}
	}
}

// run runs a role to completion pinned to cpu and decodes the JSON it
// prints into v.
func run(cpu string, v any, args ...string) {
	cmd := pinned(cpu, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		log.Fatalf("%v: %v", args, err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		log.Fatalf("%v: %v: %s", args, err, out)
	}
}

// load runs the load generator role pinned to CPU 0.
func load(args ...string) result {
	var r result
	run("0", &r, append([]string{"-role", "load"}, args...)...)
	return r
}

// fsyncBaseline runs the write+fdatasync loop in dir on CPU 1 (where the
// router runs) for d.
func fsyncBaseline(dir string, d time.Duration) fsyncResult {
	return fsyncPaced(dir, d, "0")
}

// fsyncPaced is the fdatasync loop started at most rate times a second
// ("0": back to back). A disk whose journal thread has gone idle between
// commits takes longer to sync than one syncing back to back, and a router
// at 500 calls a second syncs at that pace, not back to back.
func fsyncPaced(dir string, d time.Duration, rate string) fsyncResult {
	var r fsyncResult
	run("1", &r, "-role", "fsync", dir, d.String(), rate)
	return r
}

func orchestrate(duration time.Duration, rates, steps []string, nStreams int) {
	work, err := os.MkdirTemp("", "kars-bench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(work)
	if karsBinary == "" {
		karsBinary = filepath.Join(work, "kars-router")
		if out, err := exec.Command("go", "build", "-o", karsBinary, "./cmd/kars-router").CombinedOutput(); err != nil {
			log.Fatalf("building kars-router (run the harness from the repository root, or pass -kars-router): %v: %s", err, out)
		}
	}
	upstream := start("0", "-role", "upstream")
	defer upstream.stop()
	cfgPath := writeKarsConfig(work, upstream.addr, 0)

	pinnedNote := "load generator and upstream on CPU 0, proxies on CPU 1 (taskset)"
	if _, err := exec.LookPath("taskset"); err != nil {
		pinnedNote = "UNPINNED: taskset not found"
	}
	commit := "unknown"
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		commit = strings.TrimSpace(string(out))
	}
	fmt.Printf("# kars-router load harness — %s, commit %s, %d CPUs, %s per step, %s\n\n",
		time.Now().UTC().Format(time.RFC3339), commit, numCPU(), duration, pinnedNote)
	// Other work on the machine skews every number; say how busy it was.
	fmt.Printf("load average before the run: %s\n\n", loadavg())
	defer func() { fmt.Printf("\nload average after the run: %s\n", loadavg()) }()
	warm := (duration / 5).String()
	for _, step := range steps {
		switch step {
		case "latency":
			bare := start("1", "-role", "bare", upstream.addr)
			kars := startKars(nil, cfgPath)
			// Attribution: the same router with its audit log on tmpfs,
			// where fdatasync costs nothing, shows its own overhead.
			var tmpfs *child
			if shm, err := os.MkdirTemp("/dev/shm", "kars-bench-"); err == nil {
				defer os.RemoveAll(shm)
				shmWork := filepath.Join(work, "latency-tmpfs")
				os.Mkdir(shmWork, 0o700)
				tmpfs = startKars(nil, writeKarsConfigAudit(shmWork, upstream.addr, 0, shm))
			}
			latencyStep(duration, warm, rates, upstream, bare, kars, tmpfs, filepath.Join(work, "audit"))
			if tmpfs != nil {
				tmpfs.stop()
			}
			kars.stop()
			bare.stop()
		case "throughput":
			throughputStep(duration, warm, work, upstream)
		case "streams":
			streamsStep(work, upstream, cfgPath, nStreams)
		case "reload":
			reloadStep(duration, work, upstream, cfgPath)
		case "cpu":
			cpuStep(duration, warm, work, upstream)
		default:
			log.Fatalf("unknown step %q", step)
		}
		fmt.Printf("\n(load average after this step: %s)\n\n", loadavg())
	}
}

// tmpfsPath names the attribution path: kars with its audit log on tmpfs.
const tmpfsPath = "kars, audit log on tmpfs (attribution)"

// latencyStep measures the open-loop rates.
func latencyStep(duration time.Duration, warm string, rates []string, upstream, bare, kars, tmpfs *child, auditDir string) {
	fmt.Println("## Fixed-rate latency (open loop, latency from the scheduled send time)")
	fmt.Println()
	fmt.Println("| rate | path | ok | errors | achieved rps | p50 µs | p90 µs | p99 µs | max µs | added p50 over bare µs | added p99 over bare µs | audit syncs/s | entries/sync |")
	fmt.Println("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	type goalRow struct {
		rate              string
		kars, tmpfs, bare result
		fsync, paced      fsyncResult
	}
	paths := []struct {
		name, mode string
		c          *child
	}{{"direct", "azure", upstream}, {"bare", "azure", bare}, {"kars", "openai", kars}}
	if tmpfs != nil {
		paths = append(paths, struct {
			name, mode string
			c          *child
		}{tmpfsPath, "openai", tmpfs})
	}
	var goals []goalRow
	for _, rate := range rates {
		row := goalRow{rate: rate}
		for _, p := range paths {
			r := loadCounted(p.c, "rate", p.c.addr, p.mode, rate, duration.String(), warm)
			switch p.name {
			case "bare":
				row.bare = r
			case "kars":
				row.kars = r
			case tmpfsPath:
				row.tmpfs = r
			}
			added50, added99 := "", ""
			if p.name != "direct" && p.name != "bare" {
				added50, added99 = strconv.FormatInt(r.P50-row.bare.P50, 10), strconv.FormatInt(r.P99-row.bare.P99, 10)
			}
			fmt.Printf("| %s | %s | %d | %d | %.0f | %d | %d | %d | %d | %s | %s | %s | %s |\n", rate, p.name, r.OK, r.Errors, r.RPS,
				r.P50, r.P90, r.P99, r.Max, added50, added99, r.syncs(), r.perSync())
		}
		row.fsync = fsyncBaseline(auditDir, duration/2)
		row.paced = fsyncPaced(auditDir, duration/2, rate)
		goals = append(goals, row)
	}
	fmt.Println()
	fmt.Println("### Goal: added p50 ≤ same-run fdatasync p50 + 50 µs, added p99 ≤ 1,000 µs")
	fmt.Println()
	fmt.Println("The fdatasync loop (write one entry-sized line, fdatasync, repeat, on the audit log's disk, on the router's CPU) runs right after each rate's kars step, back to back (the goal's baseline) and then paced at the step's rate (what one sync costs at that pace: the disk's journal thread goes idle between commits). The last column is the router's own mean fdatasync during the kars step.")
	fmt.Println()
	fmt.Println("| rate | kars − bare p50 µs | fdatasync p50 µs | fdatasync p99 µs | p50 goal (≤ fdatasync p50 + 50) | kars − bare p99 µs | p99 goal (≤ 1,000) | kars on tmpfs − bare p50 µs (attribution) | paced fdatasync p50 µs | p50 against paced + 50 | fdatasync mean µs | paced mean µs | kars's own fdatasync, mean µs |")
	fmt.Println("|---:|---:|---:|---:|---|---:|---|---:|---:|---|---:|---:|---:|")
	for _, g := range goals {
		a50, a99 := g.kars.P50-g.bare.P50, g.kars.P99-g.bare.P99
		t50 := ""
		if tmpfs != nil {
			t50 = strconv.FormatInt(g.tmpfs.P50-g.bare.P50, 10)
		}
		fmt.Printf("| %s | %d | %d | %d | %s | %d | %s | %s | %d | %s | %d | %d | %.0f |\n", g.rate, a50, g.fsync.P50, g.fsync.P99,
			verdict(a50 <= g.fsync.P50+50), a99, verdict(a99 <= 1000), t50, g.paced.P50, verdict(a50 <= g.paced.P50+50),
			g.fsync.Mean, g.paced.Mean, g.kars.SyncMeanUs)
	}
	fmt.Println()
}

// throughputStep measures the closed-loop maximum of bare, kars with its
// audit log on disk, and kars with it on tmpfs; bare runs first and last,
// and kars is compared with the mean of the two.
func throughputStep(duration time.Duration, warm, work string, upstream *child) {
	fmt.Println("## Maximum throughput (closed loop, 64 connections)")
	fmt.Println()
	fmt.Println("| path | rps | errors | p50 µs | p99 µs | audit syncs/s | entries/sync | proxy CPU µs/call |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|")
	max := func(name string, c *child, mode string) result {
		r := loadCounted(c, "max", c.addr, mode, "64", duration.String(), warm)
		fmt.Printf("| %s | %.0f | %d | %d | %d | %s | %s | %.0f |\n", name, r.RPS, r.Errors, r.P50, r.P99, r.syncs(), r.perSync(), r.CPUPerCall)
		return r
	}
	bare := start("1", "-role", "bare", upstream.addr)
	b1 := max("bare", bare, "azure")
	diskWork := filepath.Join(work, "throughput-disk")
	os.Mkdir(diskWork, 0o700)
	kd := startKars(nil, writeKarsConfig(diskWork, upstream.addr, 0))
	disk := max("kars, audit log on disk", kd, "openai")
	kd.stop()
	var tmpfs result
	haveTmpfs := false
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if shm, err := os.MkdirTemp("/dev/shm", "kars-bench-"); err == nil {
			shmWork := filepath.Join(work, "throughput-tmpfs")
			os.Mkdir(shmWork, 0o700)
			kt := startKars(nil, writeKarsConfigAudit(shmWork, upstream.addr, 0, shm))
			tmpfs, haveTmpfs = max("kars, audit log on tmpfs", kt, "openai"), true
			kt.stop()
			os.RemoveAll(shm)
		}
	}
	b2 := max("bare (again)", bare, "azure")
	bare.stop()
	floor := (b1.RPS + b2.RPS) / 2
	fmt.Println()
	fmt.Printf("Bare, mean of its two runs: %.0f rps.\n\n", floor)
	fmt.Printf("- kars, audit log on disk: %.1f%% of bare (goal ≥ 75%%: %s)\n", 100*disk.RPS/floor, verdict(disk.RPS >= 0.75*floor))
	if haveTmpfs {
		fmt.Printf("- kars, audit log on tmpfs: %.1f%% of bare (goal ≥ 90%%: %s)\n", 100*tmpfs.RPS/floor, verdict(tmpfs.RPS >= 0.9*floor))
	}
	fmt.Println()
}

// streamsStep measures a fresh router holding n streams, with an HTTP/1.1
// upstream and with an HTTPS upstream speaking HTTP/2.
func streamsStep(work string, upstream *child, cfgPath string, n int) {
	fmt.Printf("## RSS with %d concurrent streams\n\n", n)
	fmt.Println("Each stream: 12 chunks 300 ms apart (~3.6 s). A fresh router per row. Router CPU is user+system time from the first stream to the last.")
	fmt.Println()
	fmt.Println("| upstream | RSS idle MB | RSS peak MB | router CPU s | CPU ms/stream | streams open at once | completed | errors | goroutines at peak | stacks MB | heap in use MB | Go runtime MB | goal |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	kars := startKars(nil, cfgPath)
	streamsRSS("HTTP/1.1 (plain, like Ollama or vLLM)", kars, n, 60)
	kars.stop()
	// Azure OpenAI, OpenAI and Anthropic speak HTTP/2 over TLS: streams
	// share connections.
	certFile := filepath.Join(work, "upstream-cert.pem")
	tlsUp := start("0", "-role", "upstream", certFile)
	tlsWork := filepath.Join(work, "tls")
	os.Mkdir(tlsWork, 0o700)
	tlsKars := startKars([]string{"SSL_CERT_FILE=" + certFile}, writeKarsConfig(tlsWork, tlsUp.addr, 0))
	streamsRSS("HTTPS, HTTP/2 (like Azure OpenAI)", tlsKars, n, 80)
	tlsKars.stop()
	tlsUp.stop()
	fmt.Println()
}

// reloadStep runs 1,000 rps while the config is replaced 20 times.
func reloadStep(duration time.Duration, work string, upstream *child, cfgPath string) {
	kars := startKars(nil, cfgPath)
	defer kars.stop()
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

// streamsRSS opens n slow streams through kars at once and prints a table
// row: its RSS before and at the peak, the CPU time it spent on the streams,
// and the Go runtime's view of the peak.
func streamsRSS(label string, kars *child, n int, goalMB int64) {
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
	st := load("streams", kars.addr, "openai", strconv.Itoa(n))
	cpu := cpuSeconds(kars.cmd.Process.Pid) - cpu0
	close(stopSampling)
	p := <-peak
	fmt.Printf("| %s | %.1f | %.1f | %.2f | %.2f | %d | %d | %d | %.0f | %.1f | %.1f | %.1f | < %d MB: %s |\n", label,
		float64(idle)/1024, float64(p.rss)/1024, cpu, 1000*cpu/float64(n), st.Concurrent, st.OK, st.Errors,
		p.rt["go_goroutines"], p.rt["go_memstats_stack_inuse_bytes"]/(1<<20), p.rt["go_memstats_heap_inuse_bytes"]/(1<<20),
		p.rt["go_memstats_sys_bytes"]/(1<<20), goalMB, verdict(p.rss < goalMB*1024))
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

// loadCounted is load against c, with, when c is a router, the audit
// fdatasync calls and audit entries (one per call) it made during the step
// (warm-up included) from its admin metrics, and its CPU time per call.
func loadCounted(c *child, args ...string) result {
	before := scrape(c.admin)
	cpu0 := cpuSeconds(c.cmd.Process.Pid)
	t0 := time.Now()
	r := load(args...)
	elapsed := time.Since(t0).Seconds()
	cpu := cpuSeconds(c.cmd.Process.Pid) - cpu0
	after := scrape(c.admin)
	if s, ok := after[auditSyncs]; ok {
		r.SyncsPerSec = (s - before[auditSyncs]) / elapsed
		r.EntriesPerSec = (after[requestsTotal] - before[requestsTotal]) / elapsed
		if n := s - before[auditSyncs]; n > 0 {
			r.SyncMeanUs = 1e6 * (after[auditSyncSeconds] - before[auditSyncSeconds]) / n
		}
	}
	if calls := float64(r.OK+r.Errors) * (1 + warmShare(args)); calls > 0 {
		r.CPUPerCall = 1e6 * cpu / calls
	}
	return r
}

// warmShare is the warm-up's length as a share of the measured duration
// for a load step's arguments (calls during warm-up cost CPU too).
func warmShare(args []string) float64 {
	if len(args) < 6 {
		return 0
	}
	d, err1 := time.ParseDuration(args[4])
	w, err2 := time.ParseDuration(args[5])
	if err1 != nil || err2 != nil || d <= 0 {
		return 0
	}
	return float64(w) / float64(d)
}

// The router's counters of audit fdatasync calls and of calls (each one
// audit entry).
const (
	auditSyncs       = "kars_router_audit_syncs_total"
	auditSyncSeconds = "kars_router_audit_sync_seconds_total"
	requestsTotal    = "kars_router_requests_total"
)

// syncs formats r's audit syncs a second, or nothing for a path without
// an audit log.
func (r result) syncs() string {
	if r.SyncsPerSec == 0 {
		return ""
	}
	return fmt.Sprintf("%.0f", r.SyncsPerSec)
}

// perSync formats the audit entries per fdatasync.
func (r result) perSync() string {
	if r.SyncsPerSec == 0 {
		return ""
	}
	return fmt.Sprintf("%.1f", r.EntriesPerSec/r.SyncsPerSec)
}

// scrape reads the Go runtime gauges and the audit sync count from a
// router's admin /metrics.
func scrape(admin string) map[string]float64 {
	out := map[string]float64{}
	if admin == "" {
		return out
	}
	// Uncompressed: the harness scrapes every 50 ms during the streams
	// step, and a gzip writer (~650 KB of deflate state) per scrape would
	// be the harness's weight on the router's heap, not the streams'.
	req, _ := http.NewRequest("GET", admin+"/metrics", nil)
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i] // labelled series are summed
		}
		if ok && (name == "go_goroutines" || name == auditSyncs || name == auditSyncSeconds || name == requestsTotal || strings.HasPrefix(name, "go_memstats_")) {
			var f float64
			fmt.Sscanf(v, "%g", &f)
			out[name] += f
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

// cpuRounds and otherRouter configure the cpu step.
var (
	cpuRounds   int
	otherRouter string
)

// cpuStep measures CPU time per call, the figure other load on a shared
// machine disturbs least: round after round, the same 64-connection closed
// loop against bare, kars with its audit log on tmpfs (the router's own
// cost, without the disk's) and, with -other-router, another kars-router
// build the same way, so that every path sees the same moments of the
// machine. It prints each round and the medians.
func cpuStep(duration time.Duration, warm, work string, upstream *child) {
	fmt.Println("## CPU per call (closed loop, 64 connections, rounds alternating between the paths)")
	fmt.Println()
	shm, err := os.MkdirTemp("/dev/shm", "kars-bench-")
	if err != nil {
		log.Fatalf("cpu step: needs /dev/shm: %v", err)
	}
	defer os.RemoveAll(shm)
	type path struct {
		name string
		c    *child
		mode string
		cpu  []float64
		rps  []float64
	}
	paths := []*path{{name: "bare", c: start("1", "-role", "bare", upstream.addr), mode: "azure"}}
	kars := func(name, bin, dir string) *path {
		wd := filepath.Join(work, dir)
		os.Mkdir(wd, 0o700)
		return &path{name: name, c: startKarsBinary(bin, nil, writeKarsConfigAudit(wd, upstream.addr, 0, filepath.Join(shm, dir))), mode: "openai"}
	}
	paths = append(paths, kars("kars, audit log on tmpfs", karsBinary, "cpu-kars"))
	if otherRouter != "" {
		paths = append(paths, kars("other kars-router ("+otherRouter+"), audit log on tmpfs", otherRouter, "cpu-other"))
	}
	defer func() {
		for _, p := range paths {
			p.c.stop()
		}
	}()
	fmt.Print("| round |")
	for _, p := range paths {
		fmt.Printf(" %s µs/call (rps) |", p.name)
	}
	fmt.Println()
	fmt.Println("|---:|" + strings.Repeat("---:|", len(paths)))
	for r := range cpuRounds {
		fmt.Printf("| %d |", r+1)
		for _, p := range paths {
			res := loadCounted(p.c, "max", p.c.addr, p.mode, "64", duration.String(), warm)
			p.cpu, p.rps = append(p.cpu, res.CPUPerCall), append(p.rps, res.RPS)
			fmt.Printf(" %.1f (%.0f) |", res.CPUPerCall, res.RPS)
		}
		fmt.Println()
	}
	fmt.Print("| median |")
	for _, p := range paths {
		fmt.Printf(" **%.1f** (%.0f) |", median(p.cpu), median(p.rps))
	}
	fmt.Println()
	fmt.Println()
	bare := median(paths[0].cpu)
	for _, p := range paths[1:] {
		fmt.Printf("- %s: %.2f× bare's CPU per call (median of rounds)\n", p.name, median(p.cpu)/bare)
	}
	if len(paths) == 3 {
		wins := 0
		for i := range paths[1].cpu {
			if paths[1].cpu[i] < paths[2].cpu[i] {
				wins++
			}
		}
		fmt.Printf("- kars below the other build in %d of %d rounds\n", wins, len(paths[1].cpu))
	}
	fmt.Println()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
