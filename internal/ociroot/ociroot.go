// Package ociroot unpacks a container image from a registry into a
// directory that can serve as a sandbox's read-only root filesystem, for
// BYO runtimes and OCI agent code under `kars dev` (no container runtime).
//
// The image's contract label is checked before a single layer is fetched.
// Layers are flattened (whiteouts applied) by go-containerregistry and the
// result is extracted defensively — the tar stream is untrusted input:
// every path stays inside the destination (no "..", no absolute names, no
// write through a symlink, hard links only to files already inside), device
// nodes and FIFOs are skipped, setuid/setgid bits are dropped. The root is
// content-addressed by the image digest, built in a temporary directory
// and renamed into place when complete, and made read-only.
//
// This package talks to registries and the local filesystem only.
package ociroot

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// ContractLabel is the image label declaring the runtime contract.
const ContractLabel = "org.kars.runtime.contract"

// Root is an unpacked image.
type Root struct {
	// Dir is the root filesystem.
	Dir string
	// Digest is the image's manifest digest.
	Digest string
	// Config is the image's runtime configuration (entrypoint, env, user).
	Config v1.Config
}

// Options configure Unpack.
type Options struct {
	// Cache holds one directory per image digest.
	Cache string
	// Keychain authenticates to the registry; nil is anonymous.
	Keychain authn.Keychain
	// Contract is the required value of ContractLabel; empty skips the
	// check (agent code images carry no runtime).
	Contract string
	// Insecure allows plain-HTTP registries (a local one).
	Insecure bool
	// MaxBytes bounds the unpacked size (default 8 GiB).
	MaxBytes int64
}

// UnpackError reports an image whose layers could not be unpacked into a
// root: a hostile or malformed archive, or a layer that failed to arrive.
type UnpackError struct {
	Ref string
	Err error
}

func (e *UnpackError) Error() string { return fmt.Sprintf("unpack %s: %v", e.Ref, e.Err) }

// Unwrap returns the cause.
func (e *UnpackError) Unwrap() error { return e.Err }

// ContractError reports an image without the wanted contract label.
type ContractError struct{ Ref, Got, Want string }

func (e *ContractError) Error() string {
	return fmt.Sprintf("image %s declares %s=%q, want %q: it does not implement the kars runtime contract", e.Ref, ContractLabel, e.Got, e.Want)
}

// Unpack fetches ref and returns its unpacked root, reusing one unpacked
// earlier for the same digest.
func Unpack(ctx context.Context, ref string, o Options) (*Root, error) {
	var nopts []name.Option
	if o.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	kc := o.Keychain
	if kc == nil {
		kc = authn.NewMultiKeychain()
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(kc))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image config of %s: %w", ref, err)
	}
	if o.Contract != "" && cf.Config.Labels[ContractLabel] != o.Contract {
		return nil, &ContractError{Ref: ref, Got: cf.Config.Labels[ContractLabel], Want: o.Contract}
	}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	root := &Root{Dir: filepath.Join(o.Cache, d.Hex, "rootfs"), Digest: d.String(), Config: cf.Config}
	if _, err := os.Stat(root.Dir); err == nil {
		return root, nil
	}
	if err := os.MkdirAll(o.Cache, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(o.Cache, ".unpack-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	flat := mutate.Extract(img)
	defer flat.Close()
	max := o.MaxBytes
	if max == 0 {
		max = 8 << 30
	}
	rootfs := filepath.Join(tmp, "rootfs")
	if err := Extract(flat, rootfs, max); err != nil {
		return nil, &UnpackError{Ref: ref, Err: err}
	}
	if err := readOnly(rootfs); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, filepath.Dir(root.Dir)); err != nil && !errors.Is(err, os.ErrExist) {
		if _, statErr := os.Stat(root.Dir); statErr != nil {
			return nil, err
		}
	}
	return root, nil
}

// Extract writes the tar stream into dir (created), refusing anything that
// would land outside it. It is the parser of untrusted layer data.
func Extract(r io.Reader, dir string, maxBytes int64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tr := tar.NewReader(r)
	var total int64
	// Hard links are made last: a flattened image lists the upper layers'
	// files first, so a link may precede its target.
	var links [][2]string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hardLinks(dir, links)
		}
		if err != nil {
			return err
		}
		rel, err := cleanName(h.Name)
		if err != nil {
			return err
		}
		if rel == "." {
			continue
		}
		target := filepath.Join(dir, rel)
		if err := noSymlinkParents(dir, rel); err != nil {
			return err
		}
		mode := os.FileMode(h.Mode).Perm() | os.FileMode(h.Mode)&os.ModeSticky
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
			if err := os.Chmod(target, mode|0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			total += h.Size
			if total > maxBytes {
				return fmt.Errorf("image unpacks to more than %d bytes", maxBytes)
			}
			if err := writeFile(target, tr, mode, h.Size); err != nil {
				return err
			}
		case tar.TypeSymlink:
			// A symlink may point anywhere: it is resolved inside the
			// sandbox's root, never followed while extracting.
			_ = os.Remove(target)
			if err := os.Symlink(h.Linkname, target); err != nil {
				return err
			}
		case tar.TypeLink:
			src, err := cleanName(h.Linkname)
			if err != nil {
				return err
			}
			links = append(links, [2]string{rel, src})
		default:
			// Devices, FIFOs and the like have no place in a sandbox root:
			// /dev is the pod's own.
		}
	}
}

func hardLinks(dir string, links [][2]string) error {
	for _, l := range links {
		rel, src := l[0], l[1]
		if err := noSymlinkParents(dir, src); err != nil {
			return err
		}
		fi, err := os.Lstat(filepath.Join(dir, src))
		if err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("hard link %s → %s: the target is not a file of the image", rel, src)
		}
		if err := noSymlinkParents(dir, rel); err != nil {
			return err
		}
		target := filepath.Join(dir, rel)
		_ = os.Remove(target)
		if err := os.Link(filepath.Join(dir, src), target); err != nil {
			return err
		}
	}
	return nil
}

// cleanName turns an entry name into a relative path inside the root.
func cleanName(n string) (string, error) {
	if strings.ContainsRune(n, 0) {
		return "", fmt.Errorf("entry name %q holds a NUL byte", n)
	}
	c := filepath.Clean("/" + n)
	rel := strings.TrimPrefix(c, "/")
	if rel == "" {
		rel = "."
	}
	for _, part := range strings.Split(filepath.ToSlash(n), "/") {
		if part == ".." {
			return "", fmt.Errorf("entry %q climbs out of the root", n)
		}
	}
	return rel, nil
}

// noSymlinkParents refuses to write through a symlink: every existing
// ancestor of rel inside dir must be a real directory.
func noSymlinkParents(dir, rel string) error {
	parts := strings.Split(rel, string(filepath.Separator))
	p := dir
	for _, part := range parts[:len(parts)-1] {
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		if errors.Is(err, os.ErrNotExist) {
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("entry %q would be written through %s, which is not a directory", rel, p)
		}
	}
	return nil
}

func writeFile(target string, r io.Reader, mode os.FileMode, size int64) error {
	_ = os.Remove(target)
	f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscallNoFollow, mode&^(os.ModeSetuid|os.ModeSetgid))
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, r, size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syscallNoFollow refuses to open a file through a symlink at its last
// component.
const syscallNoFollow = syscall.O_NOFOLLOW

// readOnly removes every write bit: the root is shared by every sandbox
// that runs the image.
func readOnly(dir string) error {
	return filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.Mode()&os.ModeSymlink != 0 {
			return err
		}
		return os.Chmod(p, fi.Mode().Perm()&^0o222|fi.Mode()&os.ModeSticky)
	})
}
