package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/yaml"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/blueprint"
	"github.com/kars-io/kars/internal/devenv"
)

func newAddCmd(c *cluster) *cobra.Command {
	var o blueprint.Options
	var provider, endpoint, deployment, isolation string
	var governance, dryRun bool
	cmd := &cobra.Command{
		Use:   "add NAME",
		Short: "Create a governed sandbox (namespace, policies and KarsSandbox)",
		Long: "add creates namespace kars-NAME (or --namespace) holding an InferencePolicy NAME-inference,\n" +
			"a ToolPolicy NAME-policy and the KarsSandbox NAME. Without --provider it uses the\n" +
			"credentials of `kars credentials set`, the usual environment variables, or the\n" +
			"offline model.",
		Example: "  kars add analyst --model gpt-4.1 --token-budget-daily 100000 --isolation enhanced\n" +
			"  kars add custom-agent --runtime byo --byo-image myacr.azurecr.io/my-agent:latest --byo-contract-version v1\n" +
			"  kars add oai-researcher --runtime openai-agents --dry-run\n" +
			"  kars add graph --runtime langgraph --language typescript",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Name, o.Namespace, o.Isolation = args[0], c.namespace, karsv1.IsolationLevel(isolation)
			if o.Runtime == "kars-agent" {
				// The reference agent, as the dev daemon publishes it.
				o.Runtime = "byo"
				if o.BYOImage == "" {
					o.BYOImage = devenv.AgentImage()
				}
			}
			switch {
			case provider != "":
				o.Target = karsv1.ModelTarget{Provider: karsv1.ModelProvider(provider), Endpoint: endpoint, Deployment: deployment}
			default:
				p, err := devenv.DetectProvider(getenv)
				if err != nil {
					return err
				}
				o.Target, o.APIKey = p.Target, p.Key
			}
			objs, err := blueprint.Build(o)
			if err != nil {
				return err
			}
			if dryRun {
				return printObjects(cmd.OutOrStdout(), objs)
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			if o.LearnEgress {
				// On an existing sandbox, --learn-egress switches it to
				// Learn instead of failing with "already exists".
				if sb, err := c.findSandbox(cmd.Context(), cl, o.Name); err == nil {
					return setEgressMode(cmd.Context(), cl, sb, karsv1.EgressLearn, nil, cmd.OutOrStdout())
				}
			}
			return createAll(cmd.Context(), cl, objs, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Runtime, "runtime", "openclaw", "agent runtime: "+blueprint.RuntimeNames()+", or kars-agent (the reference agent of kars dev)")
	f.StringVar(&o.Model, "model", "", "model the sandbox may use (e.g. gpt-4.1)")
	f.Int64Var(&o.TokenBudgetDaily, "token-budget-daily", 0, "tokens per UTC day (0: no daily budget)")
	f.StringVar(&isolation, "isolation", "enhanced", "isolation: standard, enhanced or confidential")
	f.BoolVar(&governance, "governance", true, "govern every action by policy (always on; accepted for compatibility)")
	f.BoolVar(&o.LearnEgress, "learn-egress", false, "record the hosts the agent asks for, for review with `kars egress`")
	f.StringVar(&o.BYOImage, "byo-image", "", "image of a BYO runtime (labelled org.kars.runtime.contract=v1)")
	f.StringVar(&o.BYOContract, "byo-contract-version", "v1", "runtime contract the BYO image implements")
	f.StringVar(&o.Language, "language", "", "runtime language: python or typescript for LangGraph, python or dotnet for Microsoft Agent Framework")
	f.StringVar(&o.Language, "maf-language", "", "Microsoft Agent Framework language (same as --language)")
	f.StringVar(&o.AgentImage, "agent-image", "", "OCI image carrying the agent code for a first-class runtime")
	f.StringVar(&o.Instructions, "instructions", "", "the agent's system instructions")
	f.StringSliceVar(&o.Tools, "tool", nil, "tool to offer the agent (repeatable)")
	f.StringVar(&provider, "provider", "", "inference provider: AzureOpenAI, AzureAIFoundry, OpenAI, GitHubModels, Anthropic, OpenAICompatible, Offline")
	f.StringVar(&endpoint, "endpoint", "", "provider endpoint URL (Azure, OpenAI-compatible)")
	f.StringVar(&deployment, "deployment", "", "Azure OpenAI deployment (default: the model name)")
	f.BoolVar(&dryRun, "dry-run", false, "print the objects instead of creating them")
	return cmd
}

func printObjects(out io.Writer, objs []client.Object) error {
	for _, obj := range objs {
		gvk, err := apiutil.GVKForObject(obj, schemeForPrint)
		if err != nil {
			return err
		}
		obj.GetObjectKind().SetGroupVersionKind(gvk)
		raw, err := yaml.Marshal(obj)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "---\n%s", raw)
	}
	return nil
}

// createAll creates objs in order; existing namespaces are reused, any other
// existing object is an error so that add never silently changes a sandbox.
func createAll(ctx context.Context, cl client.Client, objs []client.Object, out io.Writer) error {
	for _, obj := range objs {
		err := cl.Create(ctx, obj)
		kind := fmt.Sprintf("%T", obj)
		if gvk, gerr := apiutil.GVKForObject(obj, cl.Scheme()); gerr == nil {
			kind = gvk.Kind
		}
		switch {
		case apierrors.IsAlreadyExists(err) && kind == "Namespace":
			continue
		case apierrors.IsAlreadyExists(err):
			return fmt.Errorf("%s %s/%s already exists; delete it first or pick another name", kind, obj.GetNamespace(), obj.GetName())
		case err != nil:
			return fmt.Errorf("create %s %s: %w", kind, obj.GetName(), err)
		}
		fmt.Fprintf(out, "created %s %s\n", kind, joinKey(obj))
	}
	return nil
}

func joinKey(obj client.Object) string {
	if obj.GetNamespace() == "" {
		return obj.GetName()
	}
	return obj.GetNamespace() + "/" + obj.GetName()
}
