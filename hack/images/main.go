// Command images builds kars's own container images without Docker: each is
// one static Go binary (CGO_ENABLED=0) on an empty base, plus the few files
// a binary needs (CA certificates for the router's upstream TLS, passwd and
// group entries for the sandbox UIDs, an empty /tmp), assembled with
// go-containerregistry. They are named as internal/render's catalog names
// them — <registry>/<name>:<version> — and either pushed (-registry) or
// written as an OCI image layout (-out), e.g.
//
//	go run ./hack/images -version v0.3.0 -registry ghcr.io/kars-io
//	go run ./hack/images -version dev -out bin/images
//
// The runtime adapters' images need Python and Node.js bases; their build
// definitions are runtimes/images/*/Dockerfile (see its README).
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// image is one of kars's Go images.
type image struct {
	name string
	// user runs the entrypoint; the egress guard is root (it installs
	// nftables rules with NET_ADMIN and nothing else).
	user   string
	labels map[string]string
}

var images = []image{
	{name: "kars-controller", user: "65532:65532"},
	{name: "kars-router", user: "1001:1001"},
	{name: "kars-egress-guard", user: "0:0"},
	// The mesh registry and relay (render.MeshSystem runs it as 65532).
	{name: "kars-mesh", user: "65532:65532"},
	// The reference agent, a contract-v1 BYO image.
	{name: "kars-agent", user: "1000:1000", labels: map[string]string{"org.kars.runtime.contract": "v1"}},
}

// epoch makes layers reproducible: the same binaries give the same digest.
var epoch = time.Unix(0, 0)

func main() {
	version := flag.String("version", "v0.0.0-dev", "image tag, normally the controller's version")
	registry := flag.String("registry", "", "push to this repository prefix (e.g. ghcr.io/kars-io); credentials from the Docker config")
	out := flag.String("out", "", "write an OCI image layout here instead of pushing")
	insecure := flag.Bool("insecure", false, "allow a plain-HTTP registry (a local one)")
	flag.Parse()
	if (*registry == "") == (*out == "") {
		log.Fatal("give exactly one of -registry or -out")
	}
	dir, err := os.MkdirTemp("", "kars-images-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	base, err := baseLayer()
	if err != nil {
		log.Fatal(err)
	}
	var lp layout.Path
	if *out != "" {
		if lp, err = layout.FromPath(*out); err != nil {
			if lp, err = layout.Write(*out, empty.Index); err != nil {
				log.Fatal(err)
			}
		}
	}
	for _, im := range images {
		bin := filepath.Join(dir, im.name)
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X github.com/kars-io/kars/internal/version.Version="+*version, "-o", bin, "./cmd/"+im.name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			log.Fatalf("build %s: %v", im.name, err)
		}
		img, err := build(im, bin, base, *version)
		if err != nil {
			log.Fatalf("%s: %v", im.name, err)
		}
		d, _ := img.Digest()
		ref := im.name + ":" + *version
		if *registry != "" {
			opts := []name.Option{}
			if *insecure {
				opts = append(opts, name.Insecure)
			}
			r, err := name.ParseReference(strings.TrimSuffix(*registry, "/")+"/"+ref, opts...)
			if err != nil {
				log.Fatal(err)
			}
			if err := remote.Write(r, img); err != nil {
				log.Fatalf("push %s: %v", r, err)
			}
			ref = r.String()
		} else if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref})); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s@%s\n", ref, d)
	}
}

// baseLayer holds what the binaries need besides themselves.
func baseLayer() (v1.Layer, error) {
	certs, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		return nil, fmt.Errorf("CA certificates for the router's upstream TLS: %w (apt-get install ca-certificates)", err)
	}
	return tarLayer([]entry{
		{path: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: certs},
		{path: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nagent:x:1000:1000:kars agent:/sandbox:/sbin/nologin\nrouter:x:1001:1001:kars router:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n")},
		{path: "etc/group", mode: 0o644, data: []byte("root:x:0:\nagent:x:1000:\nrouter:x:1001:\nnonroot:x:65532:\n")},
		{path: "tmp/", mode: 0o1777, dir: true},
		{path: "sandbox/", mode: 0o755, dir: true, uid: 1000},
	})
}

type entry struct {
	path string
	mode int64
	data []byte
	dir  bool
	uid  int
}

func tarLayer(entries []entry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.path, Mode: e.mode, Size: int64(len(e.data)), Typeflag: tar.TypeReg, ModTime: epoch, Uid: e.uid, Gid: e.uid}
		if e.dir {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
}

func build(im image, bin string, base v1.Layer, version string) (v1.Image, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	layer, err := tarLayer([]entry{{path: "usr/local/bin/" + im.name, mode: 0o755, data: data}})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), base, layer)
	if err != nil {
		return nil, err
	}
	labels := map[string]string{
		"org.opencontainers.image.title":   im.name,
		"org.opencontainers.image.version": version,
		"org.opencontainers.image.source":  "https://github.com/kars-io/kars",
	}
	for k, v := range im.labels {
		labels[k] = v
	}
	cfg := v1.Config{Entrypoint: []string{"/usr/local/bin/" + im.name}, User: im.user, Labels: labels, WorkingDir: "/",
		Env: []string{"PATH=/usr/local/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}}
	img, err = mutate.Config(img, cfg)
	if err != nil {
		return nil, err
	}
	return mutate.CreatedAt(img, v1.Time{Time: epoch})
}
