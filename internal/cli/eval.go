package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
)

func newEvalCmd(c *cluster) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "eval",
		Short: "Run and inspect KarsEval evaluations of sandboxes",
	}
	var wait time.Duration
	var asJSON bool
	run := &cobra.Command{
		Use:   "run NAME",
		Short: "Run a KarsEval now and show its result",
		Long: "run asks the controller to play the KarsEval's dataset against its sandbox now, waits for\n" +
			"the run (--wait) and prints the score, the drift condition and each case.",
		Example: "  kars eval run banned-tools\n  kars eval run smoke -n kars-analyst --wait 10m",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, ev, err := c.karsEval(ctx, args[0])
			if err != nil {
				return err
			}
			requested := time.Now().UTC().Format(time.RFC3339Nano)
			patch := client.MergeFrom(ev.DeepCopy())
			if ev.Annotations == nil {
				ev.Annotations = map[string]string{}
			}
			ev.Annotations[controller.AnnotationRunRequested] = requested
			if err := cl.Patch(ctx, ev, patch); err != nil {
				return fmt.Errorf("request a run of KarsEval %s/%s: %w", ev.Namespace, ev.Name, err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "running KarsEval %s/%s against sandbox %s…\n", ev.Namespace, ev.Name, ev.Spec.SandboxRef.Name)
			deadline := time.Now().Add(wait)
			for {
				if err := cl.Get(ctx, client.ObjectKeyFromObject(ev), ev); err != nil {
					return err
				}
				// The controller marks the request handled when its run
				// has finished.
				if ev.Annotations[controller.AnnotationRunHandled] == requested && ev.Status.Phase != "Running" {
					break
				}
				if c := meta.FindStatusCondition(ev.Status.Conditions, karsv1.ConditionReady); c != nil && c.Status == metav1.ConditionFalse &&
					(c.Reason == controller.ReasonRunnerUnavailable || c.Reason == controller.ReasonDatasetInvalid) {
					return fmt.Errorf("KarsEval %s/%s cannot run: %s", ev.Namespace, ev.Name, c.Message)
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("KarsEval %s/%s did not finish within %s (phase %s): see `kars eval show %s`", ev.Namespace, ev.Name, wait, ev.Status.Phase, ev.Name)
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(time.Second):
				}
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(ev.Status)
			}
			printEval(cmd.OutOrStdout(), ev)
			if ev.Status.Phase == "Failed" {
				return fmt.Errorf("KarsEval %s failed: score %s is below the pass threshold", ev.Name, ev.Status.Score)
			}
			return nil
		},
	}
	run.Flags().DurationVar(&wait, "wait", 10*time.Minute, "how long to wait for the run")
	run.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a KarsEval's last run: score, drift and cases",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, ev, err := c.karsEval(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(ev.Status)
			}
			printEval(cmd.OutOrStdout(), ev)
			return nil
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	cmd.AddCommand(run, show)
	return cmd
}

// karsEval finds the KarsEval NAME: in --namespace when given, else the
// one of that name in any namespace.
func (c *cluster) karsEval(ctx context.Context, name string) (client.Client, *karsv1.KarsEval, error) {
	cl, err := c.client()
	if err != nil {
		return nil, nil, err
	}
	if c.namespace != "" {
		var ev karsv1.KarsEval
		if err := cl.Get(ctx, client.ObjectKey{Namespace: c.namespace, Name: name}, &ev); err != nil {
			return nil, nil, describeGetError(err, "KarsEval "+name, "namespace "+c.namespace)
		}
		return cl, &ev, nil
	}
	var list karsv1.KarsEvalList
	if err := cl.List(ctx, &list); err != nil {
		return nil, nil, describeGetError(err, "KarsEvals", "the cluster")
	}
	var found []karsv1.KarsEval
	for _, ev := range list.Items {
		if ev.Name == name {
			found = append(found, ev)
		}
	}
	switch len(found) {
	case 0:
		return nil, nil, fmt.Errorf("no KarsEval %q in any namespace: create one (docs/kinds.md) or check the name with `kubectl get karsevals -A`", name)
	case 1:
		return cl, &found[0], nil
	}
	var where []string
	for _, ev := range found {
		where = append(where, ev.Namespace)
	}
	return nil, nil, fmt.Errorf("KarsEval %q exists in %s: say which with -n", name, strings.Join(where, ", "))
}

func printEval(out io.Writer, ev *karsv1.KarsEval) {
	st := ev.Status
	fmt.Fprintf(out, "KarsEval %s/%s  sandbox %s  dataset %s\n", ev.Namespace, ev.Name, ev.Spec.SandboxRef.Name, datasetName(ev))
	fmt.Fprintf(out, "Phase:     %s\n", st.Phase)
	threshold := ev.Spec.PassThreshold
	if threshold == "" {
		threshold = "0.8"
	}
	fmt.Fprintf(out, "Score:     %s (threshold %s", orDash(st.Score), threshold)
	if st.PreviousScore != "" {
		fmt.Fprintf(out, ", previous %s", st.PreviousScore)
	}
	fmt.Fprintf(out, ")  %d of %d cases passed\n", st.CasesPassed, st.CasesRun)
	if d := meta.FindStatusCondition(st.Conditions, controller.ConditionDrifted); d != nil {
		fmt.Fprintf(out, "Drifted:   %s (%s) %s\n", d.Status, d.Reason, d.Message)
	}
	if r := meta.FindStatusCondition(st.Conditions, karsv1.ConditionReady); r != nil && r.Status != metav1.ConditionTrue {
		fmt.Fprintf(out, "Ready:     %s (%s) %s\n", r.Status, r.Reason, r.Message)
	}
	if st.LastRunTime != nil {
		fmt.Fprintf(out, "Last run:  %s\n", st.LastRunTime.UTC().Format(time.RFC3339))
	}
	if st.NextRunTime != nil {
		fmt.Fprintf(out, "Next run:  %s (schedule %q)\n", st.NextRunTime.UTC().Format(time.RFC3339), ev.Spec.Schedule)
	}
	if len(st.Cases) == 0 {
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nCASE\tSCORE\tTOOL CALLS\tINPUT\tWHY")
	for i, c := range st.Cases {
		mark := "✓"
		if !c.Passed {
			mark = "✗"
		}
		fmt.Fprintf(tw, "%s %d\t%s\t%s\t%s\t%s\n", mark, i+1, c.Score, strings.Join(c.ToolCalls, " "), oneLine(c.Input, 60), oneLine(strings.Join(c.Failures, "; "), 100))
	}
	tw.Flush()
}

func datasetName(ev *karsv1.KarsEval) string {
	switch ds := ev.Spec.Dataset; {
	case ds.Builtin != "":
		return "builtin " + string(ds.Builtin)
	case ds.ConfigMapRef != nil:
		return "ConfigMap " + ds.ConfigMapRef.Name
	default:
		return fmt.Sprintf("%d inline cases", len(ds.Cases))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
