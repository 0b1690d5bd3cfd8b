package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	_ "net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/inference/fakeprovider"
	"github.com/kars-io/kars/internal/router"
	"github.com/kars-io/kars/internal/routerconfig"
)

func signalled() context.Context {
	ctx, _ := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	return ctx
}

// serve prints the address then serves h until interrupted. With a
// certFile it serves HTTPS with HTTP/2, as Azure OpenAI does, under a fresh
// self-signed certificate for 127.0.0.1 that it writes to certFile (a
// client trusts it with SSL_CERT_FILE).
func serve(h http.Handler, certFile string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	scheme := "http"
	if certFile != "" {
		scheme = "https"
		ln = tls.NewListener(ln, selfSigned(certFile))
	}
	fmt.Printf("%s://%s\n", scheme, ln.Addr())
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	<-signalled().Done()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}

// runUpstream serves the fake provider. Non-streamed chat completions, the
// bulk of the load, get a response rendered once by the fake (real Azure
// wire format: content-filter annotations, usage) instead of being rendered
// per call, so the upstream's own cost on the shared core stays small and
// the harness measures the proxies rather than the fake.
func runUpstream(certFile string) {
	fake := fakeprovider.New()
	rec := httptest.NewRecorder()
	sample := newRequest("", "azure", false, "")
	sample.URL.Scheme, sample.URL.Host = "", ""
	fake.ServeHTTP(rec, sample)
	if rec.Code != http.StatusOK {
		log.Fatalf("fake upstream: %d %s", rec.Code, rec.Body)
	}
	canned := rec.Body.Bytes()
	serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if strings.HasSuffix(r.URL.Path, "/chat/completions") && !strings.Contains(string(body), `"stream":true`) &&
			r.Header.Get("Api-Key") == fake.APIKey {
			w.Header().Set("Content-Type", "application/json")
			w.Write(canned)
			return
		}
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		fake.ServeHTTP(w, r)
	}), certFile)
}

// selfSigned makes a TLS config offering HTTP/2 with a new certificate for
// 127.0.0.1, and writes the certificate to certFile.
func selfSigned(certFile string) *tls.Config {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kars-bench-upstream"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		log.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12}
}

// runBare is the floor: the standard library's reverse proxy and
// transport, doing nothing but forwarding.
func runBare(upstream string) {
	u, err := url.Parse(upstream)
	if err != nil {
		log.Fatal(err)
	}
	p := httputil.NewSingleHostReverseProxy(u)
	p.Transport = stdTransport()
	serve(p, "")
}

// stdTransport is net/http's Transport as kars-router configured it before
// it had its own (upstreamhttp): the bare proxy's, so that the floor stays
// the standard library's.
func stdTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 10 * time.Minute,
		ReadBufferSize:        2 << 10,
		WriteBufferSize:       1 << 10,
	}
}

// runKars runs the real router (router.Serve, as cmd/kars-router does),
// logging to a file as it would log to the container's stdout.
func runKars(cfgPath string) {
	limit, err := router.ParseMemorySize(os.Getenv(router.EnvMemoryLimit))
	if err != nil {
		log.Fatal(err)
	}
	router.SetMinProcs()         // as cmd/kars-router does
	defer router.TuneGC()()      // as cmd/kars-router does
	router.SetMemoryLimit(limit) // as cmd/kars-router does with -memory-limit
	logf, err := os.Create(filepath.Join(filepath.Dir(cfgPath), "router.log"))
	if err != nil {
		log.Fatal(err)
	}
	defer logf.Close()
	logs := router.NewLogWriter(logf) // as cmd/kars-router does
	defer logs.Close()
	// KARS_BENCH_CPUPROFILE=prefix writes prefix.<pid> for each router
	// the harness starts (the first serves the rate and throughput steps).
	if prefix := os.Getenv("KARS_BENCH_CPUPROFILE"); prefix != "" {
		f, err := os.Create(fmt.Sprintf("%s.%d", prefix, os.Getpid()))
		if err != nil {
			log.Fatal(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	// KARS_BENCH_MAXSTACK=n crashes the router when a goroutine's stack
	// grows past n bytes after start-up (fsnotify's reader has a 64 KiB
	// frame), printing where (debug.SetMaxStack): a probe for what makes
	// a stream's goroutine deep.
	if n, err := strconv.Atoi(os.Getenv("KARS_BENCH_MAXSTACK")); err == nil {
		time.AfterFunc(300*time.Millisecond, func() { debug.SetMaxStack(n) })
	}
	// KARS_BENCH_PPROF=dir serves net/http/pprof on loopback and writes its
	// address to dir/pprof.<pid>, for heap and goroutine profiles mid-step.
	if dir := os.Getenv("KARS_BENCH_PPROF"); dir != "" {
		runtime.MemProfileRate = 512 // every allocation, near enough
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("pprof.%d", os.Getpid())), []byte("http://"+ln.Addr().String()+"\n"), 0o644)
		http.HandleFunc("/debug/runtime-metrics", func(w http.ResponseWriter, _ *http.Request) {
			all := metrics.All()
			samples := make([]metrics.Sample, len(all))
			for i, d := range all {
				samples[i].Name = d.Name
			}
			metrics.Read(samples)
			for _, s := range samples {
				switch s.Value.Kind() {
				case metrics.KindUint64:
					fmt.Fprintf(w, "%s %d\n", s.Name, s.Value.Uint64())
				case metrics.KindFloat64:
					fmt.Fprintf(w, "%s %g\n", s.Name, s.Value.Float64())
				}
			}
		})
		go http.Serve(ln, nil) // net/http/pprof registers on the default mux
	}
	err = router.Serve(signalled(), router.ServeOptions{
		ConfigPath: cfgPath,
		Logger:     slog.New(slog.NewJSONHandler(logs, nil)),
		Ready:      func(addrs map[string]string) { fmt.Printf("http://%s http://%s\n", addrs["agent"], addrs["admin"]) },
	})
	if err != nil {
		log.Fatal(err)
	}
}

// writeKarsConfig writes (or atomically replaces) the router config: an
// Azure OpenAI target at the fake upstream, a governance policy, a budget
// (gen makes each generation's digest distinct) and the audit log.
func writeKarsConfig(dir, upstream string, gen int64) string {
	return writeKarsConfigAudit(dir, upstream, gen, filepath.Join(dir, "audit"))
}

// writeKarsConfigAudit is writeKarsConfig with the audit log in auditDir.
func writeKarsConfigAudit(dir, upstream string, gen int64, auditDir string) string {
	key := filepath.Join(dir, "upstream-key")
	os.WriteFile(key, []byte(fakeprovider.New().APIKey), 0o600)
	os.WriteFile(filepath.Join(dir, "admin-token"), []byte("bench-admin-token"), 0o600)
	agent, admin := karsPorts(dir)
	c := &routerconfig.Config{
		SchemaVersion: routerconfig.SchemaVersion,
		Sandbox:       routerconfig.Sandbox{Namespace: "kars-bench", Name: "bench", AgentID: "kars-bench/bench"},
		Listen:        agent,
		Models: routerconfig.Models{Primary: routerconfig.Target{Provider: routerconfig.ProviderAzureOpenAI, Model: "gpt-4.1",
			Deployment: "gpt-41", Endpoint: upstream, Auth: &routerconfig.Auth{Mode: routerconfig.AuthAPIKey, KeyFile: key}}},
		Budget:        &routerconfig.Budget{PerRequest: 100_000, Daily: 1 << 50, Monthly: 1<<50 + gen},
		ContentSafety: &routerconfig.ContentSafety{Hate: "Low", SelfHarm: "Low", Sexual: "Low", Violence: "Low"},
		Governance: &governance.Policy{Name: "bench", Rules: []governance.Rule{
			{Name: "no-shell", Effect: governance.EffectDeny, Actions: []string{"shell:*"}, Priority: 100},
			{Name: "no-preview-models", Effect: governance.EffectDeny, Actions: []string{"inference:*:*-preview"}, Priority: 50},
			{Name: "inference", Effect: governance.EffectAllow, Actions: []string{"inference:*:gpt-4.1*"}},
		}},
		Audit:    routerconfig.Audit{Dir: auditDir},
		Admin:    routerconfig.Admin{Listen: admin, TokenFile: filepath.Join(dir, "admin-token")},
		StateDir: filepath.Join(dir, "state"),
	}
	b, err := routerconfig.Marshal(c)
	if err != nil {
		log.Fatal(err)
	}
	path := filepath.Join(dir, routerconfig.FileName)
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		log.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		log.Fatal(err)
	}
	return path
}

// karsPorts returns the agent and admin addresses of the router whose
// config lives in dir: free loopback ports, chosen once and kept in
// dir/ports so that a rewritten config keeps them.
func karsPorts(dir string) (agent, admin string) {
	path := filepath.Join(dir, "ports")
	if b, err := os.ReadFile(path); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			return f[0], f[1]
		}
	}
	var addrs []string
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		defer ln.Close()
	}
	if err := os.WriteFile(path, []byte(addrs[0]+" "+addrs[1]+"\n"), 0o600); err != nil {
		log.Fatal(err)
	}
	return addrs[0], addrs[1]
}

// result is one load step's outcome; latencies in microseconds.
type result struct {
	OK, Errors         int64
	RPS                float64
	P50, P90, P99, Max int64
	Concurrent         int64 // streams mode: most streams open at once
	// Filled in by the orchestrator (loadCounted): the router's audit
	// syncs and entries a second, and its CPU time per call in µs.
	SyncsPerSec   float64 `json:"-"`
	EntriesPerSec float64 `json:"-"`
	SyncMeanUs    float64 `json:"-"` // the router's own mean fdatasync`
	CPUPerCall    float64 `json:"-"`
}

// fsyncResult is the write+fdatasync loop's latency in microseconds.
type fsyncResult struct {
	N             int
	P50, P90, P99 int64
	Mean          int64
}

// runFsync is the durability baseline: for d, at most rate times a second
// (0: back to back), it writes one line the size of a kars audit entry to
// a file in dir and fdatasyncs it, as an audit log with no batching would,
// and prints the latency of each write+fdatasync.
func runFsync(dir, d, rate string) {
	dur, err := time.ParseDuration(d)
	if err != nil {
		log.Fatal(err)
	}
	var every time.Duration // 0: back to back
	if n, _ := strconv.Atoi(rate); n > 0 {
		every = time.Second / time.Duration(n)
	}
	f, err := os.CreateTemp(dir, "fsync-baseline-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	line := append(bytes.Repeat([]byte("x"), 520), '\n')
	var lat []int64
	next := time.Now()
	for end := time.Now().Add(dur); time.Now().Before(end); {
		if every > 0 {
			next = next.Add(every)
			time.Sleep(time.Until(next))
		}
		t0 := time.Now()
		if _, err := f.Write(line); err != nil {
			log.Fatal(err)
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			log.Fatal(err)
		}
		lat = append(lat, time.Since(t0).Microseconds())
	}
	slices.Sort(lat)
	q := func(p float64) int64 { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	var sum int64
	for _, l := range lat {
		sum += l
	}
	json.NewEncoder(os.Stdout).Encode(fsyncResult{N: len(lat), P50: q(0.5), P90: q(0.9), P99: q(0.99), Mean: sum / int64(len(lat))})
}

const prompt = `{"model":"gpt-4.1","max_tokens":16,"messages":[{"role":"system","content":"You are a benchmark."},{"role":"user","content":"Summarise the kars trust boundary in one sentence.%s"}]%s}`

func newRequest(base, mode string, stream bool, extra string) *http.Request {
	streamField := ""
	if stream {
		streamField = `,"stream":true`
	}
	body := fmt.Sprintf(prompt, extra, streamField)
	var req *http.Request
	if mode == "azure" {
		req, _ = http.NewRequest("POST", base+"/openai/deployments/gpt-41/chat/completions?api-version=2024-10-21", strings.NewReader(body))
		req.Header.Set("Api-Key", fakeprovider.New().APIKey)
	} else {
		req, _ = http.NewRequest("POST", base+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer sk-agent-key")
	}
	req.Header.Set("Content-Type", "application/json")
	return req
}

// runLoad is the load generator. Modes:
//
//	rate <base> <mode> <rps> <duration> <warmup>   open loop at a fixed rate
//	max <base> <mode> <connections> <duration> <warmup>   closed loop
//	streams <base> <mode> <n>   n concurrent slow streams
func runLoad(args []string) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConns: 4096, MaxIdleConnsPerHost: 4096, IdleConnTimeout: time.Minute}}
	do := func(req *http.Request) bool {
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return err == nil && resp.StatusCode == http.StatusOK
	}
	var res result
	switch args[0] {
	case "rate":
		base, mode := args[1], args[2]
		rate, _ := strconv.Atoi(args[3])
		dur, _ := time.ParseDuration(args[4])
		warm, _ := time.ParseDuration(args[5])
		interval := time.Second / time.Duration(rate)
		total := int((dur + warm) / interval)
		lat := make([]int64, total)
		ok := make([]bool, total)
		var wg sync.WaitGroup
		start := time.Now().Add(20 * time.Millisecond)
		for i := range total {
			at := start.Add(time.Duration(i) * interval)
			if d := time.Until(at); d > 0 {
				time.Sleep(d)
			}
			wg.Go(func() {
				ok[i] = do(newRequest(base, mode, false, ""))
				lat[i] = time.Since(at).Microseconds()
			})
		}
		wg.Wait()
		first := int(warm / interval)
		res = summarize(lat[first:], ok[first:])
		res.RPS = float64(res.OK+res.Errors) / dur.Seconds()
	case "max":
		base, mode := args[1], args[2]
		conns, _ := strconv.Atoi(args[3])
		dur, _ := time.ParseDuration(args[4])
		warm, _ := time.ParseDuration(args[5])
		var mu sync.Mutex
		var lat []int64
		var ok []bool
		measureFrom := time.Now().Add(warm)
		end := measureFrom.Add(dur)
		var wg sync.WaitGroup
		for range conns {
			wg.Go(func() {
				var l []int64
				var o []bool
				for time.Now().Before(end) {
					t0 := time.Now()
					good := do(newRequest(base, mode, false, ""))
					if t0.After(measureFrom) {
						l = append(l, time.Since(t0).Microseconds())
						o = append(o, good)
					}
				}
				mu.Lock()
				lat, ok = append(lat, l...), append(ok, o...)
				mu.Unlock()
			})
		}
		wg.Wait()
		res = summarize(lat, ok)
		res.RPS = float64(res.OK) / dur.Seconds()
	case "streams":
		base, mode := args[1], args[2]
		n, _ := strconv.Atoi(args[3])
		var open, peak, okN, errN atomic.Int64
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				cur := open.Add(1)
				for {
					p := peak.Load()
					if cur <= p || peak.CompareAndSwap(p, cur) {
						break
					}
				}
				// 12 chunks, 300 ms apart: each stream stays open ~3.6 s.
				if do(newRequest(base, mode, true, " #fake:slow=300ms")) {
					okN.Add(1)
				} else {
					errN.Add(1)
				}
				open.Add(-1)
			})
		}
		wg.Wait()
		res = result{OK: okN.Load(), Errors: errN.Load(), Concurrent: peak.Load()}
	}
	json.NewEncoder(os.Stdout).Encode(res)
}

func summarize(lat []int64, ok []bool) result {
	var r result
	var good []int64
	for i, l := range lat {
		if ok[i] {
			r.OK++
			good = append(good, l)
		} else {
			r.Errors++
		}
	}
	if len(good) == 0 {
		return r
	}
	sort.Slice(good, func(i, j int) bool { return good[i] < good[j] })
	q := func(p float64) int64 { return good[min(len(good)-1, int(p*float64(len(good))))] }
	r.P50, r.P90, r.P99, r.Max = q(0.50), q(0.90), q(0.99), good[len(good)-1]
	return r
}
