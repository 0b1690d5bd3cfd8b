package trace

import (
	"context"
	"net"
	"os"
	"testing"
	"time"
)

// TestObservesConnects attaches the observer to the cgroup v2 root and
// checks that a connect() of this process is reported with its
// destination and command name.
func TestObservesConnects(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("eBPF cgroup hooks need root")
	}
	root, err := CgroupV2Root()
	if err != nil {
		t.Skip(err)
	}
	tr, err := Attach(root)
	if err != nil {
		t.Skipf("cannot attach eBPF here: %v", err)
	}
	defer tr.Close()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	want := l.Addr().(*net.TCPAddr).AddrPort()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan Attempt, 64)
	go tr.Run(ctx, func(a Attempt) {
		if a.Dst == want {
			got <- a
		}
	})
	go func() {
		for ctx.Err() == nil {
			if c, err := net.Dial("tcp4", want.String()); err == nil {
				c.Close()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	select {
	case a := <-got:
		if a.PID != uint32(os.Getpid()) || a.Proto != "tcp" || a.Comm == "" || a.Netns == 0 {
			t.Errorf("attempt %+v (pid %d)", a, os.Getpid())
		}
	case <-ctx.Done():
		t.Fatal("no attempt observed")
	}
}
