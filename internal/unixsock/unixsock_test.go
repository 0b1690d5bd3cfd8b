package unixsock

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLongPath binds, dials and removes a socket whose path is far past
// the 107 bytes a socket address holds — and shows that the plain net
// package cannot, so the test fails if the limit ever stops applying
// unnoticed.
func TestLongPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("n", 63), strings.Repeat("s", 63))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "admin.sock")
	if len(path) <= maxPath {
		t.Fatalf("path only %d bytes", len(path))
	}
	if l, err := net.Listen("unix", path); err == nil {
		l.Close()
		t.Fatal("net.Listen bound a path past the limit: this package is no longer needed")
	}
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("no socket at the long path: %v", err)
	}
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("hello"))
		c.Close()
	}()
	c, err := DialContext(context.Background(), &net.Dialer{}, path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != "hello" {
		t.Fatalf("read %q", b)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}
}

func TestShortPathAndErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}
	long := filepath.Join(t.TempDir(), strings.Repeat("x", 120), "a.sock")
	if _, err := Listen(long); err == nil || !strings.Contains(err.Error(), "open") {
		t.Fatalf("a missing folder: %v", err)
	}
	if _, err := DialContext(context.Background(), &net.Dialer{}, filepath.Join(t.TempDir(), strings.Repeat("y", 120)+".sock")); err == nil {
		t.Fatal("dialled nothing")
	}
}
