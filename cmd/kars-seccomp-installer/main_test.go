package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestInstallKeepsProfilesInPlace(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "seccomp")
	profile, err := os.ReadFile("../../config/seccomp/kars-strict.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "kars-strict.json"), profile, 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := install(src, dst)
	if err != nil || !reflect.DeepEqual(w, []string{"kars-strict.json"}) {
		t.Fatalf("first install wrote %v, %v", w, err)
	}
	got, _ := os.ReadFile(filepath.Join(dst, "kars-strict.json"))
	if string(got) != string(profile) {
		t.Fatal("installed profile differs")
	}
	if fi, _ := os.Stat(filepath.Join(dst, "kars-strict.json")); fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v, want 0644 (the kubelet reads it)", fi.Mode())
	}
	// Unchanged: nothing written.
	if w, err := install(src, dst); err != nil || len(w) != 0 {
		t.Fatalf("second install wrote %v, %v", w, err)
	}
	// Tampered with, then removed: restored each time.
	os.WriteFile(filepath.Join(dst, "kars-strict.json"), []byte(`{"defaultAction":"SCMP_ACT_ALLOW"}`), 0o644)
	if w, _ := install(src, dst); len(w) != 1 {
		t.Fatalf("tampered profile not rewritten: %v", w)
	}
	os.Remove(filepath.Join(dst, "kars-strict.json"))
	if w, _ := install(src, dst); len(w) != 1 {
		t.Fatalf("removed profile not rewritten: %v", w)
	}
	got, _ = os.ReadFile(filepath.Join(dst, "kars-strict.json"))
	if string(got) != string(profile) {
		t.Fatal("restored profile differs")
	}
	// No temporary files left behind.
	ents, _ := os.ReadDir(dst)
	if len(ents) != 1 {
		t.Fatalf("dst holds %d entries", len(ents))
	}
}

func TestInstallRefusesWhatIsNotAProfile(t *testing.T) {
	for name, body := range map[string]string{
		"not json":          "defaultAction: SCMP_ACT_ERRNO",
		"no default action": `{"syscalls":[]}`,
		"not an action":     `{"defaultAction":"allow"}`,
	} {
		t.Run(name, func(t *testing.T) {
			src, dst := t.TempDir(), t.TempDir()
			os.WriteFile(filepath.Join(src, "bad.json"), []byte(body), 0o644)
			if _, err := install(src, dst); err == nil || !strings.Contains(err.Error(), "bad.json") {
				t.Fatalf("err = %v", err)
			}
			if _, err := os.Stat(filepath.Join(dst, "bad.json")); !os.IsNotExist(err) {
				t.Fatal("an invalid profile was written")
			}
		})
	}
	if _, err := install(t.TempDir(), t.TempDir()); err == nil {
		t.Fatal("an empty source installed nothing without complaint")
	}
}

func TestRunRestoresOnTheInterval(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(src, "p.json"), []byte(`{"defaultAction":"SCMP_ACT_ERRNO"}`), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, src, dst, 10*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dst, "p.json")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not installed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	os.Remove(filepath.Join(dst, "p.json"))
	for {
		if _, err := os.Stat(filepath.Join(dst, "p.json")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not restored")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
