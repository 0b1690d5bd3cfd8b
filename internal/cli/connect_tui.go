package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// openClawTUI attaches OpenClaw's own terminal UI to an OpenClaw sandbox:
// the sandbox's OpenClaw gateway serves its WebSocket on the contract's
// chat port, which kars forwards from a loopback port of this machine.
// The user's `openclaw` runs here; it holds no credential and reaches only
// the gateway, whose every tool call the router still decides.
func openClawTUI(ctx context.Context, sb *karsv1.KarsSandbox, ep *endpoint, session string, in io.Reader, out, errOut io.Writer) error {
	if sb.Spec.Runtime.Kind != karsv1.RuntimeOpenClaw {
		return fmt.Errorf("--tui attaches OpenClaw's terminal UI; %s runs %s", sb.Name, sb.Spec.Runtime.Kind)
	}
	bin, err := exec.LookPath("openclaw")
	if err != nil {
		return fmt.Errorf("--tui needs OpenClaw's CLI on PATH (npm install -g openclaw); or chat without it: kars connect %s", sb.Name)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	go forward(ctx, l, ep.dial)
	cmd := exec.CommandContext(ctx, bin, "tui", "--url", "ws://"+l.Addr().String(), "--session", "agent:main:kars-"+session)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = in, out, errOut
	return cmd.Run()
}

// forward relays every connection accepted on l to a new connection from
// dial, until l closes.
func forward(ctx context.Context, l net.Listener, dial func(context.Context) (net.Conn, error)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			up, err := dial(ctx)
			if err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
			go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
			<-done
		}()
	}
}
