package local

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// What must outlive a pod, and what an agent must not see.
//
// A pod's directory (<StateRoot>/<ID>) goes with the pod: it is removed
// when the pod stops, crashes or is replaced. What the router keeps for
// the sandbox — its audit log, budget ledger, trust scores, quarantine and
// checkpoint key — must not go with it, or an agent could reset all of it
// by exiting (the substrate restarts the pod). Spec.RouterState is a host
// folder outside the pod's directory, linked into the router's, that only
// the sandbox's deletion removes.
//
// The workspace is the agent's to fill; on a shared disk, filling it would
// starve the router's audit log (which then refuses every call) and the
// control plane. Spec.WorkspaceQuota puts the workspace on an ext4 image
// of that size, loop-mounted, so the agent gets ENOSPC instead.
//
// Every agent runs as UID 1000, and a rootless agent as the invoking user:
// file modes cannot keep them out of each other's workspaces, the kars
// folders (kubeconfig, etcd data, credentials) or the user's home.
// Spec.Hide covers such paths with empty read-only mounts in the agent's
// root, and leaves them out of both processes' Landlock read rules.

// hidden is what neither process of the pod may read: the state root
// (every pod's files), the router's persistent state, and Spec.Hide.
func (p *Pod) hidden() []string {
	s := p.spec
	h := append([]string{s.StateRoot}, s.Hide...)
	if s.RouterState != "" {
		h = append(h, s.RouterState)
	}
	return h
}

// routerWritable is what the router may write besides its directory.
func (s Spec) routerWritable() []string {
	w := slices.Clone(s.RouterWritable)
	if s.RouterState != "" {
		w = append(w, s.RouterState)
	}
	return w
}

// linkRouterState makes routerDir/link point at state, creating state
// (0700, owned by owner when owner >= 0) if it does not exist.
func linkRouterState(routerDir, link, state string, owner int) error {
	if owner >= 0 {
		// The router (owner) must reach its state through every folder
		// above it: missing ones are made traversable, existing ones must
		// be.
		if err := os.MkdirAll(filepath.Dir(state), 0o711); err != nil {
			return fmt.Errorf("router state: %w", err)
		}
		if err := checkTraversable(filepath.Dir(state)); err != nil {
			return fmt.Errorf("router state: %w", err)
		}
	}
	if err := os.MkdirAll(state, 0o700); err != nil {
		return fmt.Errorf("router state %s: %w", state, err)
	}
	if err := chownIf(state, owner); err != nil {
		return err
	}
	l := filepath.Join(routerDir, link)
	if err := os.MkdirAll(filepath.Dir(l), 0o700); err != nil {
		return err
	}
	for d := filepath.Dir(l); d != routerDir && strings.HasPrefix(d, routerDir); d = filepath.Dir(d) {
		if err := chownIf(d, owner); err != nil {
			return err
		}
	}
	if err := os.Symlink(state, l); err != nil {
		return fmt.Errorf("link router state: %w", err)
	}
	return nil
}

// HidePaths returns the paths to cover so that everything under each root
// in hide is invisible except the keep paths (and the folders leading to
// them, which stay listable so the keep paths can be reached). A root that
// does not exist is skipped; a root equal to or under a keep path is not
// hidden.
func HidePaths(hide, keep []string) []string {
	var out []string
	for _, root := range hide {
		root = filepath.Clean(root)
		if slices.ContainsFunc(keep, func(k string) bool { return within(root, filepath.Clean(k)) }) {
			continue
		}
		if _, err := os.Lstat(root); err != nil {
			continue
		}
		out = append(out, hideBut(root, keep)...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// hideBut covers root unless a keep path lies below it; then it recurses
// into root and covers the siblings along the way.
func hideBut(root string, keep []string) []string {
	below := slices.ContainsFunc(keep, func(k string) bool { return strings.HasPrefix(filepath.Clean(k), root+"/") })
	if !below {
		return []string{root}
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		p := filepath.Join(root, e.Name())
		if slices.ContainsFunc(keep, func(k string) bool { return within(p, filepath.Clean(k)) }) {
			continue
		}
		out = append(out, hideBut(p, keep)...)
	}
	return out
}

// within reports whether p is k or lies under it.
func within(p, k string) bool { return p == k || strings.HasPrefix(p, k+"/") }

// hideAll covers each path inside the agent's root (rootDir, still
// writable): a directory with an empty read-only tmpfs, a file with an
// empty root-owned file of mode 0000 bound read-only over it (made in the
// root and unlinked again, so it is nowhere else to see).
func hideAll(rootDir string, paths []string) error {
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_RDONLY
	// In the new /run (a plain tmpfs, still writable): the root tmpfs is
	// unbindable, so nothing can be bound from it.
	blank := filepath.Join(rootDir, "run", ".kars-hidden")
	defer os.Remove(blank)
	for _, h := range paths {
		p := filepath.Join(rootDir, h)
		fi, err := os.Lstat(p)
		if err != nil {
			continue // not there: nothing to hide
		}
		switch {
		case fi.IsDir():
			err = unix.Mount("tmpfs", p, "tmpfs", flags, "mode=0000,size=4k")
		case fi.Mode()&fs.ModeSymlink != 0:
			continue // its target is covered (or not) under its own path
		default:
			if _, serr := os.Lstat(blank); serr != nil {
				if err = os.WriteFile(blank, nil, 0); err != nil {
					break
				}
			}
			if err = unix.Mount(blank, p, "", unix.MS_BIND, ""); err == nil {
				err = unix.Mount("", p, "", unix.MS_REMOUNT|unix.MS_BIND|flags, "")
			}
		}
		if err != nil {
			return fmt.Errorf("hide %s: %w", h, err)
		}
	}
	return nil
}

// ErrNoQuota is returned when a workspace quota cannot be set up here
// (no loop devices, no mke2fs, or not root).
var ErrNoQuota = errors.New("workspace quota unavailable")

// WorkspaceImage is where the quota image of workspace ws lives.
func WorkspaceImage(ws string) string { return filepath.Clean(ws) + ".ext4" }

// mountWorkspace mounts an ext4 image of size bytes at ws, creating the
// image (WorkspaceImage) the first time with whatever ws already holds. A
// workspace already mounted is left as it is.
func mountWorkspace(ws string, size int64, owner int) error {
	img := WorkspaceImage(ws)
	if mounted, err := isMountPoint(ws); err != nil || mounted {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: loop devices need root", ErrNoQuota)
	}
	if _, err := os.Stat(img); errors.Is(err, fs.ErrNotExist) {
		if err := makeImage(img, ws, size, owner); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	loop, err := attachLoop(img)
	if err != nil {
		return err
	}
	// Held open until mounted: an autoclear loop device is released at
	// its last close when nothing has mounted it.
	defer loop.Close()
	if err := unix.Mount(loop.Name(), ws, "ext4", unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		// The loop device frees itself (autoclear) once nothing holds it.
		return fmt.Errorf("%w: mount %s on %s: %v", ErrNoQuota, img, ws, err)
	}
	return nil
}

// makeImage creates a sparse ext4 image, seeded with the files of seed
// (so that a workspace created before quotas keeps its content), owned by
// owner at its root. A half-made image is removed.
func makeImage(img, seed string, size int64, owner int) (err error) {
	mkfs, lookErr := exec.LookPath("mke2fs")
	if lookErr != nil {
		return fmt.Errorf("%w: mke2fs not found (install e2fsprogs)", ErrNoQuota)
	}
	tmp := img + ".new"
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return err
	}
	uid := max(owner, 0)
	args := []string{"-q", "-F", "-t", "ext4", "-m", "0", "-E", "root_owner=" + strconv.Itoa(uid) + ":" + strconv.Itoa(uid)}
	if entries, _ := os.ReadDir(seed); len(entries) > 0 {
		args = append(args, "-d", seed)
	}
	if out, err := exec.Command(mkfs, append(args, tmp)...).CombinedOutput(); err != nil {
		return fmt.Errorf("%w: mke2fs: %v: %s", ErrNoQuota, err, strings.TrimSpace(string(out)))
	}
	return os.Rename(tmp, img)
}

// attachLoop binds img to a free loop device that frees itself when
// unmounted, and returns the open device.
func attachLoop(img string) (*os.File, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoQuota, err)
	}
	defer ctl.Close()
	file, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	for range 8 { // another process may take the device we were given
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("%w: no free loop device: %v", ErrNoQuota, err)
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		lf, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrNoQuota, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(file.Fd()), Info: unix.LoopInfo64{Flags: unix.LO_FLAGS_AUTOCLEAR}}
		if err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg); err == nil {
			return lf, nil
		}
		lf.Close()
		if !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("%w: configure %s: %v", ErrNoQuota, dev, err)
		}
	}
	return nil, fmt.Errorf("%w: every loop device was taken", ErrNoQuota)
}

// unmountWorkspace detaches the workspace image mounted at ws, if any.
func unmountWorkspace(ws string) error {
	if mounted, err := isMountPoint(ws); err != nil || !mounted {
		return err
	}
	if err := unix.Unmount(ws, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount workspace %s: %w", ws, err)
	}
	return nil
}

// isMountPoint reports whether p is a mount point in this mount namespace.
func isMountPoint(p string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	p = filepath.Clean(p)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && UnescapeMountPath(fields[4]) == p {
			return true, nil
		}
	}
	return false, sc.Err()
}

// UnescapeMountPath decodes the octal escapes (\040 for a space, \134 for
// a backslash) of a path in /proc/*/mountinfo.
func UnescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
