package devenv

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// stageBinaries copies kars-router and kars-agent from src into a folder the
// sandbox UIDs can reach and that is not hidden from them: the agent's /tmp,
// /run and /dev/shm are private tmpfs mounts, so a checkout under /tmp (as
// CI may use) would leave its binaries invisible inside the sandbox. The
// copies are content-addressed, so concurrent or later runs of the same
// build share them and a rebuild never changes a running pod's program.
func stageBinaries(src string, names ...string) (string, error) {
	h := sha256.New()
	for _, n := range names {
		f, err := os.Open(filepath.Join(src, n))
		if err != nil {
			return "", fmt.Errorf("%s not found in %s: build it with `make build`", n, src)
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	root := "/var/lib/kars/bin"
	if os.Geteuid() != 0 {
		root = filepath.Join(Home(), "bin")
	}
	dst := filepath.Join(root, hex.EncodeToString(h.Sum(nil))[:16])
	if visibleInSandbox(src) && os.Geteuid() != 0 {
		return src, nil
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return "", err
	}
	for _, d := range []string{filepath.Dir(root), root, dst} {
		_ = os.Chmod(d, 0o755)
	}
	for _, n := range names {
		target := filepath.Join(dst, n)
		if _, err := os.Stat(target); err == nil {
			continue
		}
		if err := copyFile(filepath.Join(src, n), target); err != nil {
			return "", err
		}
	}
	return dst, nil
}

func visibleInSandbox(dir string) bool {
	for _, private := range []string{"/tmp/", "/run/", "/dev/shm/"} {
		if strings.HasPrefix(dir+"/", private) {
			return false
		}
	}
	return true
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".stage-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}
