package localsubstrate

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/unixsock"
)

// openSockets exposes the agent's chat port and the router's admin port as
// Unix sockets in a root-only directory, so that `kars connect` and `kars
// status` reach into the pod the way `kubectl port-forward` does on a
// cluster.
func (s *Substrate) openSockets(sb *karsv1.KarsSandbox, e *entry) error {
	if s.o.SocketDir == nil {
		return nil
	}
	dir := s.o.SocketDir(sb.Namespace, sb.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, port := range map[string]uint16{"agent.sock": e.agentPort, "admin.sock": uint16(render.RouterAdminPort)} {
		p := filepath.Join(dir, name)
		_ = os.Remove(p)
		l, err := unixsock.Listen(p)
		if err != nil {
			return fmt.Errorf("socket %s: %w", p, err)
		}
		if err := os.Chmod(p, 0o600); err != nil {
			l.Close()
			return err
		}
		e.sockets = append(e.sockets, l)
		go forward(l, e.pod, port)
	}
	return nil
}

func forward(l net.Listener, pod podDialer, port uint16) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			up, err := pod.DialContext(context.Background(), "tcp", fmt.Sprintf("127.0.0.1:%d", port))
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

// podDialer dials inside a pod's network namespace.
type podDialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}
