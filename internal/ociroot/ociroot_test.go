package ociroot

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type tentry struct {
	name, link string
	typ        byte
	mode       int64
	body       string
}

func tarBytes(t testing.TB, es []tentry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func layer(t *testing.T, es []tentry) v1.Layer {
	raw := tarBytes(t, es)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// registryWith pushes an image to a real registry on loopback and counts
// the layer blobs fetched from it.
func registryWith(t *testing.T, labels map[string]string) (ref string, layerFetches *atomic.Int64) {
	layerFetches = &atomic.Int64{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	l1 := layer(t, []tentry{
		{name: "bin/", typ: tar.TypeDir, mode: 0o755},
		{name: "bin/agent", typ: tar.TypeReg, mode: 0o4755, body: "#!/bin/sh\necho agent\n"},
		{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		{name: "etc/old.conf", typ: tar.TypeReg, mode: 0o644, body: "old"},
		{name: "etc/link", typ: tar.TypeSymlink, link: "/etc/passwd"},
	})
	l2 := layer(t, []tentry{
		{name: "etc/.wh.old.conf", typ: tar.TypeReg, mode: 0o644},
		{name: "etc/new.conf", typ: tar.TypeReg, mode: 0o644, body: "new"},
		{name: "bin/agent-again", typ: tar.TypeLink, link: "bin/agent"},
	})
	var digests []string
	for _, l := range []v1.Layer{l1, l2} {
		d, _ := l.Digest()
		digests = append(digests, d.String())
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, d := range digests {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+d) {
				layerFetches.Add(1)
			}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	img, err := mutate.AppendLayers(empty.Image, l1, l2)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{Entrypoint: []string{"/bin/agent"}, Labels: labels, User: "1000:1000"})
	if err != nil {
		t.Fatal(err)
	}
	ref = strings.TrimPrefix(srv.URL, "http://") + "/team/agent:v1"
	r, _ := name.ParseReference(ref, name.Insecure)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	layerFetches.Store(0)
	return ref, layerFetches
}

func TestUnpackFromRegistry(t *testing.T) {
	ref, fetches := registryWith(t, map[string]string{ContractLabel: "v1"})
	cache := t.TempDir()
	root, err := Unpack(context.Background(), ref, Options{Cache: cache, Contract: "v1", Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	if fetches.Load() != 2 {
		t.Fatalf("fetched %d layers, want 2", fetches.Load())
	}
	read := func(p string) string { b, _ := os.ReadFile(filepath.Join(root.Dir, p)); return string(b) }
	if read("bin/agent") == "" || read("etc/new.conf") != "new" || read("bin/agent-again") != read("bin/agent") {
		t.Fatalf("unpacked files missing")
	}
	if _, err := os.Lstat(filepath.Join(root.Dir, "etc/old.conf")); !os.IsNotExist(err) {
		t.Fatalf("whiteout not applied: %v", err)
	}
	if l, _ := os.Readlink(filepath.Join(root.Dir, "etc/link")); l != "/etc/passwd" {
		t.Fatalf("symlink = %q", l)
	}
	fi, _ := os.Stat(filepath.Join(root.Dir, "bin/agent"))
	if fi.Mode()&os.ModeSetuid != 0 || fi.Mode().Perm()&0o222 != 0 {
		t.Fatalf("bin/agent mode %v: want no setuid and no write bits", fi.Mode())
	}
	if root.Config.Entrypoint[0] != "/bin/agent" || !strings.HasPrefix(root.Digest, "sha256:") {
		t.Fatalf("root %+v", root)
	}
	// The same digest is not unpacked twice.
	again, err := Unpack(context.Background(), ref, Options{Cache: cache, Contract: "v1", Insecure: true})
	if err != nil || again.Dir != root.Dir || fetches.Load() != 2 {
		t.Fatalf("second unpack: %v, %s, %d layer fetches", err, again.Dir, fetches.Load())
	}
}

func TestUnpackChecksContractBeforeLayers(t *testing.T) {
	ref, fetches := registryWith(t, map[string]string{ContractLabel: "v0"})
	cache := t.TempDir()
	_, err := Unpack(context.Background(), ref, Options{Cache: cache, Contract: "v1", Insecure: true})
	var ce *ContractError
	if !errors.As(err, &ce) || ce.Got != "v0" {
		t.Fatalf("err = %v, want a ContractError", err)
	}
	if fetches.Load() != 0 {
		t.Fatalf("fetched %d layers of an image that failed the contract check", fetches.Load())
	}
	if ents, _ := os.ReadDir(cache); len(ents) != 0 {
		t.Fatalf("cache holds %d entries after a refused image", len(ents))
	}
}

// TestUnpackFailureIsTyped: a layer that cannot be unpacked (here: past
// the size bound) is an UnpackError, which kars dev reports as
// ImageUnpackInvalid, and leaves nothing in the cache.
func TestUnpackFailureIsTyped(t *testing.T) {
	ref, _ := registryWith(t, map[string]string{ContractLabel: "v1"})
	cache := t.TempDir()
	_, err := Unpack(context.Background(), ref, Options{Cache: cache, Contract: "v1", Insecure: true, MaxBytes: 8})
	var ue *UnpackError
	if !errors.As(err, &ue) || ue.Ref != ref {
		t.Fatalf("err = %v, want an UnpackError for %s", err, ref)
	}
	if ents, _ := os.ReadDir(cache); len(ents) != 0 {
		t.Fatalf("cache holds %d entries after a failed unpack", len(ents))
	}
}

func TestExtractRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	for name, es := range map[string][]tentry{
		"dotdot":          {{name: "../evil", typ: tar.TypeReg, body: "x"}},
		"nested dotdot":   {{name: "a/../../evil", typ: tar.TypeReg, body: "x"}},
		"through symlink": {{name: "link", typ: tar.TypeSymlink, link: outside}, {name: "link/evil", typ: tar.TypeReg, body: "x"}},
		"hardlink out":    {{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"}},
		"hardlink abs":    {{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}},
	} {
		dir := filepath.Join(t.TempDir(), "root")
		err := Extract(bytes.NewReader(tarBytes(t, es)), dir, 1<<20)
		if err == nil {
			t.Errorf("%s: extracted without error", name)
		}
		if ents, _ := os.ReadDir(outside); len(ents) != 0 {
			t.Fatalf("%s: wrote outside the root", name)
		}
	}
	// An absolute name lands inside the root.
	dir := filepath.Join(t.TempDir(), "root")
	if err := Extract(bytes.NewReader(tarBytes(t, []tentry{{name: "/etc/x", typ: tar.TypeReg, body: "x"}})), dir, 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "etc/x")); err != nil {
		t.Fatal(err)
	}
	// The size bound holds.
	if err := Extract(bytes.NewReader(tarBytes(t, []tentry{{name: "big", typ: tar.TypeReg, body: strings.Repeat("x", 100)}})), filepath.Join(t.TempDir(), "r"), 10); err == nil {
		t.Error("a 100-byte file passed a 10-byte bound")
	}
}

func FuzzExtract(f *testing.F) {
	f.Add(tarBytes(f, []tentry{{name: "a/b", typ: tar.TypeReg, body: "x"}, {name: "l", typ: tar.TypeSymlink, link: "/"}}))
	f.Add(tarBytes(f, []tentry{{name: "../x", typ: tar.TypeReg, body: "x"}}))
	f.Add(tarBytes(f, []tentry{{name: "l", typ: tar.TypeSymlink, link: ".."}, {name: "l/x", typ: tar.TypeReg}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		base := t.TempDir()
		dir := filepath.Join(base, "root")
		_ = Extract(bytes.NewReader(data), dir, 1<<20)
		ents, _ := os.ReadDir(base)
		for _, e := range ents {
			if e.Name() != "root" {
				t.Fatalf("extract wrote %s outside the root", e.Name())
			}
		}
	})
}
