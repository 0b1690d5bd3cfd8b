// Command mesh is the AgentMesh relay load harness. In one run it drives,
// with the same load generator, two relays on loopback:
//
//	kars     cmd/kars-mesh (journal fsynced with group commit, quotas on)
//	toolkit  the Agent Governance Toolkit's relay (python -m agentmesh.relay,
//	         agent-governance-toolkit-core 5.0.0 from test/interop/mesh/.venv)
//
// For each relay it connects -agents WebSocket clients (each proving its
// DID in the connect frame), then offers message frames open-loop at each
// of -rates for -duration: client k sends to client k+1 a frame the size
// of a 1 KiB ratchet message, the recipient acks it. Latency runs from each
// frame's scheduled send time to its arrival, so a relay that falls behind
// cannot hide its queue. With taskset the relay runs on CPU 1 and the load
// generator on CPU 0.
//
//	go run ./bench/mesh -agents 1000 -rates 2000,10000 -duration 10s
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/wire"
)

func main() {
	agents := flag.Int("agents", 1000, "connected agents")
	rates := flag.String("rates", "2000,10000", "offered message rates (msgs/s), one step each")
	duration := flag.Duration("duration", 10*time.Second, "length of each step")
	python := flag.String("python", "test/interop/mesh/.venv/bin/python", "Python with the toolkit installed; empty to skip it")
	only := flag.String("relay", "", "measure only the relay already listening at this host:port (e.g. one run under a profiler)")
	role := flag.String("role", "", "internal: bare runs the floor relay on -port")
	rolePort := flag.Int("port", 0, "internal: port for -role")
	flag.Parse()
	if *role == "bare" {
		runBare(*rolePort)
		return
	}
	pin("0", os.Getpid())

	var steps []int
	for _, r := range strings.Split(*rates, ",") {
		n, err := strconv.Atoi(r)
		if err != nil {
			log.Fatalf("bad rate %q", r)
		}
		steps = append(steps, n)
	}
	tmp, err := os.MkdirTemp("", "bench-mesh-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)

	if *only != "" {
		_, p, _ := strings.Cut(*only, ":")
		port, _ := strconv.Atoi(p)
		fmt.Println("| relay | offered msgs/s | delivered msgs/s | p50 ms | p99 ms | max ms | lost | relay CPU µs/msg |")
		fmt.Println("|---|---|---|---|---|---|---|---|")
		run(*only, 0, port, *agents, steps, *duration)
		return
	}
	bin := filepath.Join(tmp, "kars-mesh")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/kars-mesh").CombinedOutput(); err != nil {
		log.Fatalf("building kars-mesh: %v\n%s", err, out)
	}
	fmt.Printf("# AgentMesh relay, %d agents, 1 KiB ciphertext frames, %s per step\n\n", *agents, *duration)
	fmt.Println("| relay | offered msgs/s | delivered msgs/s | p50 ms | p99 ms | max ms | lost | relay CPU µs/msg |")
	fmt.Println("|---|---|---|---|---|---|---|---|")

	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	port := freePort()
	bare := startProc(self, "-role", "bare", "-port", strconv.Itoa(port))
	waitHealth(port)
	run("bare (floor)", bare.Process.Pid, port, *agents, steps, *duration)
	stopProc(bare)

	port = freePort()
	kars := startProc(bin, "-state", filepath.Join(tmp, "state"), "-registry-listen", addr(port), "-relay-listen", addr(port),
		"-allow-unregistered", "-max-queued-messages", "100000")
	waitHealth(port)
	run("kars", kars.Process.Pid, port, *agents, steps, *duration)
	stopProc(kars)

	if *python != "" {
		if _, err := os.Stat(*python); err != nil {
			fmt.Printf("\n(toolkit relay skipped: %v; run test/interop/mesh/setup.sh)\n", err)
			return
		}
		port := freePort()
		tk := startProc(*python, "-W", "ignore", "-m", "agentmesh.relay", "--port", strconv.Itoa(port), "--log-level", "warning")
		waitHealth(port)
		run("toolkit (Python)", tk.Process.Pid, port, *agents, steps, *duration)
		stopProc(tk)
	}
}

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func pin(cpu string, pid int) {
	exec.Command("taskset", "-a", "-cp", cpu, strconv.Itoa(pid)).Run() // best effort: no taskset, no pinning
}

func startProc(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Stderr = nil
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	pin("1", cmd.Process.Pid)
	return cmd
}

func stopProc(cmd *exec.Cmd) {
	cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func waitHealth(port int) {
	for range 400 {
		if resp, err := http.Get("http://" + addr(port) + "/health"); err == nil {
			resp.Body.Close()
			time.Sleep(200 * time.Millisecond) // let a pinned process settle
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	log.Fatalf("relay on %d did not come up", port)
}

type agent struct {
	id  *identity.Identity
	did string
	ws  *websocket.Conn
	out chan []byte
}

type stats struct {
	mu   sync.Mutex
	lat  []time.Duration
	from time.Time // frames scheduled before this are warm-up
	all  int       // frames delivered in the step, warm-up included
}

// cpuTime is a process's user+system CPU time so far, from
// /proc/<pid>/stat (fields 14 and 15, in clock ticks of 10 ms), or 0.
// CPU per message does not depend on what else shares the machine, as
// latency does.
func cpuTime(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}

func run(name string, pid, port, n int, steps []int, d time.Duration) {
	st := &stats{}
	ags := connectAll(port, n, st)
	defer func() {
		for _, a := range ags {
			a.ws.CloseNow()
		}
	}()
	ct := make([]byte, 12+1024+16)
	rand.Read(ct)
	cipher := wire.B64(ct)
	dh := wire.B64(ct[:32])
	var seq atomic.Int64
	for _, rate := range steps {
		warm := time.Second
		start := time.Now()
		st.mu.Lock()
		st.lat = st.lat[:0]
		st.all = 0
		st.from = start.Add(warm)
		st.mu.Unlock()
		total := int(float64(rate) * (warm + d).Seconds())
		dropped := 0
		cpu0 := cpuTime(pid)
		for k := range total {
			at := start.Add(time.Duration(float64(k) / float64(rate) * float64(time.Second)))
			if w := time.Until(at); w > 0 {
				time.Sleep(w)
			}
			s := int(seq.Add(1))
			from, to := ags[s%n], ags[(s+1)%n]
			f := wire.Frame{V: 1, Type: wire.TypeMessage, From: from.did, To: to.did,
				ID:     strconv.Itoa(s) + "-" + strconv.FormatInt(at.UnixNano(), 10),
				Header: &wire.MessageHeader{DH: dh, N: uint32(s)}, Ciphertext: cipher}
			b, _ := json.Marshal(f)
			select {
			case from.out <- b:
			default:
				dropped++
			}
		}
		measured := int(float64(rate) * d.Seconds())
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			st.mu.Lock()
			got := len(st.lat)
			st.mu.Unlock()
			if got >= measured-dropped {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		cpu := cpuTime(pid) - cpu0 // sending and draining, warm-up included
		st.mu.Lock()
		lat := slices.Clone(st.lat)
		all := st.all
		st.mu.Unlock()
		slices.Sort(lat)
		q := func(p float64) float64 {
			if len(lat) == 0 {
				return 0
			}
			return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
		}
		// Delivered rate: frames of the measured window that arrived, over
		// the window plus the time their last one took to arrive.
		span := d.Seconds()
		if len(lat) > 0 {
			span += lat[len(lat)-1].Seconds()
		}
		perMsg := "–"
		if pid != 0 {
			perMsg = fmt.Sprintf("%.0f", float64(cpu.Microseconds())/float64(max(all, 1)))
		}
		fmt.Printf("| %s | %d | %.0f | %.2f | %.2f | %.2f | %d | %s |\n", name, rate, float64(len(lat))/span, q(0.5), q(0.99), q(1), max(0, measured-len(lat)), perMsg)
		time.Sleep(2 * time.Second) // drain
	}
}

func connectAll(port, n int, st *stats) []*agent {
	ags := make([]*agent, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			id, _ := identity.New(rand.Reader)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			ws, _, err := websocket.Dial(ctx, "ws://"+addr(port)+"/ws", nil)
			if err != nil {
				log.Fatalf("agent %d: %v", i, err)
			}
			ws.SetReadLimit(wire.MaxFrameBytes)
			b, _ := wire.ConnectFrame(id, time.Now()).Marshal()
			if err := ws.Write(ctx, websocket.MessageText, b); err != nil {
				log.Fatal(err)
			}
			a := &agent{id: id, did: id.DID(), ws: ws, out: make(chan []byte, 4096)}
			ags[i] = a
			go a.write()
			go a.read(st)
			go a.heartbeat()
		}()
	}
	wg.Wait()
	time.Sleep(time.Second) // every connect processed
	return ags
}

func (a *agent) write() {
	for b := range a.out {
		if err := a.ws.Write(context.Background(), websocket.MessageText, b); err != nil {
			return
		}
	}
}

// heartbeat keeps the agent online (§12.4): both relays count an agent
// silent for 90 s as offline.
func (a *agent) heartbeat() {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for range t.C {
		b, _ := json.Marshal(wire.Frame{V: 1, Type: wire.TypeHeartbeat, From: a.did})
		select {
		case a.out <- b:
		default:
		}
	}
}

func (a *agent) read(st *stats) {
	for {
		_, b, err := a.ws.Read(context.Background())
		if err != nil {
			return
		}
		now := time.Now()
		// Both relays forward the sender's frame; only its type and id
		// matter here (Python re-encodes with ": " separators).
		if !bytes.Contains(b, []byte(`"message"`)) {
			continue
		}
		id := fieldValue(b, `"id"`)
		if id == "" {
			continue
		}
		_, nanos, _ := strings.Cut(id, "-")
		ns, _ := strconv.ParseInt(nanos, 10, 64)
		at := time.Unix(0, ns)
		st.mu.Lock()
		st.all++
		if !at.Before(st.from) {
			st.lat = append(st.lat, now.Sub(at))
		}
		st.mu.Unlock()
		reply := []byte(`{"v":1,"type":"ack","id":"` + id + `"}`)
		select {
		case a.out <- reply:
		default:
		}
	}
}

// runBare is the floor: a WebSocket forwarder that finds "to" by byte
// search and writes the frame to that connection — no parsing, proof,
// storage, acks or quotas. What kars and the toolkit cost is measured
// above it.
func runBare(port int) {
	var mu sync.Mutex
	conns := map[string]*websocket.Conn{}
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		ws.SetReadLimit(wire.MaxFrameBytes)
		_, first, err := ws.Read(context.Background())
		if err != nil {
			return
		}
		did := fieldValue(first, `"from"`)
		mu.Lock()
		conns[did] = ws
		mu.Unlock()
		for {
			_, b, err := ws.Read(context.Background())
			if err != nil {
				return
			}
			if !bytes.Contains(b, []byte(`"message"`)) {
				continue
			}
			mu.Lock()
			to := conns[fieldValue(b, `"to"`)]
			mu.Unlock()
			if to != nil {
				to.Write(context.Background(), websocket.MessageText, b)
			}
		}
	})
	log.Fatal(http.ListenAndServe(addr(port), mux))
}

// fieldValue returns the string value of key in a flat JSON object.
func fieldValue(b []byte, key string) string {
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return ""
	}
	rest := b[i+len(key):]
	q := bytes.IndexByte(rest, '"')
	if q < 0 {
		return ""
	}
	rest = rest[q+1:]
	e := bytes.IndexByte(rest, '"')
	if e < 0 {
		return ""
	}
	return string(rest[:e])
}
