package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/kagent"
	"github.com/kars-io/kars/internal/convert/lossy"
	"github.com/kars-io/kars/internal/convert/manifest"
)

func newMigrateCmd(c *cluster) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Bring kagent agents to kars, and switch sandboxes between native and overlay mode",
	}
	cmd.AddCommand(newFromKagentCmd(c), newToOverlayCmd(c), newToNativeCmd(c))
	return cmd
}

func newFromKagentCmd(c *cluster) *cobra.Command {
	var outDir, isolation string
	var dryRun, allowLossy bool
	cmd := &cobra.Command{
		Use:   "from-kagent FILE|DIR|-",
		Short: "Convert kagent Agents into KarsSandboxes with their policies",
		Long: "from-kagent reads kagent.dev/v1alpha2 Agents (Declarative and BYO, with the ModelConfigs,\n" +
			"RemoteMCPServers and MCPServers they reference) and kagent 1.0's kagent.dev/v1alpha3 Agents\n" +
			"(with their AgentTemplates and Harnesses), and emits per agent a Namespace (kars-NAME unless\n" +
			"--namespace), an InferencePolicy, a ToolPolicy, McpServers and the KarsSandbox.\n\n" +
			"Every source field without a kars analog is named. A lossy conversion writes nothing and\n" +
			"fails unless --allow-lossy. Without --dry-run or --out-dir the objects are created in the\n" +
			"cluster. Secrets in the input are refused: create them in the target namespace yourself.",
		Example: "  kars migrate from-kagent agent.yaml --dry-run\n" +
			"  kars migrate from-kagent agent.yaml --isolation enhanced --out-dir ./manifests\n" +
			"  kubectl get agent my-agent -n kagent-system -o yaml | kars migrate from-kagent -\n" +
			"  kars migrate from-kagent ./kagent-export/ --allow-lossy --out-dir ./manifests",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dryRun && outDir != "" {
				return fmt.Errorf("--dry-run prints and --out-dir writes files: pick one")
			}
			var iso karsv1.IsolationLevel
			if cmd.Flags().Changed("isolation") {
				switch l := karsv1.IsolationLevel(isolation); l {
				case karsv1.IsolationStandard, karsv1.IsolationEnhanced, karsv1.IsolationConfidential:
					iso = l
				default:
					return fmt.Errorf("--isolation %q: use standard, enhanced or confidential", isolation)
				}
			}
			in, err := readInput(args[0])
			if err != nil {
				return err
			}
			res, err := kagent.Convert(in, kagent.Options{Namespace: c.namespace, Isolation: iso, Date: now()})
			if err != nil {
				return err
			}
			pre := lossy.Preamble("kars migrate from-kagent "+args[0], res.Lossy, nil, res.Notes, res.Skipped)
			stderr := cmd.ErrOrStderr()
			var refused error
			if len(res.Lossy) > 0 && !allowLossy {
				refused = fmt.Errorf("%w: %d source field(s) have no kars analog (listed above); nothing was written. "+
					"Re-run with --allow-lossy to migrate without them", errLossy, len(res.Lossy))
			}
			objs := make([]any, len(res.Objects))
			for i, o := range res.Objects {
				objs[i] = o
			}
			switch {
			case dryRun:
				// A dry run shows what would be emitted even when it is
				// lossy, and still fails so that scripts notice.
				out, err := manifest.Encode(objs, pre)
				if err != nil {
					return err
				}
				if _, err = cmd.OutOrStdout().Write(out); err != nil {
					return err
				}
				return refused
			case refused != nil:
				fmt.Fprintln(stderr, strings.Join(pre, "\n"))
				return refused
			case outDir != "":
				fmt.Fprintln(stderr, strings.Join(pre, "\n"))
				return writeOutDir(cmd, outDir, res.Objects, pre)
			}
			fmt.Fprintln(stderr, strings.Join(pre, "\n"))
			cl, err := c.client()
			if err != nil {
				return err
			}
			create := make([]client.Object, len(res.Objects))
			for i, o := range res.Objects {
				create[i] = o.(client.Object)
			}
			return createAll(cmd.Context(), cl, create, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.BoolVar(&dryRun, "dry-run", false, "print the converted objects (after the report) and apply nothing")
	f.StringVar(&outDir, "out-dir", "", "write the converted objects into this directory, one file each, in apply order")
	f.StringVar(&isolation, "isolation", "enhanced", "isolation of the sandboxes: standard, enhanced or confidential (default: from kagent 1.0's substrate, else enhanced)")
	f.BoolVar(&allowLossy, "allow-lossy", false, "migrate even though some source fields have no kars analog (they are named, then dropped)")
	return cmd
}

// writeOutDir writes each object to DIR/NN-kind-name.yaml, so that
// `kubectl apply -f DIR` creates the namespace first, and the report to
// DIR/migration-report.txt (which kubectl does not read).
func writeOutDir(cmd *cobra.Command, dir string, objs []kagent.Object, pre []string) error {
	files := map[string][]byte{"migration-report.txt": []byte(strings.Join(pre, "\n") + "\n")}
	order := []string{"migration-report.txt"}
	for i, o := range objs {
		out, err := manifest.Encode([]any{o}, nil)
		if err != nil {
			return err
		}
		name := fmt.Sprintf("%02d-%s-%s.yaml", i, strings.ToLower(o.GetObjectKind().GroupVersionKind().Kind), o.GetName())
		files[name] = out
		order = append(order, name)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create --out-dir: %w", err)
	}
	for _, name := range order {
		if err := os.WriteFile(filepath.Join(dir, name), files[name], 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	fmt.Fprintf(cmd.OutOrStdout(), "wrote %d objects to %s; apply them with `kubectl apply -f %s`\n", len(objs), dir, dir)
	return nil
}
