package cli

import (
	"fmt"

	"github.com/spf13/cobra"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

func newModelCmd(c *cluster) *cobra.Command {
	cmd := &cobra.Command{Use: "model", Short: "Show or change the model a sandbox uses"}
	var deployment string
	set := &cobra.Command{
		Use:   "set NAME MODEL",
		Short: "Hot-swap the sandbox's primary model (no pod restart)",
		Long: "set edits the sandbox's InferencePolicy; the controller recompiles the router's\n" +
			"configuration and the router reloads it in place.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, sb, err := c.sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			ip, err := inferencePolicyOf(ctx, cl, sb)
			if err != nil {
				return err
			}
			before := ip.DeepCopy()
			p := &ip.Spec.ModelPreference.Primary
			if p.Provider == karsv1.ProviderOffline {
				return fmt.Errorf("sandbox %s uses the offline model, which has one model; set credentials with `kars credentials set %s` first", sb.Name, sb.Name)
			}
			old := p.Model
			p.Model = args[1]
			if p.Provider == karsv1.ProviderAzureOpenAI || deployment != "" {
				p.Deployment = args[1]
				if deployment != "" {
					p.Deployment = deployment
				}
			}
			if err := cl.Patch(ctx, ip, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
				return fmt.Errorf("update InferencePolicy %s/%s: %w", ip.Namespace, ip.Name, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: model %s → %s (InferencePolicy %s/%s); the router reloads without a restart\n", sb.Name, old, args[1], ip.Namespace, ip.Name)
			return nil
		},
	}
	set.Flags().StringVar(&deployment, "deployment", "", "Azure deployment name (default: the model name)")
	cmd.AddCommand(set)
	return cmd
}
