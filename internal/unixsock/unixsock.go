// Package unixsock binds and dials Unix sockets at paths of any length.
//
// A socket's address holds at most 107 bytes of path (sun_path is 108
// bytes with its NUL), and kars dev puts sockets under
// $KARS_HOME/dev/…/<namespace>/<name>/, where a namespace and a name may
// each be 63 bytes: a long home or long names would fail with "bind:
// invalid argument". For such a path the socket is bound or dialled
// through /proc/self/fd/<fd of its folder>/<name>, a short path the kernel
// resolves to the same folder, so the socket lands where the long path
// says.
package unixsock

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// maxPath is the longest path a sockaddr_un holds.
const maxPath = 107

// Listen binds a Unix stream socket at path. Closing the listener removes
// the socket file.
func Listen(path string) (net.Listener, error) {
	if len(path) <= maxPath {
		return net.Listen("unix", path)
	}
	var l net.Listener
	err := viaFolder(path, func(short string) error {
		var err error
		l, err = net.Listen("unix", short)
		return err
	})
	if err != nil {
		return nil, err
	}
	// net would unlink the short name on Close, which no longer points
	// into the folder once its descriptor is closed.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	return &listener{Listener: l, path: path}, nil
}

// DialContext connects to the Unix stream socket at path with d.
func DialContext(ctx context.Context, d *net.Dialer, path string) (net.Conn, error) {
	if len(path) <= maxPath {
		return d.DialContext(ctx, "unix", path)
	}
	var c net.Conn
	err := viaFolder(path, func(short string) error {
		var err error
		c, err = d.DialContext(ctx, "unix", short)
		return err
	})
	return c, err
}

// viaFolder calls f with a short path naming path's file through an open
// descriptor of its folder, held open while f runs.
func viaFolder(path string, f func(short string) error) error {
	dir, base := filepath.Split(path)
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	short := fmt.Sprintf("/proc/self/fd/%d/%s", fd, base)
	if len(short) > maxPath {
		return fmt.Errorf("unix socket %s: its name %q is too long for a socket address", path, base)
	}
	if err := f(short); err != nil {
		return fmt.Errorf("unix socket %s: %w", path, err)
	}
	return nil
}

type listener struct {
	net.Listener
	path string
}

func (l *listener) Close() error {
	err := l.Listener.Close()
	if rmErr := os.Remove(l.path); err == nil && rmErr != nil && !os.IsNotExist(rmErr) {
		err = rmErr
	}
	return err
}
