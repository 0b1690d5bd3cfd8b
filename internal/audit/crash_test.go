package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The crash test runs a child process (this test binary, re-executed into
// TestHelperProcess) that appends from many goroutines and prints each
// acknowledged sequence number and hash. The parent kills it with SIGKILL at
// a random moment, 50 times over the same directory, and then checks that
// every acknowledged entry is in the log with the acknowledged hash, that
// sequence numbers never restarted, and that the whole log verifies.

const (
	envCrashDir = "KARS_AUDIT_CRASH_DIR"
	envCrashDay = "KARS_AUDIT_CRASH_DAY"
)

func crashKey(t testing.TB) ed25519.PrivateKey { return testKey(t, 42) }

func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(envCrashDir)
	if dir == "" {
		t.Skip("helper process for TestCrashKeepsAcknowledgedEntries")
	}
	day, _ := strconv.Atoi(os.Getenv(envCrashDay))
	// Each run lives on its own simulated day (several runs share one), so
	// the kills land around daily rotations as well.
	base := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(day) * 24 * time.Hour)
	start := time.Now()
	now := func() time.Time { return base.Add(time.Since(start)) }
	w, err := Open(Options{Dir: dir, Sandbox: "crash", SigningKey: crashKey(t), CheckpointEvery: 64, CheckpointInterval: 5 * time.Millisecond, Now: now})
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(3)
	}
	var mu sync.Mutex
	for g := range 16 {
		go func() {
			for i := 0; ; i++ {
				r, err := w.Append(context.Background(), record(g*1_000_000+i))
				if err != nil {
					fmt.Fprintln(os.Stderr, "append:", err)
					os.Exit(4)
				}
				mu.Lock()
				fmt.Fprintf(os.Stdout, "ack %d %s\n", r.Seq, r.Hash)
				mu.Unlock()
			}
		}()
	}
	select {}
}

func TestCrashKeepsAcknowledgedEntries(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test re-executes the test binary 50 times")
	}
	if os.Getenv(envCrashDir) != "" {
		t.Skip("inside the helper")
	}
	dir := t.TempDir()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed>>7))
	acked := map[uint64]string{}
	tornRuns := 0
	const runs = 50
	for run := range runs {
		var stderr bytes.Buffer
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), envCrashDir+"="+dir, envCrashDay+"="+strconv.Itoa(run/8))
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		firstAck := make(chan struct{})
		runAcks := map[uint64]string{}
		readDone := make(chan struct{})
		go func() {
			defer close(readDone)
			sc := bufio.NewScanner(out)
			once := sync.Once{}
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) != 3 || f[0] != "ack" {
					continue
				}
				seq, err := strconv.ParseUint(f[1], 10, 64)
				if err != nil {
					continue
				}
				runAcks[seq] = f[2]
				once.Do(func() { close(firstAck) })
			}
		}()
		if run%5 == 4 {
			// Kill early, possibly while Open is still recovering the
			// previous crash.
			time.Sleep(time.Duration(rng.IntN(15_000)) * time.Microsecond)
		} else {
			select {
			case <-firstAck:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("run %d: no acknowledgement within 20s; stderr: %s", run, stderr.String())
			}
			time.Sleep(time.Duration(rng.IntN(40_000)) * time.Microsecond)
		}
		cmd.Process.Kill() // SIGKILL
		<-readDone
		cmd.Wait()
		if strings.Contains(stderr.String(), "open:") || strings.Contains(stderr.String(), "append:") {
			t.Fatalf("run %d: child failed: %s", run, stderr.String())
		}
		for seq, h := range runAcks {
			if old, dup := acked[seq]; dup {
				t.Fatalf("run %d: sequence %d acknowledged twice (%s, then %s): numbering restarted", run, seq, old, h)
			}
			acked[seq] = h
		}
		if run%3 == 2 {
			// SIGKILL leaves completed writes in the page cache, so it
			// never tears a line by itself. Every third run also loses
			// part of the unsynced tail, as a power cut would.
			tornRuns += tearUnsynced(t, dir, acked, rng)
		}
	}
	if len(acked) < runs {
		t.Fatalf("only %d acknowledgements over %d runs: the test did not exercise the writer", len(acked), runs)
	}

	// Verify before any recovery: torn tails are warnings, nothing else.
	pinned := []ed25519.PublicKey{crashKey(t).Public().(ed25519.PublicKey)}
	rep, err := Verify(dir, VerifyOptions{TrustedKeys: pinned})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Problem != nil {
		t.Fatalf("log does not verify after %d crashes: %v", runs, rep.Problem)
	}
	// Recover once more and verify again.
	w, err := Open(Options{Dir: dir, SigningKey: crashKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rep = mustVerify(t, dir, VerifyOptions{TrustedKeys: pinned})
	missing, opens, torn := 0, 0, 0
	for _, e := range readEntries(t, dir) {
		if e.Action == ActionOpen {
			opens++
			if e.Attrs["recovered_bytes"] != "0" {
				torn++
			}
		}
		if h, ok := acked[e.Seq]; ok {
			if h != e.Hash {
				t.Fatalf("entry %d on disk is not the one acknowledged", e.Seq)
			}
			delete(acked, e.Seq)
		}
	}
	missing = len(acked)
	if missing != 0 {
		t.Fatalf("%d acknowledged entries are missing after the crashes", missing)
	}
	files, _ := listLogFiles(dir)
	t.Logf("%d runs: %d entries in %d files, %d checkpoints, %d opens of which %d cut a torn tail (%d tails torn by the test)",
		runs, rep.Entries, len(files), rep.Checkpoints, opens, torn, tornRuns)
	if tornRuns > 0 && torn == 0 {
		t.Fatal("the test tore tails but no restart reported cutting one")
	}
}

// tearUnsynced cuts the newest log file at a random point after everything
// that may have been acknowledged (the highest acknowledged entry and the
// highest checkpointed one), sometimes leaving zeros behind, as a power cut
// does to unsynced data. It returns 1 if it cut anything.
func tearUnsynced(t *testing.T, dir string, acked map[uint64]string, rng *rand.Rand) int {
	t.Helper()
	var keep uint64
	for seq := range acked {
		keep = max(keep, seq)
	}
	if cp, err := recoverCheckpoints(dir); err == nil {
		keep = max(keep, cp.Seq)
	}
	names, _ := listLogFiles(dir)
	if len(names) == 0 {
		return 0
	}
	path := filepath.Join(dir, names[len(names)-1])
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	safe := 0 // offset just past the last line that must survive
	splitLines(data, func(off int, line []byte) bool {
		if e, err := ParseLine(line); err == nil && e.Seq <= keep {
			safe = off + len(line) + 1
		}
		return true
	})
	if safe >= len(data) {
		return 0
	}
	cut := safe + 1 + rng.IntN(len(data)-safe)
	if cut >= len(data) {
		cut = len(data) - 1
	}
	torn := data[:cut]
	if rng.IntN(2) == 0 {
		torn = append(torn, make([]byte, 1+rng.IntN(512))...)
	}
	if err := os.WriteFile(path, torn, 0o640); err != nil {
		t.Fatal(err)
	}
	return 1
}
