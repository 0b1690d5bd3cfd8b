package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kars-io/kars/internal/approval"
)

// newApprovalsCmd builds "kars approvals SANDBOX [approve|deny ID]": the
// tool calls a sandbox's router holds for approval, and deciding one,
// through the router's admin API (the same access as kars audit tail).
func newApprovalsCmd(c *cluster) *cobra.Command {
	var by string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "approvals SANDBOX [approve|deny ID]",
		Short: "List or decide the tool calls a sandbox's router holds for approval",
		Long: "A ToolPolicy rule with effect require-approval holds the matching MCP tool call in\n" +
			"the sandbox's router until someone approves or denies it here, or it times out\n" +
			"(the ToolPolicy's approval.timeoutSeconds, else the router's default of 2 minutes).\n" +
			"Without a verb, lists the held calls. With approve or deny and an approval id,\n" +
			"decides that call once; the decision and --by are written to the audit log.\n" +
			"--by names who decides (default: your login name); anyone holding the router's\n" +
			"admin token may decide, unless the ToolPolicy names its approvers.",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 && len(args) != 3 {
				return fmt.Errorf("takes SANDBOX, or SANDBOX approve|deny ID")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := approvalsPath(args, by)
			if err != nil {
				return err
			}
			cl, sb, err := c.sandbox(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			ep, err := c.adminEndpoint(cmd.Context(), cl, sb)
			if err != nil {
				return err
			}
			defer ep.close()
			return runApprovals(cmd.Context(), ep, args[0], path, asJSON, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&by, "by", "", "who decides, as the audit log records it (default: your login name)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the router's answer as JSON")
	return cmd
}

// approvalsPath checks the arguments before anything is sent and returns
// the admin request: "" for the list, else the decision's path.
func approvalsPath(args []string, by string) (string, error) {
	if len(args) == 1 {
		return "", nil
	}
	verb, id := args[1], args[2]
	if verb != "approve" && verb != "deny" {
		return "", fmt.Errorf("%q is not approve or deny", verb)
	}
	if !approval.ValidID(id) {
		return "", fmt.Errorf("%q is not an approval id (apv- and 16 hex digits; kars approvals %s lists them)", id, args[0])
	}
	if by == "" {
		if u, err := user.Current(); err == nil {
			by = u.Username
		}
	}
	if err := approval.CheckName(by); err != nil {
		return "", fmt.Errorf("--by: %w", err)
	}
	q := url.Values{"decision": {verb}, "by": {by}}
	return "/admin/v1/approvals/" + id + "?" + q.Encode(), nil
}

// runApprovals lists (path "") or posts a decision on the endpoint.
func runApprovals(ctx context.Context, ep *endpoint, name, path string, asJSON bool, out io.Writer) error {
	method := http.MethodPost
	if path == "" {
		method, path = http.MethodGet, "/admin/v1/approvals"
	}
	resp, err := ep.do(ctx, method, path, nil)
	if err != nil {
		return fmt.Errorf("reach the router of %s: %w", name, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(raw))
		}
		return fmt.Errorf("the router of %s answered %d: %s", name, resp.StatusCode, e.Error)
	}
	if asJSON {
		_, err := out.Write(raw)
		return err
	}
	if method == http.MethodPost {
		var d struct{ ID, Action, Decision, By string }
		if err := json.Unmarshal(raw, &d); err != nil {
			return err
		}
		verb := "approved"
		if d.Decision == "deny" {
			verb = "denied"
		}
		_, err := fmt.Fprintf(out, "%s %s (%s) as %s\n", verb, d.ID, d.Action, d.By)
		return err
	}
	var l struct{ Approvals []approval.Pending }
	if err := json.Unmarshal(raw, &l); err != nil {
		return err
	}
	if len(l.Approvals) == 0 {
		_, err := fmt.Fprintf(out, "no calls await approval in %s\n", name)
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGE\tEXPIRES IN\tACTION\tRULE\tARGS")
	now := time.Now()
	for _, p := range l.Approvals {
		args := p.Args
		if len(args) > 60 {
			args = args[:60] + "…"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, (time.Duration(p.AgeSeconds * float64(time.Second))).Round(time.Second),
			max(p.Expires.Sub(now), 0).Round(time.Second), p.Action, dash(p.Rule), dash(args))
	}
	return tw.Flush()
}
