package devenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/kars-io/kars/internal/sandbox/local"
)

// Progress lines the daemon writes and `kars dev` relays.
const (
	progressStep  = "STEP "
	progressReady = "READY "
	progressFail  = "FAIL "
)

// UpOptions configure `kars dev`.
type UpOptions struct {
	Paths Paths
	// Assets holds the control-plane binaries; empty finds them.
	Assets string
	// BinDir holds kars-router and kars-agent; empty means the folder of
	// the running kars binary.
	BinDir string
	// Timeout bounds the wait for the default sandbox.
	Timeout time.Duration
}

// Up starts the dev daemon in the background (or finds it running) and
// relays its progress to out until the default sandbox is ready.
func Up(ctx context.Context, o UpOptions, out io.Writer) error {
	if err := os.MkdirAll(o.Paths.Dir+"/logs", 0o700); err != nil {
		return err
	}
	if pid, ok := daemonPID(o.Paths); ok {
		fmt.Fprintf(out, "kars dev is already running (pid %d).\n", pid)
		return printSummary(o.Paths, out)
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Minute
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	_ = os.Remove(o.Paths.Progress())
	logf, err := os.OpenFile(o.Paths.Log(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"dev", "serve", "--dir", o.Paths.Dir}
	if o.Assets != "" {
		args = append(args, "--assets", o.Assets)
	}
	if o.BinDir != "" {
		args = append(args, "--bin-dir", o.BinDir)
	}
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The daemon outlives this command: its own session, no controlling
	// terminal, so a closed shell does not take the sandboxes down.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the kars dev daemon: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	fmt.Fprintf(out, "kars dev: starting the governed stack (daemon pid %d, state %s)\n", cmd.Process.Pid, o.Paths.Dir)
	return follow(ctx, o.Paths, out, exited, o.Timeout)
}

// follow relays progress lines until READY, FAIL, the daemon's exit or the
// timeout.
func follow(ctx context.Context, p Paths, out io.Writer, exited <-chan error, timeout time.Duration) error {
	deadline := time.After(timeout)
	var offset int64
	for {
		lines, next := readProgress(p, offset)
		offset = next
		for _, l := range lines {
			switch {
			case strings.HasPrefix(l, progressStep):
				fmt.Fprintln(out, "  ✓", strings.TrimPrefix(l, progressStep))
			case strings.HasPrefix(l, progressReady):
				fmt.Fprintln(out)
				return printSummary(p, out)
			case strings.HasPrefix(l, progressFail):
				return fmt.Errorf("%s (daemon log: %s)", strings.TrimPrefix(l, progressFail), p.Log())
			}
		}
		select {
		case err := <-exited:
			lines, _ := readProgress(p, offset)
			for _, l := range lines {
				if strings.HasPrefix(l, progressFail) {
					return fmt.Errorf("%s (daemon log: %s)", strings.TrimPrefix(l, progressFail), p.Log())
				}
			}
			return fmt.Errorf("the kars dev daemon exited during start-up (%v); see %s", err, p.Log())
		case <-deadline:
			return fmt.Errorf("the default sandbox was not ready after %s; the daemon keeps trying — see `kars status` and %s", timeout, p.Log())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func readProgress(p Paths, offset int64) ([]string, int64) {
	f, err := os.Open(p.Progress())
	if err != nil {
		return nil, offset
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, offset
	}
	var lines []string
	r := bufio.NewReader(f)
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			break // a partial last line is read again next time
		}
		offset += int64(len(l))
		lines = append(lines, strings.TrimRight(l, "\n"))
	}
	return lines, offset
}

// printSummary prints the summary the daemon left once ready.
func printSummary(p Paths, out io.Writer) error {
	raw, err := os.ReadFile(summaryPath(p))
	if err != nil {
		return fmt.Errorf("kars dev is running but wrote no summary yet; see %s", p.Log())
	}
	_, err = out.Write(raw)
	return err
}

func summaryPath(p Paths) string { return p.Dir + "/summary.txt" }

// Down stops the daemon: it tears down every local sandbox and the control
// plane, keeping the state for the next `kars dev`.
func Down(ctx context.Context, p Paths, out io.Writer) error {
	pid, ok := daemonPID(p)
	if !ok {
		fmt.Fprintln(out, "kars dev is not running.")
		return cleanupLeftovers(p, out)
	}
	fmt.Fprintf(out, "stopping kars dev (pid %d)…\n", pid)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if _, alive := daemonPID(p); !alive {
			fmt.Fprintf(out, "stopped. State is kept in %s: `kars dev` resumes it.\n", p.Dir)
			return cleanupLeftovers(p, out)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	fmt.Fprintln(out, "the daemon did not stop within 2m and was killed; cleaning up what it left")
	return errors.Join(errors.New("kars dev daemon killed"), cleanupLeftovers(p, out))
}

// cleanupLeftovers removes local pods a crashed daemon left behind.
func cleanupLeftovers(p Paths, out io.Writer) error {
	if _, err := os.Stat(p.Sandboxes()); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	cleaned, err := local.CleanupStale(p.Sandboxes())
	if len(cleaned) > 0 {
		fmt.Fprintf(out, "cleaned up %d sandbox(es) left by an earlier crash: %s\n", len(cleaned), strings.Join(cleaned, ", "))
	}
	return err
}
