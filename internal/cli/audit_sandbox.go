package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kars-io/kars/internal/audit"
)

// newAuditTailCmd builds "kars audit tail NAME": the sandbox's latest audit
// entries, read through its router's admin API.
func newAuditTailCmd(c *cluster) *cobra.Command {
	var n int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "tail NAME",
		Short: "Show a sandbox's latest audit entries",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var entries []audit.Entry
			if err := c.adminGet(cmd.Context(), args[0], "/admin/v1/audit/tail?n="+strconv.Itoa(n), &entries); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(entries)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tACTION\tDECISION\tRULE\tLATENCY\tDETAILS")
			for _, e := range entries {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Local().Format(time.TimeOnly), e.Action, e.Decision,
					dash(e.Rule), e.Latency.Round(time.Microsecond), details(e))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().IntVar(&n, "lines", 20, "how many entries")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the entries as JSON")
	return cmd
}

func details(e audit.Entry) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(e.Attrs)) {
		parts = append(parts, k+"="+e.Attrs[k])
	}
	if e.Decision != "allow" && e.Reason != "" {
		parts = append(parts, "reason="+strconvQuote(e.Reason))
	}
	return strings.Join(parts, " ")
}

func strconvQuote(s string) string { return strconv.Quote(s) }

// verifySandbox asks the sandbox's router to verify its own log against
// what the controller recorded outside it (status.audit): the pinned
// checkpoint key, and the last head it saw written, which the log must
// still hold — so a tail cut together with its checkpoints is caught.
func (c *cluster) verifySandbox(ctx context.Context, name string, out io.Writer, asJSON bool) error {
	_, sb, err := c.sandbox(ctx, name)
	if err != nil {
		return err
	}
	q := url.Values{}
	if a := sb.Status.Audit; a != nil {
		if a.CheckpointKey != "" {
			q.Set("key", a.CheckpointKey)
		}
		if a.Seq > 0 {
			q.Set("anchorSeq", strconv.FormatInt(a.Seq, 10))
			q.Set("anchorHash", a.Hash)
		}
	}
	var rep audit.Report
	if err := c.adminGet(ctx, name, "/admin/v1/audit/verify?"+q.Encode(), &rep); err != nil {
		return err
	}
	if a := sb.Status.Audit; a == nil || a.Seq == 0 {
		rep.Warnings = append(rep.Warnings, "the controller has not recorded this log's head yet: a tail cut together with its checkpoints would go unnoticed")
	} else {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("checked against the head recorded outside the router: entry %d at %s, key pinned", a.Seq, a.RecordedAt.UTC().Format(time.RFC3339)))
	}
	label := "sandbox " + name
	if asJSON {
		if err := writeVerifyJSON(out, label, &rep); err != nil {
			return err
		}
	} else {
		writeVerifyText(out, label, &rep)
	}
	if rep.Problem != nil {
		return fmt.Errorf("the audit log of %s failed verification: %s at %s", label, rep.Problem.Kind, rep.Problem.At)
	}
	return nil
}

// adminGet fetches a router admin endpoint of sandbox name into v.
func (c *cluster) adminGet(ctx context.Context, name, path string, v any) error {
	cl, sb, err := c.sandbox(ctx, name)
	if err != nil {
		return err
	}
	ep, err := c.adminEndpoint(ctx, cl, sb)
	if err != nil {
		return err
	}
	defer ep.close()
	return ep.getJSON(ctx, name, path, v)
}

// getJSON fetches path from the endpoint (a router's admin API of sandbox
// name) and decodes its JSON answer into v; a status other than 200 is an
// error carrying the router's answer.
func (e *endpoint) getJSON(ctx context.Context, name, path string, v any) error {
	resp, err := e.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return fmt.Errorf("reach the router of %s: %w", name, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the router of %s answered %d: %s", name, resp.StatusCode, strings.TrimSpace(string(raw)))
	}
	return json.Unmarshal(raw, v)
}
