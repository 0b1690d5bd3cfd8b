package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/kars-io/kars/internal/devenv"
)

func newDevCmd() *cobra.Command {
	var o devenv.UpOptions
	var dir string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the governed stack on this machine: control plane, controller, local sandboxes",
		Long: "kars dev starts a real kube-apiserver, etcd and kube-controller-manager on loopback,\n" +
			"installs the kars CRDs, runs the controller with the local sandbox substrate (network\n" +
			"namespaces, nftables, seccomp, Landlock, cgroups: no Docker, no cluster) and brings up\n" +
			"the governed sandbox dev-agent. It returns once dev-agent answers; the stack keeps\n" +
			"running in the background until `kars dev down`. State lives in ~/.kars/dev, so the\n" +
			"next `kars dev` resumes it. Run it as root for the full isolation.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Paths = devPaths(dir)
			if os.Geteuid() != 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning: not root — sandboxes fall back to rootless mode, which keeps fewer guarantees (see docs/local-sandbox.md); enhanced isolation needs root")
			}
			return devenv.Up(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", "", "state folder (default ~/.kars/dev)")
	cmd.Flags().StringVar(&o.Assets, "assets", "", "folder with etcd, kube-apiserver, kube-controller-manager (default: tools/kube/bin or $KUBEBUILDER_ASSETS)")
	cmd.Flags().StringVar(&o.BinDir, "bin-dir", "", "folder with kars-router and kars-agent (default: next to kars)")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", 0, "how long to wait for dev-agent (default 5m)")

	down := &cobra.Command{
		Use:   "down",
		Short: "Stop kars dev and clean up every sandbox (the state is kept)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return devenv.Down(cmd.Context(), devPaths(dir), cmd.OutOrStdout())
		},
	}
	var so devenv.ServeOptions
	serve := &cobra.Command{
		Use:    "serve",
		Short:  "Run the kars dev daemon in the foreground (kars dev starts it)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			so.Paths = devPaths(dir)
			return devenv.Serve(cmd.Context(), so)
		},
	}
	serve.Flags().StringVar(&so.Assets, "assets", "", "control-plane binaries")
	serve.Flags().StringVar(&so.BinDir, "bin-dir", "", "kars-router and kars-agent")
	serve.Flags().StringVar(&so.RegistryAddr, "registry", "", "local OCI registry address (default 127.0.0.1:16500)")
	cmd.AddCommand(down, serve)
	return cmd
}

func devPaths(dir string) devenv.Paths {
	if dir != "" {
		return devenv.Paths{Dir: dir}
	}
	return devenv.DefaultPaths()
}
