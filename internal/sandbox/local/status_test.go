package local

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"
)

// TestAgentEndIsReported checks the agent's own wait status reaches
// Status, whatever the order in which the parent sees the pod init's exit
// and its last control message.
func TestAgentEndIsReported(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		env      string
		wantCode int
		wantSig  syscall.Signal
	}{
		{"EXIT_CODE=7", 7, 0},
		{"EXIT_CODE=0", 0, 0},
		{fmt.Sprintf("EXIT_SIGNAL=%d", syscall.SIGKILL), -1, syscall.SIGKILL},
		{fmt.Sprintf("EXIT_SIGNAL=%d", syscall.SIGTERM), -1, syscall.SIGTERM},
	} {
		t.Run(tc.env, func(t *testing.T) {
			p := startPod(t, baseSpec(t, "exit", "exit", tc.env))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			st, err := p.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			a := st.Agent
			if a.Running || a.ExitCode != tc.wantCode || a.Signal != tc.wantSig || a.OOMKilled {
				t.Fatalf("agent status %+v, want exit code %d, signal %v, not OOM-killed", a, tc.wantCode, tc.wantSig)
			}
		})
	}
}
