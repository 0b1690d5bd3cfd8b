//go:build unix

package upstreamhttp

import (
	"crypto/tls"
	"net"
	"syscall"
)

// alive reports whether an idle connection can be reused: the server has
// not closed it and has sent nothing on it (an idle HTTP/1.1 connection
// has nothing to read; bytes there are a close alert or a protocol error).
// It peeks at the socket without blocking, one system call.
func alive(nc net.Conn) bool {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ok = rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK
		return true
	})
	return ok && err == nil
}
