// Package cli implements the kars command tree. Each command lives in its own
// file; this file wires them together.
package cli

import (
	"context"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// Main runs the CLI with args and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	root := NewRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "kars:", err)
		return exitCode(err)
	}
	return 0
}

// NewRoot builds the kars command tree.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "kars",
		Short: "A Kubernetes-native runtime for AI agents",
		Long: "kars runs each AI agent in a hardened sandbox with zero credentials in the agent\n" +
			"and every call governed by policy and written to a tamper-evident audit log.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var c cluster
	c.register(root)
	root.AddCommand(newVersionCmd(), newAuditCmd(&c), newAddCmd(&c), newConnectCmd(&c), newStatusCmd(&c),
		newModelCmd(&c), newCredentialsCmd(&c), newDevCmd(), newMigrateCmd(&c), newConvertCmd(), newEgressCmd(&c), newTraceCmd(&c),
		newPairCmd(&c), newMeshCmd(&c), newA2ACmd(&c), newEvalCmd(&c))
	root.AddCommand(newUpCmd(&c), newSRECmd(&c), newOperatorCmd(&c), newApprovalsCmd(&c))
	return root
}
