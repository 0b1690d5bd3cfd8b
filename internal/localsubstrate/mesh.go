package localsubstrate

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kars-io/kars/internal/sandbox/local"
	"github.com/kars-io/kars/internal/unixsock"
)

// MeshSocket is where a local router finds kars-mesh: a Unix socket in the
// router's own folder (its KARS_ROUTER_ROOT), which the substrate forwards
// to Options.MeshAddr on the host's loopback. The router's network
// namespace cannot reach the host's loopback, and kars-mesh is not
// exposed on any other address: a socket only that router's UID may open
// is the narrowest door.
const MeshSocket = "/var/run/kars/mesh/mesh.sock"

// openMeshSocket puts the mesh socket in the router's folder and forwards
// each connection to kars-mesh.
func (s *Substrate) openMeshSocket(routerDir string, e *entry) error {
	if s.o.MeshAddr == "" {
		return nil
	}
	p := filepath.Join(routerDir, MeshSocket)
	for d := filepath.Dir(p); d != routerDir; d = filepath.Dir(d) {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
		if err := os.Chown(d, local.RouterUID, local.RouterUID); err != nil && !errors.Is(err, syscall.EPERM) {
			return err
		}
	}
	_ = os.Remove(p)
	l, err := unixsock.Listen(p)
	if err != nil {
		return err
	}
	if err := os.Chmod(p, 0o600); err != nil {
		l.Close()
		return err
	}
	// Rootless pods run as the invoking user, who owns the socket anyway.
	if err := os.Chown(p, local.RouterUID, local.RouterUID); err != nil && !errors.Is(err, syscall.EPERM) {
		l.Close()
		return err
	}
	e.sockets = append(e.sockets, l)
	go forwardTo(l, s.o.MeshAddr)
	return nil
}

// forwardTo copies every connection accepted on l to addr and back.
func forwardTo(l net.Listener, addr string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			up, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(up, c); closeWrite(up); done <- struct{}{} }()
			go func() { _, _ = io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
			<-done
			<-done
		}()
	}
}
