// Command kars-seccomp-installer keeps seccomp profiles in a node's kubelet
// seccomp directory. The kars chart runs it as a DaemonSet: it copies every
// *.json profile from -src (a ConfigMap volume) into -dst (a hostPath mount of
// <kubelet root>/seccomp), and checks again every -interval, rewriting a
// profile that was removed or changed. A pod whose Localhost profile is
// missing fails to start, so enhanced sandboxes never run unconfined; this
// keeps them schedulable.
//
// Each profile is checked to be a seccomp profile (JSON with a
// defaultAction) before it is written, and written atomically (temporary
// file, fsync, rename), so the kubelet never reads half a profile.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

func main() {
	src := flag.String("src", "/etc/kars/seccomp", "folder with the profiles (*.json) to install")
	dst := flag.String("dst", "/host/seccomp", "the node's kubelet seccomp folder")
	interval := flag.Duration("interval", time.Minute, "how often to check the installed profiles; 0 installs once and exits")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *src, *dst, *interval, log); err != nil {
		fmt.Fprintln(os.Stderr, "kars-seccomp-installer:", err)
		os.Exit(1)
	}
}

// run installs once — failing if that fails, so a broken profile shows as a
// crash-looping pod — and then keeps the profiles in place until ctx ends.
func run(ctx context.Context, src, dst string, interval time.Duration, log *slog.Logger) error {
	written, err := install(src, dst)
	if err != nil {
		return err
	}
	log.Info("profiles installed", "dst", dst, "written", written)
	if interval <= 0 {
		return nil
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		written, err := install(src, dst)
		if err != nil {
			log.Error("install profiles", "err", err)
			continue
		}
		if len(written) > 0 {
			log.Warn("profiles were missing or changed on the node; rewritten", "written", written)
		}
	}
}

// install copies every valid profile in src to dst when dst's copy differs,
// and returns the names it wrote.
func install(src, dst string) ([]string, error) {
	names, err := filepath.Glob(filepath.Join(src, "*.json"))
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no *.json profiles in %s", src)
	}
	sort.Strings(names)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, err
	}
	var written []string
	for _, p := range names {
		want, err := os.ReadFile(p)
		if err != nil {
			return written, err
		}
		name := filepath.Base(p)
		if err := checkProfile(want); err != nil {
			return written, fmt.Errorf("profile %s: %w", name, err)
		}
		target := filepath.Join(dst, name)
		if have, err := os.ReadFile(target); err == nil && bytes.Equal(have, want) {
			continue
		}
		if err := writeAtomic(target, want); err != nil {
			return written, fmt.Errorf("write %s: %w", target, err)
		}
		written = append(written, name)
	}
	return written, nil
}

// checkProfile accepts JSON objects with a seccomp defaultAction, the one
// field the OCI runtime spec requires of a profile.
func checkProfile(b []byte) error {
	var p struct {
		DefaultAction string `json:"defaultAction"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	if !strings.HasPrefix(p.DefaultAction, "SCMP_ACT_") {
		return errors.New("no defaultAction (SCMP_ACT_…): not a seccomp profile")
	}
	return nil
}

func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
