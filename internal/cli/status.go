package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

func newStatusCmd(c *cluster) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [NAME]",
		Short: "Show sandboxes, or one sandbox in detail",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, err := c.client()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(args) == 0 {
				var list karsv1.KarsSandboxList
				opts := []client.ListOption{}
				if c.namespace != "" {
					opts = append(opts, client.InNamespace(c.namespace))
				}
				if err := cl.List(ctx, &list, opts...); err != nil {
					return describeGetError(err, "sandboxes", "the cluster")
				}
				if asJSON {
					return json.NewEncoder(out).Encode(list.Items)
				}
				return printSandboxTable(out, list.Items)
			}
			sb, err := c.findSandbox(ctx, cl, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(out).Encode(sb)
			}
			return c.printSandboxDetail(ctx, cl, sb, out)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printSandboxTable(out io.Writer, items []karsv1.KarsSandbox) error {
	if len(items) == 0 {
		fmt.Fprintln(out, "no sandboxes; create one with `kars add NAME` (or start `kars dev`)")
		return nil
	}
	sort.Slice(items, func(i, j int) bool {
		return items[i].Namespace+"/"+items[i].Name < items[j].Namespace+"/"+items[j].Name
	})
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tNAMESPACE\tRUNTIME\tISOLATION\tMODEL\tPHASE\tREADY\tAGE")
	for _, sb := range items {
		ready := "Unknown"
		if cond := meta.FindStatusCondition(sb.Status.Conditions, karsv1.ConditionReady); cond != nil {
			ready = string(cond.Status)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sb.Name, sb.Namespace, sb.Spec.Runtime.Kind, sb.Spec.IsolationLevel(),
			dash(sb.Status.Model), dash(string(sb.Status.Phase)), ready, age(sb.CreationTimestamp.Time))
	}
	return tw.Flush()
}

func (c *cluster) printSandboxDetail(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox, out io.Writer) error {
	fmt.Fprintf(out, "Sandbox:     %s/%s\n", sb.Namespace, sb.Name)
	fmt.Fprintf(out, "Runtime:     %s\n", sb.Spec.Runtime.Kind)
	fmt.Fprintf(out, "Isolation:   %s\n", sb.Spec.IsolationLevel())
	fmt.Fprintf(out, "Phase:       %s\n", dash(string(sb.Status.Phase)))
	fmt.Fprintf(out, "Model:       %s\n", dash(sb.Status.Model))
	fmt.Fprintf(out, "Inference:   InferencePolicy %s\n", sb.Spec.InferenceRef.Name)
	if sb.Spec.Governance.ToolPolicyRef != nil {
		fmt.Fprintf(out, "Governance:  on, ToolPolicy %s\n", sb.Spec.Governance.ToolPolicyRef.Name)
	} else {
		fmt.Fprintf(out, "Governance:  %v (no ToolPolicy: the router's default policy)\n", sb.Spec.GovernanceEnabled())
	}
	fmt.Fprintf(out, "Egress:      %s\n", sb.Spec.NetworkPolicy.EgressMode)
	digest := dash(sb.Status.ConfigDigest)
	if sb.Status.EnforcedDigest != "" && sb.Status.EnforcedDigest == sb.Status.ConfigDigest {
		digest += " (enforced by the router)"
	} else if sb.Status.ConfigDigest != "" {
		digest += " (router reports " + dash(sb.Status.EnforcedDigest) + ")"
	}
	fmt.Fprintf(out, "Config:      %s\n", digest)
	fmt.Fprintln(out, "Conditions:")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, cond := range sb.Status.Conditions {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", cond.Type, cond.Status, cond.Reason, cond.Message)
	}
	_ = tw.Flush()
	budget, err := c.routerBudget(ctx, cl, sb)
	switch {
	case err != nil:
		fmt.Fprintf(out, "Budget:      unavailable (%v)\n", err)
	default:
		fmt.Fprintf(out, "Budget:      %s\n", budget)
	}
	fmt.Fprintf(out, "Blocklist:   %s\n", c.blocklistSummary(ctx, cl, sb))
	return nil
}

// blocklistSummary is the blocklist the router enforces: version, size,
// age, and failing sources.
func (c *cluster) blocklistSummary(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox) string {
	var st egressStatus
	if err := c.routerGet(ctx, cl, sb, "/admin/v1/egress", &st); err != nil {
		return "unavailable (" + err.Error() + ")"
	}
	b := st.Blocklist
	if b == nil {
		return "none configured"
	}
	s := fmt.Sprintf("%d domains, version %s, age %s", b.Domains, shortVersion(b.Version), st.BlocklistAge)
	for _, src := range b.Sources {
		if src.LastError != "" {
			s += fmt.Sprintf("; %s failing (%s), last good list kept", src.Name, src.LastError)
		}
	}
	return s
}

// routerBudget asks the router's admin API for the live budget figures.
func (c *cluster) routerBudget(ctx context.Context, cl client.Client, sb *karsv1.KarsSandbox) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ep, err := c.adminEndpoint(ctx, cl, sb)
	if err != nil {
		return "", err
	}
	defer ep.close()
	resp, err := ep.do(ctx, http.MethodGet, "/admin/v1/budget", nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("router admin answered %d: %s", resp.StatusCode, strings.TrimSpace(string(raw)))
	}
	return describeBudget(raw)
}

// describeBudget renders the router's budget report in one line.
func describeBudget(raw []byte) (string, error) {
	var b struct {
		Ledger struct {
			Day, Month                      string
			DayUsed, DayReserved, MonthUsed int64
			Limits                          struct{ PerRequest, Daily, Monthly int64 }
		} `json:"ledger"`
	}
	if err := json.Unmarshal(raw, &b); err != nil {
		return "", fmt.Errorf("unreadable budget report: %w", err)
	}
	l := b.Ledger
	day := fmt.Sprintf("today (%s UTC) %d tokens used", l.Day, l.DayUsed)
	if l.Limits.Daily > 0 {
		day += fmt.Sprintf(", %d of %d left", max(0, l.Limits.Daily-l.DayUsed-l.DayReserved), l.Limits.Daily)
	}
	month := fmt.Sprintf("%s %d used", l.Month, l.MonthUsed)
	if l.Limits.Monthly > 0 {
		month += fmt.Sprintf(", %d of %d left", max(0, l.Limits.Monthly-l.MonthUsed), l.Limits.Monthly)
	}
	return day + "; " + month, nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String()
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}
