package localsubstrate

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"

	"github.com/kars-io/kars/internal/ociroot"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/sandbox/local"
)

// pushTestImage pushes an image of the given files (name → content; a
// value starting with "->" is a symlink) to a registry and returns its
// reference.
func pushTestImage(t *testing.T, host, repo string, files map[string]string, cfg v1.Config) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for n, c := range files {
		if target, ok := strings.CutPrefix(c, "->"); ok {
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: n, Linkname: target})
			continue
		}
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o755, Size: int64(len(c))})
		tw.Write([]byte(c))
	}
	tw.Close()
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err == nil {
		img, err = mutate.Config(img, cfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/" + repo + ":v1"
	r, err := name.ParseReference(ref, name.Insecure)
	if err == nil {
		err = remote.Write(r, img)
	}
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func waitImage(t *testing.T, im *images, ref, contract string) (*ociroot.Root, error) {
	t.Helper()
	done := make(chan struct{}, 4)
	notify := func() { done <- struct{}{} }
	r, err := im.get(ref, contract, nil, notify)
	var prep *errPreparing
	if !errors.As(err, &prep) || prep.failure != nil {
		t.Fatalf("first get = %v, %v; want a preparation under way", r, err)
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("not notified")
	}
	return im.get(ref, contract, nil, func() {})
}

// A BYO image from a registry becomes a process rooted in its unpacked
// tree: entrypoint found on the image's PATH through a link inside the
// image, environment merged with the container's, contract checked on the
// bytes pulled; an image without the label fails with the contract reason
// and is retried only after a backoff.
func TestImagesBYO(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	good := pushTestImage(t, host, "acme/bot", map[string]string{
		"usr/local/bin/bot": "#!/bin/sh\n",
		"bin":               "->usr/local/bin",
	}, v1.Config{Entrypoint: []string{"bot", "--serve"}, Env: []string{"PATH=/bin", "LANG=C", "KARS_X=image"},
		Labels: map[string]string{ociroot.ContractLabel: "v1"}})
	bad := pushTestImage(t, host, "acme/unlabelled", map[string]string{"bot": "x"}, v1.Config{Entrypoint: []string{"/bot"}})

	im := newImages(t.TempDir())
	root, err := waitImage(t, im, good, "v1")
	if err != nil {
		t.Fatal(err)
	}
	c := &corev1.Container{Name: "agent", Image: good, Env: []corev1.EnvVar{{Name: "KARS_X", Value: "container"}}}
	p, err := imageProcess(root, c)
	if err != nil {
		t.Fatal(err)
	}
	if p.Path != "/bin/bot" || strings.Join(p.Args, " ") != "--serve" {
		t.Errorf("process = %s %v, want /bin/bot --serve", p.Path, p.Args)
	}
	env := strings.Join(p.Env, " ")
	if !strings.Contains(env, "KARS_X=container") || strings.Contains(env, "KARS_X=image") || !strings.Contains(env, "LANG=C") {
		t.Errorf("env = %v: want the image's with the container's overriding", p.Env)
	}
	if _, err := os.Stat(filepath.Join(root.Dir, "usr/local/bin/bot")); err != nil {
		t.Errorf("unpacked tree: %v", err)
	}
	// Kubernetes' rules: args replace the image's cmd, command replaces
	// its entrypoint.
	c.Args = []string{"--other"}
	if p, _ = imageProcess(root, c); strings.Join(p.Args, " ") != "--serve --other" {
		t.Errorf("with args: %v", p.Args)
	}
	c.Command = []string{"/usr/local/bin/bot"}
	if p, _ = imageProcess(root, c); p.Path != "/usr/local/bin/bot" || strings.Join(p.Args, " ") != "--other" {
		t.Errorf("with command: %s %v", p.Path, p.Args)
	}
	c.Command = []string{"missing"}
	if _, err := imageProcess(root, c); err == nil || !strings.Contains(err.Error(), "not on the image's PATH") {
		t.Errorf("a missing program: %v", err)
	}

	im.p.backoff, im.p.maxBackoff = time.Hour, 2*time.Hour
	_, err = waitImage(t, im, bad, "v1")
	var prep *errPreparing
	if !errors.As(err, &prep) || prep.reason != ReasonImageContract || !strings.Contains(err.Error(), ociroot.ContractLabel) {
		t.Fatalf("unlabelled image: %v (reason %q)", err, prep.reason)
	}
	if time.Until(prep.retryAt) < 59*time.Minute {
		t.Errorf("retried at %s, want after the backoff", prep.retryAt)
	}
}

// Links resolve inside the image, never on the host.
func TestLookPathInStaysInside(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755)
	os.WriteFile(filepath.Join(root, "usr/bin/tool"), nil, 0o755)
	os.Symlink("/usr/bin", filepath.Join(root, "bin"))          // absolute: inside the image
	os.Symlink("/etc", filepath.Join(root, "hostetc"))          // points at a host path that exists
	os.Symlink("../../../../..", filepath.Join(root, "escape")) // climbs above the root
	if p, err := lookPathIn(root, "tool", []string{"PATH=/bin"}); err != nil || p != "/bin/tool" {
		t.Errorf("through an absolute link: %q %v", p, err)
	}
	if _, err := lookPathIn(root, "passwd", []string{"PATH=/hostetc"}); err == nil {
		t.Error("found the host's /etc/passwd through a link")
	}
	if _, err := lookPathIn(root, "passwd", []string{"PATH=/escape/etc"}); err == nil {
		t.Error("climbed out of the image")
	}
}

// agentCode.oci: the variables naming the code's directory follow it to
// where it is bound locally.
func TestAgentCodeEnv(t *testing.T) {
	env := []string{"KARS_AGENT_CODE=" + render.AgentCodeDir, "X=" + render.AgentCodeDir + "/sub", "Y=" + render.AgentCodeDir + "x"}
	agentCodeEnv(env)
	want := []string{"KARS_AGENT_CODE=" + local.AgentCodeMount, "X=" + local.AgentCodeMount + "/sub", "Y=" + render.AgentCodeDir + "x"}
	if strings.Join(env, " ") != strings.Join(want, " ") {
		t.Errorf("env = %v, want %v", env, want)
	}
}
