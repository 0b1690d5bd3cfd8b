//go:build linux

package realnode

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// defaultRouteIP is the source address of the default route: the node's
// InternalIP (the kubelet refuses a loopback node IP).
func defaultRouteIP(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "-4", "route", "get", "1.1.1.1").CombinedOutput()
	if err != nil {
		out, err = exec.Command("ip", "-4", "route", "get", "192.0.2.255").CombinedOutput()
	}
	if err != nil {
		t.Fatalf("ip route get: %v\n%s (set KARS_REAL_NODE_IP)", err, out)
	}
	f := strings.Fields(string(out))
	for i := range f {
		if f[i] == "src" && i+1 < len(f) {
			return f[i+1]
		}
	}
	t.Fatalf("no source address in %q (set KARS_REAL_NODE_IP)", out)
	return ""
}

// listNetns lists the named network namespaces (CNI's cni-* among them).
func listNetns() map[string]bool {
	m := map[string]bool{}
	ents, _ := os.ReadDir("/var/run/netns")
	for _, e := range ents {
		m[e.Name()] = true
	}
	return m
}

// cgroupHierarchies lists the mounted cgroup hierarchies (v1, and the v2
// one a hybrid host mounts too: the kubelet writes there as well).
func cgroupHierarchies() []string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && (f[2] == "cgroup" || f[2] == "cgroup2") {
			out = append(out, f[1])
		}
	}
	return out
}

// removeCgroupTree removes a cgroup and its children, deepest first (a
// cgroup directory is removed with rmdir, never its files).
func removeCgroupTree(dir string) {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = syscall.Rmdir(dirs[i])
	}
}

func unmount(p string) error {
	return syscall.Unmount(p, syscall.MNT_DETACH)
}

// tarFile is a one-file layer: path in the image, mode 0755.
func tarFile(src, path string) (io.ReadCloser, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := ""
	for _, part := range strings.Split(filepath.Dir(path), "/") {
		dir += part + "/"
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: path, Mode: 0o755, Size: int64(len(b))}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(b); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return io.NopCloser(&buf), nil
}
