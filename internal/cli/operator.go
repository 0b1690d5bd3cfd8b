package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"
	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/operator"
)

func newOperatorCmd(c *cluster) *cobra.Command {
	var once bool
	var width, height int
	cmd := &cobra.Command{
		Use:   "operator",
		Short: "Live terminal UI: sandboxes, their policies, trust, memory, evals, SRE actions, egress and audit",
		Long: "kars operator watches the cluster's kars objects and shows them live: each sandbox's\n" +
			"phase, runtime, model and budget; the selected sandbox's SRE actions, egress approvals\n" +
			"and recent events; its policies, trust and peers, memory and evaluations; and its router's\n" +
			"audit log, live. Keys suspend or resume a sandbox, switch its model, approve or reject an\n" +
			"SRE action and approve an egress destination the router refused, each confirmed first and\n" +
			"done with your own credentials (your RBAC applies).\n" +
			"--once prints one frame without colour once the watches have listed, and exits.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c.restConfig()
			if err != nil {
				return err
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			cs, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			if once {
				r := lipgloss.NewRenderer(io.Discard)
				r.SetColorProfile(termenv.Ascii)
				m := operator.New(operator.Options{Renderer: r, Title: cfg.Host})
				m.Update(tea.WindowSizeMsg{Width: width, Height: height})
				msgs := make(chan tea.Msg, 1024)
				if err := operator.Watch(ctx, cfg, c.namespace, func(msg tea.Msg) {
					select {
					case msgs <- msg:
					case <-ctx.Done():
					}
				}); err != nil {
					return err
				}
				if err := settle(ctx, m, msgs); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), m.View())
				return nil
			}
			var p *tea.Program
			m := operator.New(operator.Options{Title: cfg.Host, Actions: &operator.KubeActions{Client: cl, Clientset: cs},
				Admin: c.operatorAdmin, Send: func(msg tea.Msg) { p.Send(msg) }, Context: ctx})
			p = tea.NewProgram(m, tea.WithAltScreen(), tea.WithContext(ctx), tea.WithInput(cmd.InOrStdin()), tea.WithOutput(cmd.OutOrStdout()), tea.WithFPS(operator.FPS))
			if err := operator.Watch(ctx, cfg, c.namespace, p.Send); err != nil {
				return err
			}
			_, err = p.Run()
			if err == tea.ErrProgramKilled && cmd.Context().Err() == nil {
				return nil
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&once, "once", false, "print one frame (no colour) once the watches have listed, then exit")
	cmd.Flags().IntVar(&width, "width", 120, "frame width for --once")
	cmd.Flags().IntVar(&height, "height", 40, "frame height for --once")
	return cmd
}

// settle applies watch messages to m until the watches have synced and no
// message came for a moment (informers deliver the initial list to their
// handlers asynchronously, around the sync).
func settle(ctx context.Context, m *operator.Model, msgs <-chan tea.Msg) error {
	synced := false
	deadline := time.After(time.Minute)
	for {
		var quiet <-chan time.Time
		if synced {
			quiet = time.After(300 * time.Millisecond)
		}
		select {
		case msg := <-msgs:
			if e, ok := msg.(operator.ErrMsg); ok {
				return e.Err
			}
			if _, ok := msg.(operator.SyncedMsg); ok {
				synced = true
			}
			m.Update(msg)
		case <-quiet:
			return nil
		case <-deadline:
			return fmt.Errorf("the watches did not list within a minute")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// operatorAdmin opens the router admin API of a sandbox for the operator's
// audit tail, as `kars audit tail` reaches it (adminEndpoint): the dev
// daemon's socket under kars dev, a port-forward on a cluster, held open
// while the sandbox stays selected.
func (c *cluster) operatorAdmin(ctx context.Context, key types.NamespacedName) (operator.Admin, error) {
	cl, err := c.client()
	if err != nil {
		return nil, err
	}
	sb := &karsv1.KarsSandbox{}
	if err := cl.Get(ctx, key, sb); err != nil {
		return nil, describeGetError(err, "KarsSandbox", key.String())
	}
	ep, err := c.adminEndpoint(ctx, cl, sb)
	if err != nil {
		return nil, err
	}
	return operatorAdminConn{ep: ep, name: key.String()}, nil
}

type operatorAdminConn struct {
	ep   *endpoint
	name string
}

func (a operatorAdminConn) Get(ctx context.Context, path string, v any) error {
	return a.ep.getJSON(ctx, a.name, path, v)
}

func (a operatorAdminConn) Close() { a.ep.close() }
