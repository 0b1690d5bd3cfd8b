package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/operator"
)

func newSRECmd(c *cluster) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sre",
		Short: "Review, approve and reject proposed operational actions (KarsSREAction)",
		Long: "An SRE action (restart, suspend, resume, release quarantine, rotate router credentials,\n" +
			"revoke a pairing or an A2A exposure, switch model) is proposed as a KarsSREAction and\n" +
			"runs only once someone approves it, before it expires (ttlMinutes after it was proposed).\n" +
			"Approval records your own user name; the decision is final.",
	}
	var all bool
	list := &cobra.Command{
		Use:     "actions",
		Aliases: []string{"list", "ls"},
		Short:   "List SRE actions (pending first)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			var l karsv1.KarsSREActionList
			var opts []client.ListOption
			if c.namespace != "" {
				opts = append(opts, client.InNamespace(c.namespace))
			}
			if err := cl.List(cmd.Context(), &l, opts...); err != nil {
				return describeGetError(err, "KarsSREActions", namespaceOrAll(c.namespace))
			}
			return printSREActions(cmd.OutOrStdout(), l.Items, all, time.Now())
		},
	}
	list.Flags().BoolVar(&all, "all", false, "include finished actions (succeeded, failed, rejected, expired)")
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one SRE action, its decision, result and audit events",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, a, err := c.sreAction(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var evs []eventsv1.Event
			var l eventsv1.EventList
			if err := cl.List(cmd.Context(), &l, client.InNamespace(a.Namespace)); err == nil {
				for _, e := range l.Items {
					if e.Regarding.Kind == "KarsSREAction" && e.Regarding.Name == a.Name {
						evs = append(evs, e)
					}
				}
			}
			printSREAction(cmd.OutOrStdout(), a, evs, time.Now())
			return nil
		},
	}
	decide := func(state string) *cobra.Command {
		var comment string
		verb := map[string]string{"Approved": "approve", "Rejected": "reject"}[state]
		d := &cobra.Command{
			Use:   verb + " ID",
			Short: map[string]string{"Approved": "Approve an SRE action: the controller runs it", "Rejected": "Reject an SRE action: it never runs"}[state],
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				cl, a, err := c.sreAction(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				user, err := c.whoAmI(cmd.Context())
				if err != nil {
					return err
				}
				if err := operator.DecideSREAction(cmd.Context(), cl, a, state, user, comment, time.Now()); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s/%s: %s %s by %s\n", a.Namespace, a.Name, a.Spec.Action, strings.ToLower(state), user)
				if state == "Approved" {
					fmt.Fprintf(cmd.OutOrStdout(), "the controller runs it now: `kars sre show %s` shows the result\n", a.Name)
				}
				return nil
			},
		}
		d.Flags().StringVar(&comment, "comment", "", "why (kept with the decision)")
		return d
	}
	cmd.AddCommand(list, show, decide("Approved"), decide("Rejected"))
	return cmd
}

func namespaceOrAll(ns string) string {
	if ns == "" {
		return "all namespaces"
	}
	return "namespace " + ns
}

// sreAction resolves ID: in --namespace, else the one action of that name
// in any namespace.
func (c *cluster) sreAction(ctx context.Context, id string) (client.Client, *karsv1.KarsSREAction, error) {
	cl, err := c.client()
	if err != nil {
		return nil, nil, err
	}
	if ns, name, ok := strings.Cut(id, "/"); ok {
		a := &karsv1.KarsSREAction{}
		if err := cl.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, a); err != nil {
			return nil, nil, describeGetError(err, "KarsSREAction", id)
		}
		return cl, a, nil
	}
	if c.namespace != "" {
		a := &karsv1.KarsSREAction{}
		if err := cl.Get(ctx, client.ObjectKey{Namespace: c.namespace, Name: id}, a); err != nil {
			return nil, nil, describeGetError(err, "KarsSREAction", c.namespace+"/"+id)
		}
		return cl, a, nil
	}
	var l karsv1.KarsSREActionList
	if err := cl.List(ctx, &l); err != nil {
		return nil, nil, describeGetError(err, "KarsSREActions", "all namespaces")
	}
	var found []*karsv1.KarsSREAction
	for i := range l.Items {
		if l.Items[i].Name == id {
			found = append(found, &l.Items[i])
		}
	}
	switch len(found) {
	case 0:
		return nil, nil, fmt.Errorf("no SRE action named %q; `kars sre actions` lists them", id)
	case 1:
		return cl, found[0], nil
	}
	return nil, nil, fmt.Errorf("%d SRE actions are named %q; say which with NAMESPACE/NAME or --namespace", len(found), id)
}

// whoAmI asks the API server who the caller is.
func (c *cluster) whoAmI(ctx context.Context) (string, error) {
	cfg, err := c.restConfig()
	if err != nil {
		return "", err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	return operator.WhoAmI(ctx, cs)
}

func sreRank(a *karsv1.KarsSREAction) int {
	switch a.Status.Phase {
	case "", controller.SREPhaseProposed:
		return 0
	case controller.SREPhaseExecuting:
		return 1
	}
	return 2
}

func printSREActions(out io.Writer, items []karsv1.KarsSREAction, all bool, now time.Time) error {
	sort.SliceStable(items, func(i, j int) bool {
		if ri, rj := sreRank(&items[i]), sreRank(&items[j]); ri != rj {
			return ri < rj
		}
		return items[i].CreationTimestamp.After(items[j].CreationTimestamp.Time)
	})
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tACTION\tTARGET\tAPPROVAL\tPHASE\tEXPIRES\tPROPOSED BY")
	shown := 0
	for i := range items {
		a := &items[i]
		if !all && sreRank(a) == 2 {
			continue
		}
		shown++
		exp := "in " + controller.ExpiresAt(a).Sub(now).Round(time.Second).String()
		if !now.Before(controller.ExpiresAt(a)) {
			exp = "expired"
		}
		if sreRank(a) == 2 {
			exp = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s/%s\t%s\t%s\t%s\t%s\n", a.Namespace, a.Name, a.Spec.Action, a.Spec.Target.Kind, a.Spec.Target.Name,
			orDash(a.Spec.Approval.State), orDash(a.Status.Phase), exp, orDash(a.Spec.ProposedBy))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if shown == 0 {
		fmt.Fprintln(out, "no open SRE actions (--all shows finished ones)")
	}
	return nil
}

func printSREAction(out io.Writer, a *karsv1.KarsSREAction, evs []eventsv1.Event, now time.Time) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("Name", a.Namespace+"/"+a.Name)
	row("Action", string(a.Spec.Action))
	row("Target", a.Spec.Target.Kind+" "+a.Spec.Target.Name)
	if len(a.Spec.Params) > 0 {
		var ps []string
		for k, v := range a.Spec.Params {
			ps = append(ps, k+"="+v)
		}
		sort.Strings(ps)
		row("Params", strings.Join(ps, " "))
	}
	row("Reason", a.Spec.Reason)
	row("Proposed by", orDash(a.Spec.ProposedBy))
	row("Proposed", a.CreationTimestamp.Local().Format(time.RFC3339))
	exp := controller.ExpiresAt(a)
	left := ""
	if now.Before(exp) && sreRank(a) < 2 {
		left = fmt.Sprintf(" (in %s)", exp.Sub(now).Round(time.Second))
	}
	row("Expires", exp.Local().Format(time.RFC3339)+left)
	approval := orDash(a.Spec.Approval.State)
	if a.Spec.Approval.DecidedBy != "" {
		approval += " by " + a.Spec.Approval.DecidedBy
	}
	if a.Spec.Approval.Comment != "" {
		approval += ": " + a.Spec.Approval.Comment
	}
	row("Approval", approval)
	row("Phase", orDash(a.Status.Phase))
	if a.Status.ExecutedAt != nil {
		row("Executed", a.Status.ExecutedAt.Local().Format(time.RFC3339))
	}
	row("Result", orDash(a.Status.Result))
	tw.Flush()
	if len(evs) > 0 {
		sort.Slice(evs, func(i, j int) bool { return evs[i].CreationTimestamp.Before(&evs[j].CreationTimestamp) })
		fmt.Fprintln(out, "Events:")
		for _, e := range evs {
			fmt.Fprintf(out, "  %s  %s  %s  %s\n", e.CreationTimestamp.Local().Format(time.RFC3339), e.Type, e.Reason, e.Note)
		}
	}
}
