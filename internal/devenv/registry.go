package devenv

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kars-io/kars/internal/version"
)

// ContractLabel is the image label a BYO runtime must carry.
const ContractLabel = "org.kars.runtime.contract"

// RegistryAddr is where the dev daemon's OCI registry listens.
const RegistryAddr = "127.0.0.1:16500"

// AgentImage is the reference of the kars-agent image the dev daemon
// publishes in its registry, for `kars add NAME --runtime kars-agent`.
func AgentImage() string { return RegistryAddr + "/kars/kars-agent:" + version.Version }

// localRegistry is a real OCI registry on loopback that holds the images of
// the dev environment, so the controller verifies the kars-agent image's
// contract label exactly as it would against ACR.
type localRegistry struct {
	srv  *http.Server
	host string
}

func startRegistry(addr string) (*localRegistry, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("local OCI registry on %s: %w", addr, err)
	}
	r := &localRegistry{srv: &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 10 * time.Second}, host: l.Addr().String()}
	go func() { _ = r.srv.Serve(l) }()
	return r, nil
}

func (r *localRegistry) close() { _ = r.srv.Close() }

// pushBinaryImage publishes an image whose single layer holds the program
// at path as /usr/local/bin/<name>, labelled as a contract-v1 runtime, and
// returns its digest-pinned reference.
func (r *localRegistry) pushBinaryImage(ctx context.Context, repo, tag, path string) (string, error) {
	bin, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s for the local image: %w", path, err)
	}
	target := "/usr/local/bin/" + repoBase(repo)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: target[1:], Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
		return "", err
	}
	if _, err := tw.Write(bin); err != nil {
		return "", err
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		return "", err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return "", err
	}
	img, err = mutate.Config(img, v1.Config{
		Entrypoint: []string{target},
		User:       "1000:1000",
		Labels:     map[string]string{ContractLabel: "v1", "org.opencontainers.image.title": repoBase(repo)},
	})
	if err != nil {
		return "", err
	}
	ref, err := name.ParseReference(r.host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return r.host + "/" + repo + "@" + d.String(), nil
}

func repoBase(repo string) string {
	for i := len(repo) - 1; i >= 0; i-- {
		if repo[i] == '/' {
			return repo[i+1:]
		}
	}
	return repo
}
