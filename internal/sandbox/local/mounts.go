package local

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// devices bound from the host into the agent's minimal /dev.
var devices = []string{"null", "zero", "full", "random", "urandom", "tty"}

// replacedTop are top-level host directories the agent gets fresh
// instances of instead of the host's: private /proc, minimal /dev, tmpfs
// /tmp and /run (a read-only bind would still expose host Unix sockets
// there, and Landlock cannot stop connect(2) on them), and the workspace.
var replacedTop = map[string]bool{"proc": true, "sys": true, "dev": true, "tmp": true, "run": true, "sandbox": true}

// rootLayout is what buildRoot assembles.
type rootLayout struct {
	// dir is the empty directory the root is built on.
	dir, workspace string
	// hide are host paths covered in the agent's view.
	hide []string
	// image, when set, replaces the host's tree (an unpacked image).
	image string
	// code, when set, is bound read-only at AgentCodeMount.
	code string
}

// buildRoot assembles the agent's filesystem under l.dir and pivots into
// it. It runs in the pod init, inside its fresh mount namespace, before the
// agent exists:
//
//	/            tmpfs, read-only at the end
//	/<each top-level dir>  recursive bind of the host's (or the image's), read-only, nosuid, nodev
//	/proc        new procfs of the pod's PID namespace
//	/sys         new sysfs (read-only), showing only the pod's network devices
//	/dev         tmpfs with null, zero, full, random, urandom, tty and a tmpfs /dev/shm
//	/tmp, /run   empty tmpfs
//	/sandbox     the workspace, read-write
//	/agent-code  agent code from an image, read-only (when given)
//	hidden paths (the state root) are covered by an empty read-only tmpfs
func buildRoot(l rootLayout) error {
	rootDir := l.dir
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := unix.Mount("tmpfs", rootDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("root tmpfs: %w", err)
	}
	// Unbindable: when the host directory that contains rootDir is bound
	// into the new root below, the kernel prunes this mount instead of
	// copying the half-built root into itself.
	if err := unix.Mount("", rootDir, "", unix.MS_UNBINDABLE, ""); err != nil {
		return fmt.Errorf("root tmpfs unbindable: %w", err)
	}
	base := "/"
	if l.image != "" {
		base = l.image
	}
	entries, err := os.ReadDir(base)
	if err != nil {
		return err
	}
	codeTop := strings.TrimPrefix(AgentCodeMount, "/")
	for _, e := range entries {
		name := e.Name()
		src, dst := filepath.Join(base, name), filepath.Join(rootDir, name)
		switch {
		case replacedTop[name], l.code != "" && name == codeTop:
			continue
		case e.Type()&os.ModeSymlink != 0:
			// Copied as a link, not followed: an image's /bin -> usr/bin
			// resolves inside the new root once it is the root.
			target, err := os.Readlink(src)
			if err == nil {
				err = os.Symlink(target, dst)
			}
			if err != nil {
				return err
			}
		case e.IsDir():
			if err := bindReadOnly(src, dst, true); err != nil {
				return err
			}
		case e.Type().IsRegular():
			if err := bindReadOnly(src, dst, false); err != nil {
				return err
			}
		}
	}
	if l.code != "" {
		if err := bindReadOnly(l.code, filepath.Join(rootDir, codeTop), true); err != nil {
			return err
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "sandbox"} {
		if err := os.Mkdir(filepath.Join(rootDir, d), 0o755); err != nil {
			return err
		}
	}
	const nosuidNodevNoexec = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Mount("proc", filepath.Join(rootDir, "proc"), "proc", nosuidNodevNoexec, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	// A fresh sysfs needs a network namespace owned by our user namespace;
	// without one /sys stays an empty directory, which agents tolerate.
	_ = unix.Mount("sysfs", filepath.Join(rootDir, "sys"), "sysfs", nosuidNodevNoexec|unix.MS_RDONLY, "")
	// Sized, so that scratch space cannot take the host's memory where no
	// memory cgroup charges it (rootless pods).
	if err := unix.Mount("tmpfs", filepath.Join(rootDir, "tmp"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777,size=512m"); err != nil {
		return fmt.Errorf("mount /tmp: %w", err)
	}
	if err := unix.Mount("tmpfs", filepath.Join(rootDir, "run"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=16m"); err != nil {
		return fmt.Errorf("mount /run: %w", err)
	}
	if err := buildDev(filepath.Join(rootDir, "dev")); err != nil {
		return err
	}
	if err := unix.Mount(l.workspace, filepath.Join(rootDir, "sandbox"), "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind workspace %s: %w", l.workspace, err)
	}
	if err := unix.MountSetattr(-1, filepath.Join(rootDir, "sandbox"), unix.AT_RECURSIVE,
		&unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}); err != nil {
		return fmt.Errorf("workspace mount flags: %w", err)
	}
	if l.image == "" {
		// Nothing of the host's tree is in an image root to hide.
		if err := hideAll(rootDir, l.hide); err != nil {
			return err
		}
	}
	if err := unix.Mount("", rootDir, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("read-only root: %w", err)
	}
	return pivot(rootDir)
}

// bindReadOnly bind-mounts src (recursively for directories) onto a new
// dst and makes the whole subtree read-only, nosuid and nodev in one
// mount_setattr(2) call, submounts included.
func bindReadOnly(src, dst string, dir bool) error {
	var err error
	if dir {
		err = os.Mkdir(dst, 0o755)
	} else {
		var f *os.File
		if f, err = os.Create(dst); err == nil {
			f.Close()
		}
	}
	if err != nil {
		return err
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if err := unix.MountSetattr(-1, dst, unix.AT_RECURSIVE, attr); err != nil {
		return fmt.Errorf("read-only %s: %w", src, err)
	}
	return nil
}

func buildDev(dev string) error {
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	for _, d := range devices {
		dst := filepath.Join(dev, d)
		f, err := os.Create(dst)
		if err != nil {
			return err
		}
		f.Close()
		if err := unix.Mount("/dev/"+d, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", d, err)
		}
	}
	if err := os.Mkdir(filepath.Join(dev, "shm"), 0o1777); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777,size=256m"); err != nil {
		return fmt.Errorf("mount /dev/shm: %w", err)
	}
	for link, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, filepath.Join(dev, link)); err != nil {
			return err
		}
	}
	return unix.Mount("", dev, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NOEXEC, "")
}

// pivot makes rootDir the root and detaches the old one, so no path leads
// back to the host's tree.
func pivot(rootDir string) error {
	if err := unix.Chdir(rootDir); err != nil {
		return err
	}
	// pivot_root(".", ".") stacks the old root on top of the new one;
	// detaching "." then removes it without needing a directory for it.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach old root: %w", err)
	}
	return unix.Chdir("/")
}
